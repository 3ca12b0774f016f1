r"""Curvature of the full-data loss beside λ̂: Hessian spectra, ranks, traces, Jacobian rank, mask overlaps.

Singular learning theory relates λ to curvature: λ = d/2 for a regular model, λ = rank(H)/2 for a
minimally singular one (the loss near w* is a positive-definite quadratic form in r of its d
parameters), and λ ≥ rank(H)/2 in general (Watanabe 2009, *Algebraic Geometry and Statistical
Learning Theory*, Thm 6.1 and Remark 7.2). Here H = ∇²L_n(w) is the Hessian of the **full-data**
mean loss L_n(w) = (1/n) Σ_i ℓ(f(x_i; w), y_i), never of a minibatch.

What each piece is built on:

* **Hessian-vector products, written here** (``hessian_operator``, ``HessianOperator``): double
  backward (Pearlmutter 1994), H v = ∇(∇L_nᵀ v), the gradient's graph built once per batch and
  reused for every column of V, each batch weighted by |batch|/n, so the product is that of the
  full-data Hessian whatever the batch size; with a single batch the graph is also kept between
  calls while w is unchanged. One product costs about 3 gradients, one more at the same w about 2;
  curvlinops' ``HessianLinearOperator`` (forward-over-reverse, ``vmap(jvp(jacrev))``, rebuilt per
  call) cost 4-7 gradients for one vector (``benchmarks/bench_curvature.py``), which dominated
  Lanczos. ``to_scipy()`` makes H a ``scipy.sparse.linalg.LinearOperator`` for ``eigsh``
  (Lanczos, ``top_eigs_lanczos``). All products run on the parameters' device (GPU when the model
  is there).
* **curvlinops-for-pytorch** (3.0.1) is the reference the hand-written product is tested against
  (``tests/test_curvature.py``); nothing here calls it at run time.
* **skerch** (1.2.0) supplies the sketched eigendecomposition (``top_eigs_sketched``,
  ``hessian_rank(method="sketch")``): ``skerch.algorithms.seigh`` with HMT recovery (Halko,
  Martinsson & Tropp 2011, Alg. 4.1 and 5.3): Y = H Ω for a random Rademacher Ω (d × s),
  Q = qr(Y), then the eigenpairs of the s × s core QᵀHQ. Exact when rank(H) < s. HMT is
  two-pass (QᵀHQ needs Q, hence all of Y, first); ``recovery="oversampled"`` is skerch's
  single-pass alternative (Fernandez et al. 2025, the masks study's SkEIGH; Tropp et al. 2017):
  besides Y = H Ω, a core sketch Z = Ψᵀ H Φ (s_i × s_i, s_i > s) from independent Rademacher Φ,
  Ψ, every column of which can be measured apart, so ``sketch_store.py`` splits them over jobs.
  Then Q = qr(Y) and the core C = (ΨᵀQ)⁺ Z (QᵀΦ)⁺ ≈ QᵀHQ (least squares), whose eigenpairs
  (θ, u) give (θ, Q u). At equal s it is a little less accurate than HMT (measured on the masks
  study's MLP, d = 6,985, s = 300: top-10 eigenvalue error 0.06 with s_i = 2s against HMT's
  0.03), so HMT stays the default; the generalised Nyström and ``singlepass`` recoveries, also
  single-pass, were over 100 times worse there (an indefinite H) and are not offered.
* **Written here, and why.**
  ``hutchinson_trace``: tr H ≈ (1/K) Σ_k z_kᵀ H z_k with Rademacher z_k (Hutchinson 1989), with its
  standard error, which neither library's estimator returns, and probes drawn from a
  ``torch.Generator`` (both libraries draw from global random state).
  ``spectral_density``: stochastic Lanczos quadrature (Ubaru, Chen & Saad 2017; Papyan 2020):
  per probe v, m Lanczos steps give the tridiagonal T_m = S Θ Sᵀ, and the nodes θ_j with weights
  (S_{0j})² are a Gauss quadrature of the spectral measure vᵀ δ(λ − H) v/‖v‖². We keep the nodes and
  weights (curvlinops returns only a smoothed density on a grid), reorthogonalise fully (its
  ``fast_lanczos`` does not, which splits nodes into ghosts at the sizes here) and stop at an
  invariant subspace, so a spectrum with few distinct eigenvalues comes out exact.
  ``hessian_rank``: the rank is the number of eigenvalues with |λ_i| > ``rtol`` · max_j |λ_j|
  (``RANK_RTOL`` = 1e-5 by default: far above float32 round-off of the products, about 1e-7
  relative, and far below the curvature of any direction that matters to λ̂ at the n used here).
  ``functional_rank``: rank and singular values of the output Jacobian J = ∂ vec f(x; w)/∂w (dense,
  ``torch.func.jacrev``, then an SVD; curvlinops' Jacobian operator would take d products to form J).
  ``mask_overlap`` and ``grassmann_distances``: the overlap ‖M Q‖²_F / k of the top-k eigenspace
  Q (d × k, orthonormal) with the k largest-magnitude parameters (M the 0/1 diagonal mask), which
  is Σ cos²θ_i / k over the principal angles θ_i between span Q and the mask's coordinate
  subspace: 1 when they coincide, about k/d for a random Q. The Grassmann distances between two
  k-subspaces (Edelman, Arias & Smith 1998, §4.3): geodesic ‖θ‖₂, chordal ‖sin θ‖₂ (the projection
  distance ‖QQᵀ − PPᵀ‖_F/√2), and the largest angle.

Example (a quadratic ½ wᵀ A w with eigenvalues 3, 1, 0, 0):

    >>> import torch
    >>> from models.toy import toy_data
    >>> model = Quadratic(torch.tensor([3.0, 1.0, 0.0, 0.0]))
    >>> H = hessian_operator(model, model.loss_fn, toy_data(10))
    >>> evals, _ = top_eigs_lanczos(H, 2)
    >>> [round(float(v), 4) for v in evals], hessian_rank(H, method="dense").rank
    ([3.0, 1.0], 2)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import scipy.linalg
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from skerch.algorithms import seigh
from torch import Tensor, nn
from torch.func import functional_call, jacrev
from tqdm import tqdm

__all__ = [
    "RANK_RTOL",
    "SKETCH_RECOVERIES",
    "HessianOperator",
    "Quadratic",
    "RankResult",
    "SpectralDensity",
    "TraceEstimate",
    "curvature_summary",
    "flat_function",
    "flat_params",
    "full_hessian",
    "functional_rank",
    "grassmann_distances",
    "hessian_eigvalsh",
    "hessian_operator",
    "hessian_rank",
    "hutchinson_trace",
    "hvp",
    "magnitude_mask",
    "mask_metrics",
    "mask_overlap",
    "principal_angles",
    "spectral_density",
    "top_eigs_exact",
    "top_eigs_lanczos",
    "top_eigs_sketched",
]

RANK_RTOL = 1e-5  # eigenvalues with |λ| ≤ RANK_RTOL · max|λ| count as zero in hessian_rank
HVP_BLOCK = 256  # Hessian-vector products computed together (memory: about HVP_BLOCK copies of d)
MAX_DENSE_DIM = 20_000  # full_hessian refuses larger d (d² floats)
SKETCH_OVERSAMPLING = 10  # sketch columns beyond the rank found, for a rank to count as certified
SKETCH_RECOVERIES = ("hmt", "oversampled")  # top_eigs_sketched's recoveries


# --------------------------------------------------------------------------- the operator


class HessianOperator:
    r"""H = ∇²L_n(w), the Hessian of the full-data mean loss at the model's current parameters, as an operator.

    ``H @ v`` for a vector (d,) or a matrix (d, K) on the parameters' device, by double backward
    (Pearlmutter 1994): per batch B, the gradient g_B = (|B|/n) ∇ℓ_B(w) is built once with its graph
    (``create_graph=True``), then each column v gives H_B v = ∇(g_Bᵀ v) by one more backward pass
    through that graph; the sum over batches is the full-data product, whatever ``batch_size``.
    One product costs about 3 gradients, and each further column (or call at the same w) about 2
    (``benchmarks/bench_curvature.py``). The product is taken at the parameters' values at call
    time (the operator holds the live parameters, not a copy).

    Attributes:
        shape: (d, d).
        device: The parameters' device.
        dtype: The parameters' dtype.
    """

    def __init__(self, model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor],
                 batch_size: int, progress: bool) -> None:
        self.model, self.loss_fn, self.progress = model, loss_fn, progress
        self.params = [p for p in model.parameters() if p.requires_grad]
        x, y = data
        self.num_data = len(x)
        self.batches = list(zip(x.split(batch_size), y.split(batch_size), strict=True))
        d = sum(p.numel() for p in self.params)
        self.shape = (d, d)
        self.device, self.dtype = self.params[0].device, self.params[0].dtype
        self._cache: tuple | None = None  # (state, gradient with graph), see __matmul__

    @staticmethod
    def _flat(tensors) -> Tensor:
        return torch.cat([t.reshape(-1) for t in tensors])

    def _state(self) -> tuple:
        # Changes whenever a parameter or the data is written in place (optimiser steps, copy_) or swapped.
        return tuple((t.data_ptr(), t._version) for t in (*self.params, *self.batches[0]))

    def _gradient_graph(self, xb: Tensor, yb: Tensor) -> Tensor | None:
        """(|B|/n) ∇ℓ_B(w), flat, with its graph.

        Returns:
            The flat (d,) gradient, built with ``create_graph=True``; None where it does not depend on w
            (zero Hessian).
        """
        with torch.enable_grad():
            loss = self.loss_fn(self.model(xb), yb) * (len(xb) / self.num_data)
            grad = self._flat(torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True,
                                                  materialize_grads=True))
        return grad if grad.requires_grad else None

    def __matmul__(self, v: Tensor) -> Tensor:
        d = self.shape[0]
        if not isinstance(v, Tensor) or v.ndim not in (1, 2) or v.shape[0] != d:
            raise ValueError(f"H @ v needs a tensor of shape ({d},) or ({d}, K), got "
                             f"{tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__}")
        cols = v.to(self.device, self.dtype).reshape(d, -1)
        out = torch.zeros_like(cols)
        # With one batch, the gradient's graph (the memory of one product anyway) is kept between calls
        # while w and the data are unchanged: Lanczos's one-vector products then skip the forward and
        # first backward pass, a third of their cost. With several batches keeping every batch's graph
        # would defeat batch_size, so each product rebuilds them.
        keep = len(self.batches) == 1
        for xb, yb in tqdm(self.batches, desc="Hessian-vector product", disable=not self.progress, leave=False):
            if keep and self._cache is not None and self._cache[0] == self._state():
                grad = self._cache[1]
            else:
                self._cache = None
                grad = self._gradient_graph(xb, yb)
                if keep:
                    self._cache = (self._state(), grad)
            if grad is None:
                continue
            with torch.enable_grad():
                for j in range(cols.shape[1]):
                    hv = torch.autograd.grad(grad, self.params, cols[:, j], retain_graph=keep or j + 1 < cols.shape[1],
                                             allow_unused=True, materialize_grads=True)
                    out[:, j] += self._flat(hv)
        return out.reshape(v.shape)

    def to_scipy(self, dtype=np.float64) -> LinearOperator:
        """H as a ``scipy.sparse.linalg.LinearOperator`` (numpy in ``dtype``, products in H's dtype and device).

        Returns:
            A (d, d) ``LinearOperator`` whose products (matvec, matmat and their adjoints, H being
            symmetric) call ``H @``.
        """

        def matmat(m: np.ndarray) -> np.ndarray:
            prod = self @ torch.from_numpy(np.ascontiguousarray(m)).to(self.device, self.dtype)
            return prod.detach().cpu().numpy().astype(dtype, copy=False)

        return LinearOperator(self.shape, matvec=matmat, matmat=matmat, rmatvec=matmat, rmatmat=matmat, dtype=dtype)


def hessian_operator(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor], *,
                     batch_size: int = 4096, progress: bool = False) -> HessianOperator:
    r"""H = ∇²L_n(w) at the model's parameters as a linear operator (``H @ V``, ``H.to_scipy()``).

    Args:
        model: The model; its trainable parameters, in ``model.parameters()`` order, are w.
        loss_fn: ``loss_fn(output, target)``, the mean loss over a batch.
        data: ``(x, y)``, the full data set; the products are of the full-data Hessian.
        batch_size: Rows per forward pass (only memory; the product does not depend on it).
        progress: Show a progress bar over batches in each product.

    Returns:
        The operator (``HessianOperator``), on the parameters' device and dtype.

    Raises:
        ValueError: If ``data`` is not a pair of tensors of equal length, ``batch_size`` < 1 or
            the model has no trainable parameter.
    """
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)
            and len(data[0]) == len(data[1]) > 0):
        raise ValueError("data must be a pair (x, y) of tensors with the same number of rows > 0")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError("the model has no trainable parameter")
    return HessianOperator(model, loss_fn, tuple(data), batch_size, progress)


def hvp(H, v: Tensor, block: int = HVP_BLOCK) -> Tensor:
    """H v for a vector (d,) or H V for a matrix (d, K), ``block`` columns at a time.

    Args:
        H: The operator from ``hessian_operator`` (or any ``@``-able d × d operator).
        v: Vector or matrix on H's device.
        block: Columns per product.

    Returns:
        The product, same shape as ``v``.
    """
    if v.ndim == 1:
        return H @ v
    return torch.cat([H @ c for c in v.split(block, dim=1)], dim=1)


class _Blocked:
    """H with ``@`` applied ``block`` columns at a time (skerch multiplies whole sketches at once)."""

    def __init__(self, H, block: int) -> None:
        self.H, self.block, self.shape = H, block, H.shape

    def __matmul__(self, v: Tensor) -> Tensor:
        return hvp(self.H, v, self.block)


def flat_params(model: nn.Module) -> Tensor:
    """The trainable parameters as one detached vector, in the operator's order.

    Returns:
        The flat (d,) vector w: the parameters with ``requires_grad``, in ``model.parameters()`` order.
    """
    return torch.cat([p.detach().reshape(-1) for p in model.parameters() if p.requires_grad])


# --------------------------------------------------------------------------- trace and spectrum


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's tr H: ``estimate`` ± ``std_error`` (standard error of the mean over probes)."""

    estimate: float
    std_error: float
    num_probes: int

    def to_dict(self) -> dict:
        """The estimate as a dict.

        Returns:
            ``{"estimate", "std_error", "num_probes"}``.
        """
        return asdict(self)


def _rademacher(shape: tuple[int, ...], generator: torch.Generator, device=None, dtype=None) -> Tensor:
    z = torch.randint(0, 2, shape, generator=generator, device=generator.device).mul_(2).sub_(1)
    return z.to(device=device, dtype=dtype)


def hutchinson_trace(H, num_probes: int, generator: torch.Generator, *, block: int = 64) -> TraceEstimate:
    r"""Estimate tr H ≈ (1/K) Σ_k z_kᵀ H z_k with Rademacher z_k (Hutchinson 1989), and its standard error.

    The variance of one probe is 2 Σ_{i≠j} H_ij² (Rademacher), so a diagonal H is exact.

    Args:
        H: The d × d operator.
        num_probes: K ≥ 2.
        generator: Source of the probes (on any device; probes are moved to H's device).
        block: Probes per batched product.

    Returns:
        The estimate, its standard error std/√K and K.

    Raises:
        ValueError: If ``num_probes`` < 2.
    """
    if num_probes < 2:
        raise ValueError(f"num_probes must be >= 2 for a standard error, got {num_probes}")
    d = H.shape[0]
    quad = []
    for start in range(0, num_probes, block):
        z = _rademacher((d, min(block, num_probes - start)), generator, device=H.device, dtype=H.dtype)
        quad.append((z.double() * (H @ z).double()).sum(0).cpu())
    q = torch.cat(quad)
    return TraceEstimate(float(q.mean()), float(q.std() / math.sqrt(num_probes)), num_probes)


@dataclass(frozen=True)
class SpectralDensity:
    r"""Stochastic Lanczos quadrature of the spectral density p(λ) = (1/d) Σ_i δ(λ − λ_i).

    ``nodes[p]`` and ``weights[p]`` are probe p's Gauss quadrature (NaN-padded where Lanczos
    stopped early at an invariant subspace); each probe's weights sum to 1.
    """

    nodes: np.ndarray
    weights: np.ndarray
    dim: int

    @property
    def invariant(self) -> bool:
        """True if every probe's Lanczos stopped at an invariant subspace (its nodes are exact eigenvalues)."""
        return bool(np.isnan(self.nodes[:, -1]).all())

    def count_above(self, threshold: float) -> tuple[float, float]:
        """Estimated number of eigenvalues with |λ| > threshold, and its standard error over probes.

        Returns:
            (d · mean_p Σ_j w_pj 1[|θ_pj| > threshold], d · std_p / √P).
        """
        per_probe = np.nansum(np.where(np.abs(self.nodes) > threshold, self.weights, 0.0), axis=1) * self.dim
        se = per_probe.std(ddof=1) / math.sqrt(len(per_probe)) if len(per_probe) > 1 else float("nan")
        return float(per_probe.mean()), float(se)

    def density(self, grid: np.ndarray, sigma: float) -> np.ndarray:
        """p(λ) on ``grid``, each node a Gaussian of width ``sigma``, averaged over probes.

        Returns:
            The density at each point of the 1-D ``grid``, an array of the same length.
        """
        ok = np.isfinite(self.nodes)
        nodes, weights = self.nodes[ok], self.weights[ok]
        bumps = np.exp(-0.5 * ((grid[:, None] - nodes[None, :]) / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))
        return bumps @ weights / len(self.nodes)


def spectral_density(H, *, num_probes: int = 8, num_steps: int = 64, generator: torch.Generator) -> SpectralDensity:
    r"""Stochastic Lanczos quadrature with Rademacher probes and full reorthogonalisation.

    Lanczos from v₁ = z/‖z‖ builds T_m = tridiag(β, α, β) = S Θ Sᵀ; the quadrature nodes are the
    Ritz values θ_j and the weights (S_{0j})² (Golub & Meurant 2010, Ch. 6; Ubaru, Chen & Saad 2017,
    SIAM J. Matrix Anal. Appl. 38(4)). Lanczos stops early when β_j falls to round-off: Krylov space
    invariant, quadrature exact.

    Args:
        H: The d × d symmetric operator.
        num_probes: P, independent probes.
        num_steps: m, Lanczos steps per probe (≤ d); memory m · d.
        generator: Source of the probes.

    Returns:
        Nodes and weights per probe.
    """
    d = H.shape[0]
    m = min(num_steps, d)
    nodes = np.full((num_probes, m), np.nan)
    weights = np.full((num_probes, m), np.nan)
    # Products in H's dtype; the recurrence in float64 (float32 dot products of 1e5 terms drift by 1e-5).
    breakdown = 100 * torch.finfo(H.dtype).eps
    for p in range(num_probes):
        v = _rademacher((d,), generator, device=H.device, dtype=torch.float64) / math.sqrt(d)
        basis, alphas, betas = [v], [], []
        for j in range(m):
            w = (H @ basis[-1].to(H.dtype)).double()
            alphas.append(float(basis[-1] @ w))
            stacked = torch.stack(basis, dim=1)
            for _ in range(2):  # full reorthogonalisation, twice is enough (Giraud et al. 2005)
                w = w - stacked @ (stacked.T @ w)
            beta = float(w.norm())
            scale = max(abs(a) for a in alphas) + (betas[-1] if betas else 0.0)
            if j == m - 1 or beta <= breakdown * max(scale, 1e-30):
                break
            betas.append(beta)
            basis.append(w / beta)
        t = np.diag(alphas) + np.diag(betas, 1) + np.diag(betas, -1)
        theta, s = np.linalg.eigh(t)
        nodes[p, : len(theta)], weights[p, : len(theta)] = theta, s[0] ** 2
    return SpectralDensity(nodes, weights, d)


# --------------------------------------------------------------------------- eigenpairs


def top_eigs_lanczos(H, k: int, *, which: str = "LM", tol: float = 1e-6, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs by implicitly restarted Lanczos (``scipy.sparse.linalg.eigsh`` on ``H.to_scipy()``).

    Args:
        H: The d × d symmetric operator.
        k: Number of eigenpairs, 1 ≤ k < d.
        which: "LM" (largest magnitude, the default), "LA" (largest) or "SA" (smallest algebraic).
        tol: eigsh's relative accuracy of the eigenvalues.
        seed: Seed of the start vector (eigsh would otherwise draw it from numpy's global state).

    Returns:
        (eigenvalues (k,) sorted by decreasing magnitude, or decreasing value for "LA" and
        increasing for "SA"; eigenvectors (d, k) orthonormal), float64 on H's device.

    Raises:
        ValueError: If k is not in [1, d).
    """
    d = H.shape[0]
    if not 1 <= k < d:
        raise ValueError(f"k must be in [1, d={d}) for Lanczos; use top_eigs_exact for all eigenpairs, got {k}")
    v0 = np.random.default_rng(seed).standard_normal(d)
    vals, vecs = eigsh(H.to_scipy(np.float64), k=k, which=which, tol=tol, v0=v0)
    order = {"LM": np.argsort(-np.abs(vals)), "LA": np.argsort(-vals), "SA": np.argsort(vals)}[which]
    return (torch.from_numpy(vals[order].copy()).to(H.device),
            torch.from_numpy(vecs[:, order].copy()).to(H.device))


def top_eigs_sketched(H, k: int, *, num_measurements: int | None = None, seed: int = 0,
                      block: int = HVP_BLOCK, recovery: str = "hmt",
                      num_inner: int | None = None) -> tuple[Tensor, Tensor]:
    r"""Top-k (by magnitude) eigenpairs from a sketch: ``skerch.algorithms.seigh``, HMT or single-pass recovery.

    ``recovery="hmt"``: s = ``num_measurements`` products H Ω (Rademacher Ω, d × s), Q = qr(HΩ),
    and s more products for the core QᵀHQ (Halko, Martinsson & Tropp 2011, Alg. 5.3). The
    eigenpairs are exact when rank H < s; otherwise the error of the k-th falls with the gap
    λ_k/λ_{s+1}. ``recovery="oversampled"``: the same Y = HΩ and s_i = ``num_inner`` products
    for the core sketch Ψᵀ H Φ, all in one pass (see the module docstring); ``sketch_store.py``
    computes the same measurements block by block in separate jobs.

    Ω's columns come in blocks of ``block``, each block drawn from seed + its first column, so
    the sketch depends on ``block`` as well as on ``seed`` (skerch's Rademacher operators).

    Args:
        H: The d × d symmetric operator.
        k: Number of eigenpairs.
        num_measurements: s ≥ k (default 2k + 10, capped at d).
        seed: skerch's seed of Ω (Φ and Ψ follow it: seed + s + 1 and seed + s + s_i + 2).
        block: Columns per batched product, and per block of Ω.
        recovery: "hmt" (two passes over H) or "oversampled" (one pass).
        num_inner: s_i, s < s_i ≤ d, for "oversampled" (default min(2s, d)).

    Returns:
        (eigenvalues (k,) by decreasing magnitude, eigenvectors (d, k)), in H's dtype and device.

    Raises:
        ValueError: If k, s or s_i is out of range, or the recovery is unknown.
    """
    d = H.shape[0]
    s = min(d, 2 * k + 10) if num_measurements is None else num_measurements
    if not 1 <= k <= s <= d:
        raise ValueError(f"need 1 <= k <= num_measurements <= d={d}, got k={k}, num_measurements={s}")
    if recovery not in SKETCH_RECOVERIES:
        raise ValueError(f"unknown recovery {recovery!r}; choose from {list(SKETCH_RECOVERIES)}")
    recovery_type = "hmt"
    if recovery == "oversampled":
        s_i = min(2 * s, d) if num_inner is None else num_inner
        if not s < s_i <= d:
            raise ValueError(f"need num_measurements={s} < num_inner <= d={d} for the oversampled recovery, "
                             f"got num_inner={s_i}")
        recovery_type = f"oversampled_{s_i}"
    vals, vecs = seigh(_Blocked(H, block), H.device, H.dtype, s, seed=seed, noise_type="rademacher",
                       recovery_type=recovery_type, meas_blocksize=block, by_mag=True)
    return vals[:k], vecs[:, :k]


def full_hessian(H, *, block: int = HVP_BLOCK) -> Tensor:
    """The dense d × d Hessian, H applied to the identity ``block`` columns at a time, symmetrised.

    Args:
        H: The operator.
        block: Columns per product.

    Returns:
        The (d, d) matrix in float64 on H's device.

    Raises:
        ValueError: If d > ``MAX_DENSE_DIM``.
    """
    d = H.shape[0]
    if d > MAX_DENSE_DIM:
        raise ValueError(f"full_hessian of d={d} > {MAX_DENSE_DIM} parameters would need {8 * d * d / 1e9:.1f} GB; "
                         "use top_eigs_lanczos, top_eigs_sketched or hessian_rank(method='sketch'|'slq')")
    cols = []
    for start in range(0, d, block):
        eye = torch.zeros(d, min(block, d - start), device=H.device, dtype=H.dtype)
        eye[start:start + eye.shape[1]].fill_diagonal_(1.0)
        cols.append((H @ eye).double())
    dense = torch.cat(cols, dim=1)
    return (dense + dense.T) / 2


def hessian_eigvalsh(H) -> Tensor:
    """All eigenvalues of H, ascending (float64, from ``full_hessian``).

    Returns:
        The (d,) eigenvalues of the dense H, in ascending order.
    """
    return torch.linalg.eigvalsh(full_hessian(H))


def top_eigs_exact(dense: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Top-k eigenpairs by magnitude of a dense symmetric matrix, exact (direct eigensolvers, no iteration).

    On the CPU with k < d/4, LAPACK's MRRR (``scipy.linalg.eigh``, driver "evr") computes only the k
    largest eigenpairs λ_1 ≥ … ≥ λ_k, about half the cost of all of them; they are the top k by
    magnitude exactly when no eigenvalue lies below −λ_k, i.e. when A + λ_k I is positive definite,
    which a Cholesky factorisation (d³/3 flops) certifies. Otherwise, and on a GPU, all eigenpairs
    (``torch.linalg.eigh``).

    Returns:
        (eigenvalues (k,) by decreasing magnitude, eigenvectors (d, k)), on the matrix's device.
    """
    d = dense.shape[0]
    if dense.device.type == "cpu" and 4 * k < d:
        vals, vecs = scipy.linalg.eigh(dense.numpy(), subset_by_index=[d - k, d - 1], driver="evr")
        shift = float(vals[0])
        if shift > 0:
            shifted = dense + shift * torch.eye(d, dtype=dense.dtype)
            if int(torch.linalg.cholesky_ex(shifted).info) == 0:
                return (torch.from_numpy(vals[::-1].copy()).to(dense.dtype),
                        torch.from_numpy(vecs[:, ::-1].copy()).to(dense.dtype))
    vals, vecs = torch.linalg.eigh(dense)
    order = torch.argsort(vals.abs(), descending=True)[:k]
    return vals[order], vecs[:, order]


# --------------------------------------------------------------------------- rank


@dataclass(frozen=True)
class RankResult:
    """rank H = #{i : |λ_i| > threshold}, threshold = rtol · max|λ|.

    ``certified``: exact up to the threshold (dense eigenvalues; a sketch that saturated with
    room to spare; a full-rank certificate from the smallest eigenvalue). ``std_error``: the
    standard error of an SLQ count (0 for the exact methods).
    """

    rank: int
    method: str
    rtol: float
    threshold: float
    lambda_max: float
    std_error: float
    certified: bool
    sketch_size: int | None = None

    def to_dict(self) -> dict:
        """All fields, JSON-ready.

        Returns:
            A dict with one entry per field.
        """
        return asdict(self)


RANK_METHODS = ("dense", "sketch", "slq")


def hessian_rank(H, *, method: str = "sketch", rtol: float = RANK_RTOL, seed: int = 0, max_sketch: int = 4096,
                 slq_probes: int = 16, slq_steps: int = 32, generator: torch.Generator | None = None) -> RankResult:
    r"""The number of eigenvalues of H with |λ| > rtol · max|λ| (``RANK_RTOL`` = 1e-5 by default).

    The methods:

    * ``"dense"``: all eigenvalues of ``full_hessian`` (d ≤ ``MAX_DENSE_DIM``); exact.
    * ``"sketch"``: first, the extreme eigenvalues by Lanczos; if the smallest algebraic
      eigenvalue exceeds the threshold, H is positive definite and the rank is d (certified).
      Otherwise sketches of s = 64, 128, … columns (``top_eigs_sketched`` with k = s): when H Ω
      spans range H (rank H < s, probability 1), the core QᵀHQ has exactly the nonzero
      eigenvalues of H, so the count is exact once it is ≤ s − 10. Cost: 2s products and
      O(d s²) arithmetic for the final s; it stops with a ValueError beyond ``max_sketch``.
    * ``"slq"``: d · (quadrature weight of |θ| > threshold) from ``spectral_density``, rounded;
      unbiased, with a standard error. (For Rademacher probes and eigenvectors along coordinate
      axes, as in ``models.toy.MinimallySingular``, every probe gives the same count: zero variance.)

    Args:
        H: The d × d symmetric operator.
        method: "dense", "sketch" or "slq".
        rtol: Relative threshold.
        seed: Seed of Lanczos start vectors and sketches.
        max_sketch: Largest sketch tried by "sketch".
        slq_probes: Probes for "slq".
        slq_steps: Lanczos steps per probe for "slq".
        generator: Probes for "slq" (default: a generator seeded with ``seed``).

    Returns:
        The rank and how it was found.

    Raises:
        ValueError: If the method is unknown, or "sketch" did not saturate within ``max_sketch``.
    """
    if method not in RANK_METHODS:
        raise ValueError(f"unknown rank method {method!r}; choose from {list(RANK_METHODS)}")
    d = H.shape[0]
    if method == "dense":
        vals = hessian_eigvalsh(H)
        lam_max = float(vals.abs().max())
        threshold = rtol * lam_max
        return RankResult(int((vals.abs() > threshold).sum()), method, rtol, threshold, lam_max, 0.0, True)
    top, _ = top_eigs_lanczos(H, 1, which="LM", seed=seed)
    lam_max = abs(float(top[0]))
    threshold = rtol * lam_max
    if method == "slq":
        gen = generator if generator is not None else torch.Generator().manual_seed(seed)
        density = spectral_density(H, num_probes=slq_probes, num_steps=slq_steps, generator=gen)
        count, se = density.count_above(threshold)
        return RankResult(int(round(count)), method, rtol, threshold, lam_max, se, False)
    # Full rank: Lanczos (reorthogonalised) from two Rademacher starts reaches an invariant subspace
    # with every Ritz value, hence every eigenvalue it sees, above the threshold. (ARPACK's "SA"
    # returns the wrong end of a spectrum with two distinct eigenvalues, so it is not used here.)
    gen = torch.Generator().manual_seed(seed + 1)
    probe = spectral_density(H, num_probes=2, num_steps=slq_steps, generator=gen)
    if probe.invariant and float(np.nanmin(probe.nodes)) > threshold:
        return RankResult(d, method, rtol, threshold, lam_max, 0.0, True)
    s = min(64, d)
    while True:
        vals, _ = top_eigs_sketched(H, s, num_measurements=s, seed=seed)
        rank = int((vals.abs() > threshold).sum())
        if rank <= s - SKETCH_OVERSAMPLING or s == d:
            return RankResult(rank, method, rtol, threshold, lam_max, 0.0, True, sketch_size=s)
        if s >= max_sketch:
            raise ValueError(f"a sketch of {s} columns found {rank} eigenvalues above {threshold:.3g}, so rank H "
                             f"may exceed it; raise max_sketch (memory {s} x d) or use method='slq'")
        s = min(d, max_sketch, 2 * s)


# --------------------------------------------------------------------------- Jacobian


def flat_function(model: nn.Module, x: Tensor) -> tuple[Tensor, Callable[[Tensor], Tensor]]:
    """(flat parameter vector w, w ↦ model outputs on x), for ``torch.func`` transforms.

    Args:
        model: The model (its parameters are not changed).
        x: Inputs.

    Returns:
        w, in ``model.named_parameters()`` order, and the function.
    """
    names = [k for k, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    shapes, sizes = [p.shape for p in params], [p.numel() for p in params]

    def forward(w: Tensor) -> Tensor:
        chunks = w.split(sizes)
        return functional_call(model, {k: c.view(s) for k, c, s in zip(names, chunks, shapes, strict=True)}, (x,))

    return torch.cat([p.reshape(-1) for p in params]), forward


def functional_rank(model: nn.Module, x: Tensor) -> tuple[dict, np.ndarray]:
    """Rank and singular values of J = ∂ vec f(x; w)/∂w at the model's parameters (dense SVD).

    Singular values below max(J's shape) · eps(J's dtype) · σ_max count as zero (J is computed in
    the model's precision, so smaller ones are round-off).

    Args:
        model: The model.
        x: Inputs (T, ...).

    Returns:
        ({"functional_rank", "jacobian_shape", "max_singular_value", "rtol"}, singular values in
        decreasing order).
    """
    w, forward = flat_function(model, x)
    jac = jacrev(lambda v: forward(v).reshape(-1))(w)
    rtol = max(jac.shape) * torch.finfo(jac.dtype).eps
    sv = torch.linalg.svdvals(jac.double())
    rank = int((sv > rtol * sv[0]).sum())
    return dict(functional_rank=rank, jacobian_shape=list(jac.shape), max_singular_value=float(sv[0]),
                rtol=rtol), sv.cpu().numpy()


# --------------------------------------------------------------------------- subspaces and masks


def magnitude_mask(w: Tensor, k: int) -> Tensor:
    """Indices of the k entries of w with the largest |w_i| (the pruning mask M, as indices).

    Returns:
        The (k,) indices into w, largest |w_i| first.

    Raises:
        ValueError: If k is not in [1, w.numel()].
    """
    if not 1 <= k <= w.numel():
        raise ValueError(f"k must be in [1, {w.numel()}], got {k}")
    return torch.topk(w.abs(), k).indices


def principal_angles(a: Tensor, b: Tensor) -> Tensor:
    """Principal angles θ between span a and span b (d × k columns, k ≤ d), ascending, in [0, π/2].

    Both bases are first orthonormalised in float64 (QR), so float32 bases, orthonormal only to
    about 1e-7, do not put a floor of √(2·1e-7) ≈ 4e-4 rad under the angles. cos θ_i are the
    singular values of aᵀb (Björck & Golub 1973), sin θ_i those of b − a aᵀb; an angle below π/4
    is taken from its sine, where arccos loses half the digits (Knyazev & Argentati 2002).

    Returns:
        The k angles (float64), ascending.
    """
    qa, qb = torch.linalg.qr(a.double())[0], torch.linalg.qr(b.double())[0]
    proj = qa.T @ qb
    from_cos = torch.arccos(torch.linalg.svdvals(proj).clamp(0.0, 1.0))
    from_sin = torch.arcsin(torch.linalg.svdvals(qb - qa @ proj).clamp(0.0, 1.0)).flip(0)
    return torch.where(from_sin < math.pi / 4, from_sin, from_cos)


def grassmann_distances(a: Tensor, b: Tensor) -> dict[str, float]:
    """Distances between span a and span b (orthonormal d × k): geodesic ‖θ‖, chordal ‖sin θ‖, largest angle.

    Returns:
        ``{"geodesic", "chordal", "max_angle"}`` (radians); 0 when the subspaces coincide.
    """
    theta = principal_angles(a, b)
    return dict(geodesic=float(theta.norm()), chordal=float(torch.sin(theta).norm()), max_angle=float(theta.max()))


def _mask_basis_angles(q: Tensor, idx: Tensor) -> Tensor:
    cos = torch.linalg.svdvals(q[idx].double()).clamp(0.0, 1.0)
    return torch.arccos(cos)


def mask_overlap(q: Tensor, idx: Tensor) -> dict[str, float]:
    r"""Overlap ‖M Q‖²_F / k of span Q (d × k orthonormal) with the coordinate subspace of mask ``idx`` (k indices).

    ‖M Q‖²_F = Σ_{i ∈ mask} Σ_j Q_ij² = Σ cos² θ_i over the principal angles, so the overlap is 1
    when the subspaces coincide and k/d in expectation for a uniformly random Q.

    Args:
        q: Orthonormal basis (d, k).
        idx: The mask's k parameter indices (``magnitude_mask``).

    Returns:
        ``{"overlap", "geodesic", "chordal", "max_angle"}``.

    Raises:
        ValueError: If the mask's size differs from Q's number of columns.
    """
    k = q.shape[1]
    if len(idx) != k:
        raise ValueError(f"the mask has {len(idx)} entries but Q has {k} columns; use k of each")
    theta = _mask_basis_angles(q, idx)
    overlap = float(q[idx].double().square().sum()) / k
    return dict(overlap=overlap, geodesic=float(theta.norm()), chordal=float(torch.sin(theta).norm()),
                max_angle=float(theta.max()))


def mask_metrics(w: Tensor, ks: list[int], sketch: tuple[Tensor, Tensor],
                 exact: tuple[Tensor, Tensor] | None = None) -> tuple[dict[str, float], dict]:
    r"""The masks study's record of one Hessian: mask overlaps of the top-k eigenspaces, and the sketch's errors.

    For each k: the overlap and Grassmann distances (``mask_overlap``) of the sketched top-k
    eigenspace Q̃ with the k largest-|w_i| mask, a random subspace's expected overlap k/d, and,
    given the exact eigenpairs, the same for the exact Q with the sketch's errors: eigenvalues
    max_i |λ̃_i − λ_i|/|λ_i| over the top k, subspace the geodesic distance between Q and Q̃.

    Args:
        w: The parameters (d,).
        ks: Sizes k (each ≤ the number of eigenpairs given).
        sketch: Sketched (eigenvalues, eigenvectors), by decreasing magnitude.
        exact: Exact (eigenvalues, eigenvectors), or None when H is too large to form.

    Returns:
        (metrics ``{name: value}``: ``overlap/{exact,sketch,random}/k<k>``,
        ``geodesic/{exact,sketch}/k<k>``, ``sketch/eig_rel_error/k<k>``,
        ``sketch/subspace_geodesic/k<k>``, ``sketch/top_eigenvalue`` and ``top_eigenvalue`` (exact);
        the exact ones only with ``exact``), and the record ``{k: {"sketch", ["exact",
        "eig_rel_error", "subspace"]}}``).
    """
    svals, svecs = sketch
    d = w.numel()
    metrics = {"sketch/top_eigenvalue": float(svals[0])}
    if exact is not None:
        metrics["top_eigenvalue"] = float(exact[0][0])
    record = {}
    for k in ks:
        idx = magnitude_mask(w, k)
        rec = {"sketch": mask_overlap(svecs[:, :k], idx)}
        metrics.update({f"overlap/sketch/k{k}": rec["sketch"]["overlap"],
                        f"geodesic/sketch/k{k}": rec["sketch"]["geodesic"], f"overlap/random/k{k}": k / d})
        if exact is not None:
            vals, vecs = exact
            rec["exact"] = mask_overlap(vecs[:, :k], idx)
            rec["eig_rel_error"] = float(((svals[:k].double() - vals[:k].double()).abs() / vals[:k].double().abs())
                                         .max())
            rec["subspace"] = grassmann_distances(vecs[:, :k], svecs[:, :k])
            metrics.update({f"overlap/exact/k{k}": rec["exact"]["overlap"],
                            f"geodesic/exact/k{k}": rec["exact"]["geodesic"],
                            f"sketch/eig_rel_error/k{k}": rec["eig_rel_error"],
                            f"sketch/subspace_geodesic/k{k}": rec["subspace"]["geodesic"]})
        record[k] = rec
    return metrics, record


# --------------------------------------------------------------------------- one call for experiments


def curvature_summary(model: nn.Module, loss_fn: Callable[[Tensor, Tensor], Tensor], data: tuple[Tensor, Tensor], *,
                      top_eigs: int = 0, mask_overlap_k: int = 0, seed: int = 0) -> dict:
    """Top Hessian eigenvalues and/or the top-k eigenspace's overlap with the top-k magnitude mask, at w.

    The recording that ``num_top_eigs`` and ``mask_overlap_k`` of the experiments ask for, at
    the parameters where λ̂ is measured. Lanczos (``top_eigs_lanczos``) on the full-data Hessian.

    Args:
        model: The model at w.
        loss_fn: Mean loss.
        data: ``(x, y)``, the full data.
        top_eigs: k for the top eigenvalues (0: skip).
        mask_overlap_k: k for the overlap (0: skip).
        seed: Lanczos start vector.

    Returns:
        ``top_eigenvalues`` (list, by decreasing magnitude) and/or ``mask_overlap`` (the
        ``mask_overlap`` dict with ``k``).
    """
    H = hessian_operator(model, loss_fn, data)
    out: dict = {}
    k_max = max(top_eigs, mask_overlap_k)
    if k_max == 0:
        return out
    vals, vecs = top_eigs_lanczos(H, k_max, seed=seed)
    if top_eigs:
        out["top_eigenvalues"] = [float(v) for v in vals[:top_eigs]]
    if mask_overlap_k:
        idx = magnitude_mask(flat_params(model).to(vecs.device), mask_overlap_k)
        out["mask_overlap"] = {"k": mask_overlap_k, **mask_overlap(vecs[:, :mask_overlap_k], idx)}
    return out


# --------------------------------------------------------------------------- a known answer


class Quadratic(nn.Module):
    r"""L(w) = ½ wᵀ A w with A = U diag(λ) Uᵀ: a model whose Hessian is A, for checking the tools.

    Args:
        eigenvalues: λ (d,).
        rotation: U (d, d) orthogonal; None for the identity (eigenvectors along the axes).
        w: The point w (default zero); the Hessian does not depend on it.
    """

    def __init__(self, eigenvalues: Tensor, rotation: Tensor | None = None, w: Tensor | None = None) -> None:
        super().__init__()
        u = torch.eye(len(eigenvalues)) if rotation is None else rotation
        self.register_buffer("a", (u * eigenvalues) @ u.T)
        self.w = nn.Parameter(torch.zeros(len(eigenvalues)) if w is None else w.clone())

    @staticmethod
    def loss_fn(output: Tensor, target: Tensor) -> Tensor:
        """The potential's value (the output ignores the data).

        Returns:
            The mean of ``output`` over the batch, a scalar.
        """
        return output.mean()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - L(w) for each sample
        return (0.5 * self.w @ (self.a @ self.w)).expand(x.shape[0])
