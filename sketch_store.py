r"""A sketched Hessian eigendecomposition split into independent blocks, and the on-disk store that collects them.

The sketch is skerch's single-pass ``oversampled`` SkEIGH (Fernandez, Schäfer, Mahsereci & Hennig
2025, the masks study; Tropp, Yurtsever, Udell & Cevher 2017, §4), as ``curvature.top_eigs_sketched``
with ``recovery="oversampled"`` computes it in one process. With Rademacher matrices Ω (d × s),
Φ (d × s_i) and Ψ (d × s_i), s < s_i ≤ d, the measurements are

    Y = H Ω                (d × s,   the outer sketch: s Hessian-vector products)
    Z = Ψᵀ H Φ             (s_i × s_i, the core sketch: s_i more products, each reduced by Ψᵀ)

and nothing else touches H: every column of Y and of Z is a function of H and of its own column
of Ω or Φ alone. So the s + s_i products split into **blocks** of b = ``block_size`` columns, any
set of which one job can compute, in any order, with no communication: block i < ⌈s/b⌉ is the
outer block Y[:, ib:(i+1)b], the rest are core blocks Z[:, jb:(j+1)b]. The merge then solves as one
process would: Q = qr(Y), C = (ΨᵀQ)⁺ Z (QᵀΦ)⁺ ≈ QᵀHQ (least squares, ``rcond`` 1e-6), C = U Θ Uᵀ,
and the eigenpairs are (Θ, Q U), by decreasing |θ|.

The random matrices are skerch's by-block Rademacher operators: the block of columns starting at
c is drawn from seed + c on the CPU, so a job regenerates exactly its own columns, and the sketch
is a function of (seed, s, s_i, b): Ω from ``seed``, Φ from seed + s + 1, Ψ from
seed + s + s_i + 2, as ``skerch.algorithms.seigh`` draws them. ``measure_block`` repeats seigh's
own operations on one block, so merged blocks equal the one-process sketch (``tests/test_sketch_store.py``
and ``tests/test_expt_hessian_sketch.py`` check it, the latter across SLURM array tasks).

**The store** (``SketchStore``): a folder that concurrent jobs fill without locking, one HDF5 file
per block, ``step_<t>/block_<i>.h5`` (h5py; dataset ``data`` with HDF5's Fletcher-32 checksum per
chunk), written under a temporary name and renamed into place (``os.replace`` is atomic on POSIX),
so a file under a block's name was written completely; a file that is cut off or damaged anyway
(a copy, a full disk) fails to open or fails its checksum and counts as *damaged*: it is
recomputed, never used. Each file carries its ``BlockHeader`` (format, step, Sacred seed, model
hash, block index and kind, columns, shape and the sketch's plan) as HDF5 attributes, checked
against what the reader expects: a block of another step, seed, model or plan is *refused* with
the fields that differ, and never overwritten. The parameters at each step live beside the blocks
(``params/step_<t>.pt``) with their model hash: sha256 of the model's description and its
parameters' bytes.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np
import torch
from skerch.linops import TransposedLinOp
from skerch.measurements import RademacherNoiseLinOp
from skerch.recovery import oversampled_h
from torch import Tensor

from curvature import hvp

__all__ = [
    "FORMAT",
    "LSTSQ_RCOND",
    "BlockHeader",
    "SketchPlan",
    "SketchStore",
    "measure_block",
    "model_hash",
    "sketch_seed",
    "solve_sketch",
]

FORMAT = 1  # version of the block files' layout and header
LSTSQ_RCOND = 1e-6  # skerch seigh's default rcond of the core's least squares


def sketch_seed(seed: int, step: int) -> int:
    """The sketch's seed at a training step, so that every job of that step draws the same Ω, Φ, Ψ.

    Returns:
        A seed in [0, 2³¹) from ``np.random.SeedSequence([seed, step])``.

    Example:
        >>> sketch_seed(0, 100) == sketch_seed(0, 100) != sketch_seed(0, 200)
        True
    """
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0] >> 1)


def model_hash(spec: dict, w: Tensor) -> str:
    """The model hash that ties blocks to the parameters they were measured at.

    Returns:
        sha256 (first 16 hex digits) of the model's description (JSON) and its parameters' bytes.
    """
    digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode())
    digest.update(w.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class SketchPlan:
    """The sketch: d, s outer and s_i core measurements in blocks of b columns, and its seed.

    Block i covers columns ``block_columns(i)`` of Y (i < ``num_outer_blocks``) or of Z.
    """

    dim: int  # d
    num_measurements: int  # s, columns of Y = H Ω
    num_inner: int  # s_i, columns of Z = Ψᵀ H Φ
    block_size: int  # b, columns per block and per draw of the random matrices
    seed: int  # Ω's seed (Φ and Ψ follow it)

    def __post_init__(self) -> None:
        ints = [getattr(self, f.name) for f in fields(self)]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in ints):
            raise ValueError(f"the sketch's sizes and seed must be ints, got {self}")
        if not 1 <= self.num_measurements < self.num_inner <= self.dim:
            raise ValueError(f"need 1 <= num_measurements < num_inner <= d={self.dim}, got "
                             f"num_measurements={self.num_measurements}, num_inner={self.num_inner}")
        if self.block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {self.block_size}")

    @property
    def num_outer_blocks(self) -> int:
        """⌈s/b⌉."""
        return math.ceil(self.num_measurements / self.block_size)

    @property
    def num_blocks(self) -> int:
        """⌈s/b⌉ + ⌈s_i/b⌉."""
        return self.num_outer_blocks + math.ceil(self.num_inner / self.block_size)

    def block_columns(self, i: int) -> tuple[str, int, int]:
        """Which sketch block i belongs to, and its columns.

        Returns:
            ("outer" | "inner", first column, end column).

        Raises:
            ValueError: If i is not in [0, ``num_blocks``).
        """
        if not (isinstance(i, int) and 0 <= i < self.num_blocks):
            raise ValueError(f"block index must be an int in [0, {self.num_blocks}), got {i!r}")
        kind, j, total = ("outer", i, self.num_measurements) if i < self.num_outer_blocks else \
            ("inner", i - self.num_outer_blocks, self.num_inner)
        return kind, j * self.block_size, min(total, (j + 1) * self.block_size)

    def block_shape(self, i: int) -> tuple[int, int]:
        """The shape of block i's data.

        Returns:
            (d, columns) for an outer block, (s_i, columns) for a core block.
        """
        kind, start, stop = self.block_columns(i)
        return (self.dim if kind == "outer" else self.num_inner, stop - start)

    def operators(self) -> tuple[RademacherNoiseLinOp, RademacherNoiseLinOp, TransposedLinOp]:
        """The random matrices, as ``skerch.algorithms.seigh`` builds them for this plan.

        Returns:
            (Ω, Φ, Ψᵀ), skerch's by-block Rademacher operators (Ψᵀ transposed).
        """
        d, s, s_i, b = self.dim, self.num_measurements, self.num_inner, self.block_size
        phi_seed = self.seed + s + 1
        omega = RademacherNoiseLinOp((d, s), self.seed, by_row=False, blocksize=b, register=False)
        phi = RademacherNoiseLinOp((d, s_i), phi_seed, by_row=False, blocksize=b, register=False)
        psi = RademacherNoiseLinOp((d, s_i), phi_seed + s_i + 1, by_row=False, blocksize=b, register=False)
        return omega, phi, TransposedLinOp(psi)


def measure_block(H, plan: SketchPlan, i: int) -> Tensor:
    """Block i of the sketch: H Ω[:, cols] (outer) or Ψᵀ H Φ[:, cols] (core), as seigh computes it.

    Args:
        H: The d × d operator (``curvature.hessian_operator``).
        plan: The sketch.
        i: The block.

    Returns:
        The block, shape ``plan.block_shape(i)``, in H's dtype on H's device.

    Raises:
        ValueError: If H's size differs from the plan's d, or i is out of range.
    """
    if H.shape[0] != plan.dim:
        raise ValueError(f"H is {H.shape[0]} x {H.shape[0]} but the sketch plans d={plan.dim}")
    kind, start, _ = plan.block_columns(i)
    omega, phi, psi_t = plan.operators()
    op = omega if kind == "outer" else phi
    cols = op.get_block(start // plan.block_size, H.dtype, H.device)
    prod = hvp(H, cols, plan.block_size)
    return prod if kind == "outer" else psi_t @ prod


def solve_sketch(plan: SketchPlan, outer: Tensor, inner: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs from the merged sketch: skerch's ``oversampled_h`` recovery, as seigh runs it.

    Args:
        plan: The sketch.
        outer: Y = H Ω (d, s).
        inner: Z = Ψᵀ H Φ (s_i, s_i).
        k: Number of eigenpairs, ≤ s.

    Returns:
        (eigenvalues (k,) by decreasing magnitude, eigenvectors (d, k)).

    Raises:
        ValueError: If the shapes do not fit the plan or k > s.
    """
    if tuple(outer.shape) != (plan.dim, plan.num_measurements) or tuple(inner.shape) != (plan.num_inner,) * 2:
        raise ValueError(f"sketch shapes {tuple(outer.shape)}, {tuple(inner.shape)} do not fit the plan "
                         f"(d={plan.dim}, s={plan.num_measurements}, s_i={plan.num_inner})")
    if not 1 <= k <= plan.num_measurements:
        raise ValueError(f"k must be in [1, num_measurements={plan.num_measurements}], got {k}")
    _, phi, psi_t = plan.operators()
    vals, vecs = oversampled_h(outer, inner, psi_t, phi, rcond=LSTSQ_RCOND, as_eigh=True, by_mag=True)
    return vals[:k], vecs[:, :k]


# --------------------------------------------------------------------------- the store


@dataclass(frozen=True)
class BlockHeader:
    """What a block file must say about itself; ``SketchStore`` compares every field on reading."""

    step: int  # training step of the parameters
    seed: int  # Sacred's root seed of the run
    model_hash: str  # ``model_hash`` of the parameters at that step
    index: int  # block i
    kind: str  # "outer" | "inner"
    start: int  # first column
    stop: int  # end column
    rows: int  # d (outer) or s_i (inner)
    dim: int  # the plan: d, s, s_i, b, sketch seed
    num_measurements: int
    num_inner: int
    block_size: int
    sketch_seed: int
    format: int = FORMAT

    @classmethod
    def expected(cls, plan: SketchPlan, step: int, seed: int, hash_: str, i: int) -> BlockHeader:
        """The header block i of ``plan`` must carry, at a step, seed and model hash.

        Returns:
            The header.
        """
        kind, start, stop = plan.block_columns(i)
        return cls(step=step, seed=seed, model_hash=hash_, index=i, kind=kind, start=start, stop=stop,
                   rows=plan.block_shape(i)[0], dim=plan.dim, num_measurements=plan.num_measurements,
                   num_inner=plan.num_inner, block_size=plan.block_size, sketch_seed=plan.seed)

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, columns) of the block's data."""
        return self.rows, self.stop - self.start


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write ``path`` through ``write(tmp)`` and rename it into place: readers see all of it or nothing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)  # the data is on disk before the name is
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class SketchStore:
    """The folder of one sketch study: parameters per step and block files, shared by concurrent jobs.

    Args:
        root: The folder (created on first write).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def params_path(self, step: int) -> Path:
        """Where the parameters at a step are saved.

        Returns:
            ``<root>/params/step_<t>.pt``.
        """
        return self.root / "params" / f"step_{step:07d}.pt"

    def block_path(self, step: int, i: int) -> Path:
        """Where block i of a step's sketch is stored.

        Returns:
            ``<root>/step_<t>/block_<i>.h5``.
        """
        return self.root / f"step_{step:07d}" / f"block_{i:05d}.h5"

    # ---- parameters

    def save_params(self, step: int, spec: dict, w: Tensor) -> str:
        """Store the parameters w (flat) at a step with the model's description; return the model hash.

        Returns:
            ``model_hash(spec, w)``.
        """
        hash_ = model_hash(spec, w)
        record = {"step": step, "spec": spec, "model_hash": hash_, "w": w.detach().cpu().clone()}
        _atomic(self.params_path(step), lambda tmp: torch.save(record, tmp))
        return hash_

    def load_params(self, step: int, spec: dict) -> tuple[Tensor, str]:
        """The parameters saved at a step, checked against the model the caller describes.

        Args:
            step: The training step.
            spec: The caller's description of the model (as given to ``save_params``).

        Returns:
            (w, model hash).

        Raises:
            FileNotFoundError: If no parameters were saved at that step.
            ValueError: If the file cannot be read, its hash does not match its content, or it
                describes another model (the differing fields are named).
        """
        path = self.params_path(step)
        if not path.exists():
            raise FileNotFoundError(f"no parameters saved at step {step} ({path}); run the training stage "
                                    "(stage=train) with this step in log_at_steps first")
        try:
            record = torch.load(path, map_location="cpu", weights_only=True)
            w, saved_spec, hash_ = record["w"], record["spec"], record["model_hash"]
        except Exception as err:  # a truncated or foreign file: torch raises several types
            raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); run the training stage again") \
                from err
        if model_hash(saved_spec, w) != hash_:
            raise ValueError(f"{path} is damaged: its parameters do not hash to its model_hash {hash_}; "
                             "run the training stage again")
        diff = _differences(saved_spec, spec)
        if diff:
            raise ValueError(f"{path} holds the parameters of another model: {diff}; use another store_dir "
                             "or the config that trained it")
        return w, hash_

    def eigenpairs_path(self, step: int) -> Path:
        """Where the merged sketch's eigenpairs at a step are saved.

        Returns:
            ``<root>/eigenpairs/step_<t>.pt``.
        """
        return self.root / "eigenpairs" / f"step_{step:07d}.pt"

    def save_eigenpairs(self, step: int, hash_: str, vals: Tensor, vecs: Tensor) -> Path:
        """Store the sketched eigenpairs at a step (atomically), with the model hash they belong to.

        Returns:
            The file, holding ``{"step", "model_hash", "eigenvalues", "eigenvectors"}``.
        """
        # contiguous copies: the top k are views of all s eigenpairs, and torch.save writes a view's whole storage
        record = {"step": step, "model_hash": hash_, "eigenvalues": vals.detach().cpu().contiguous(),
                  "eigenvectors": vecs.detach().cpu().contiguous()}
        path = self.eigenpairs_path(step)
        _atomic(path, lambda tmp: torch.save(record, tmp))
        return path

    # ---- blocks

    def write_block(self, header: BlockHeader, data: Tensor) -> Path:
        """Write one block (atomically) with its header.

        Returns:
            The block's path.

        Raises:
            ValueError: If the data's shape is not the header's.
        """
        if tuple(data.shape) != header.shape:
            raise ValueError(f"block {header.index} has shape {tuple(data.shape)}, its header says {header.shape}")
        array = data.detach().cpu().numpy()

        def write(tmp: Path) -> None:
            with h5py.File(tmp, "w") as f:
                f.create_dataset("data", data=array, chunks=True, fletcher32=True)
                f.attrs.update(asdict(header))

        path = self.block_path(header.step, header.index)
        _atomic(path, write)
        return path

    def block_status(self, expected: BlockHeader) -> str:
        """"complete", "missing" or "damaged: <why>" for a block; a block of another sketch raises.

        A complete block is read whole, so that HDF5 verifies every chunk's checksum.

        Args:
            expected: The header the block must carry.

        Returns:
            The status.

        Raises:
            ValueError: If the file is a valid block of another step, seed, model or plan.
        """
        try:
            self.read_block(expected)
        except FileNotFoundError:
            return "missing"
        except OSError as err:
            return f"damaged: {err}"
        return "complete"

    def read_block(self, expected: BlockHeader) -> Tensor:
        """The data of a block whose header must equal ``expected``.

        Returns:
            The block (CPU tensor).

        Raises:
            FileNotFoundError: If there is no such block.
            OSError: If the file is cut off or damaged (unreadable, a failed checksum, a missing
                header field or a shape unlike its header's).
            ValueError: If it is a block of another sketch (the differing fields are named).
        """
        path = self.block_path(expected.step, expected.index)
        if not path.exists():
            raise FileNotFoundError(path)
        with h5py.File(path, "r") as f:
            attrs = {k: _plain(v) for k, v in f.attrs.items()}
            missing = [f.name for f in fields(BlockHeader) if f.name not in attrs]
            if missing or "data" not in f:
                raise OSError(f"{path} lacks {missing or 'its data'}")
            diff = _differences(attrs, asdict(expected))
            if diff:
                raise ValueError(f"{path} is a block of another sketch: {diff}; it is left as it is: use "
                                 "another store_dir, or delete it if it is stale")
            if tuple(f["data"].shape) != expected.shape:
                raise OSError(f"{path} holds shape {tuple(f['data'].shape)}, its header says {expected.shape}")
            return torch.from_numpy(f["data"][...])

    def load_sketch(self, headers: Sequence[BlockHeader], plan: SketchPlan) -> tuple[Tensor, Tensor]:
        """Merge a step's blocks into (Y, Z) once every block is present and valid.

        Args:
            headers: The expected headers of all ``plan.num_blocks`` blocks, in order.
            plan: The sketch.

        Returns:
            (Y (d, s), Z (s_i, s_i)), float32 CPU tensors.

        Raises:
            ValueError: Naming every missing or damaged block, or from ``read_block``.
        """
        blocks, problems = [], []
        for h in headers:
            try:
                blocks.append(self.read_block(h))
            except FileNotFoundError:
                problems.append(f"block {h.index} missing")
            except OSError as err:
                problems.append(f"block {h.index} damaged ({err})")
        if problems:
            raise ValueError(f"step {headers[0].step}: {len(problems)} of {len(headers)} blocks are not complete in "
                             f"{self.root}: {'; '.join(problems)}. Run their measurement lines again "
                             "(python sweep.py slurm FILE --retry-failed, or stage=measure with these blocks)")
        return torch.cat(blocks[:plan.num_outer_blocks], dim=1), torch.cat(blocks[plan.num_outer_blocks:], dim=1)


def _plain(value):
    # An HDF5 attribute as a Python scalar (numpy ints, bytes).
    if isinstance(value, bytes):
        return value.decode()
    return value.item() if hasattr(value, "item") else value


def _differences(found: dict, expected: dict) -> str:
    keys = sorted(set(found) | set(expected))
    return ", ".join(f"{k} {found.get(k)!r} (expected {expected.get(k)!r})" for k in keys
                     if found.get(k) != expected.get(k))
