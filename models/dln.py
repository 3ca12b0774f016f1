"""Deep linear networks (DLNs), their teachers, their synthetic data and their true λ.

A DLN with input dimension H₁ and layer widths (H₂, …, H_{N+1}) computes

    f(x; w) = W_N ⋯ W₂ W₁ x,    W_k ∈ ℝ^{H_{k+1} × H_k},  no biases,

so it has d = Σ_k H_k H_{k+1} parameters but only expresses the single matrix W = W_N ⋯ W₁.
For realisable data y = W* x the set of true parameters {w : W_N ⋯ W₁ = W*} is singular and its
learning coefficient λ depends only on r = rank W* and the widths (Aoyagi 2024, Theorem 1), which is
what makes the DLN the paper's large-scale ground truth (Furman & Lau 2024, §4).

Contents:

* ``DLN``: the network as an ``nn.Module`` (``nn.Linear(bias=False)`` layers).
* ``make_true_params``: teacher weights w*, by ``method`` in ``TRUE_PARAM_METHODS``.
* ``true_lambda``: Aoyagi's λ and multiplicity m for a rank and set of widths.
* ``dln_ranks``: rank of the product W* and of each layer.
* ``SyntheticDLNData``: x generated on the fly from (seed, sample index), y = W* x, so memory stays
  O(batch × H₁) however large n is.

References:
    M. Aoyagi (2024). Consideration on the learning efficiency of multiple-layered neural networks
    with linear units. Neural Networks 172, 106132. https://doi.org/10.1016/j.neunet.2024.106132
    M. Aoyagi, S. Watanabe (2005). Stochastic complexities of reduced rank regression in Bayesian
    estimation. Neural Networks 18(7), 924–933.
    Z. Furman, E. Lau (2024). Estimating the local learning coefficient at scale. arXiv:2402.03698.
"""

import functools
import math
from collections.abc import Sequence
from fractions import Fraction

import torch
import torch.nn as nn

__all__ = [
    "DLN",
    "INPUT_DISTS",
    "TRUE_PARAM_METHODS",
    "SyntheticDLNData",
    "dln_ranks",
    "make_true_params",
    "true_lambda",
]

TRUE_PARAM_METHODS = ("random", "zero", "rand_rank", "rand_rank_sv", "low_rank")
INPUT_DISTS = ("uniform", "unit_ball")


def _check_dims(input_dim: int, layer_widths: Sequence[int]) -> list[int]:
    """Return ``[H₁, …, H_{N+1}]`` after checking every entry is a positive int.

    Returns:
        ``[input_dim, *layer_widths]``.

    Raises:
        ValueError: If ``layer_widths`` is empty or an entry is not a positive int.
    """
    dims = [input_dim, *layer_widths]
    if len(dims) < 2:
        raise ValueError(f"layer_widths must name at least one layer, got {list(layer_widths)!r}")
    for h in dims:
        if isinstance(h, bool) or not isinstance(h, int) or h < 1:
            raise ValueError(
                f"input_dim and layer_widths must be positive ints, got input_dim={input_dim!r}, "
                f"layer_widths={list(layer_widths)!r}"
            )
    return dims


class DLN(nn.Module):
    """Bias-free deep linear network f(x) = W_N ⋯ W₁ x.

    Args:
        input_dim: H₁, the input dimension.
        layer_widths: (H₂, …, H_{N+1}); the last entry is the output dimension.

    Raises:
        ValueError: If a dimension is not a positive int or ``layer_widths`` is empty.

    Example:
        >>> model = DLN(3, [4, 2])
        >>> model(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
        >>> sum(p.numel() for p in model.parameters())  # 3·4 + 4·2
        20
    """

    def __init__(self, input_dim: int, layer_widths: Sequence[int]) -> None:
        super().__init__()
        dims = _check_dims(input_dim, list(layer_widths))
        self.input_dim = dims[0]
        self.layer_widths = dims[1:]
        self.layers = nn.ModuleList(
            nn.Linear(h_in, h_out, bias=False) for h_in, h_out in zip(dims[:-1], dims[1:], strict=True)
        )

    @property
    def output_dim(self) -> int:
        """H_{N+1}, the output dimension."""
        return self.layer_widths[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply W₁, …, W_N in turn: cost O(batch · Σ_k H_k H_{k+1}), never forms W.

        Args:
            x: Inputs of shape ``(batch, H₁)``.

        Returns:
            Outputs of shape ``(batch, H_{N+1})``.
        """
        for layer in self.layers:
            x = layer(x)
        return x

    def matrices(self) -> list[torch.Tensor]:
        """Detached layer matrices [W₁, …, W_N], W_k of shape ``(H_{k+1}, H_k)``.

        Returns:
            The N weights, detached but sharing storage with the layers.
        """
        return [layer.weight.detach() for layer in self.layers]

    def product(self) -> torch.Tensor:
        """The end-to-end matrix W = W_N ⋯ W₁ of shape ``(H_{N+1}, H₁)``, without autograd.

        Returns:
            W, a new tensor.
        """
        return _product(self.matrices())

    @torch.no_grad()
    def set_matrices(self, matrices: Sequence[torch.Tensor]) -> "DLN":
        """Copy [W₁, …, W_N] into the layers (e.g. a teacher from ``make_true_params``).

        Args:
            matrices: One tensor per layer, shapes as in ``matrices()``.

        Returns:
            ``self``, for chaining.

        Raises:
            ValueError: If the number or shapes of the matrices do not match the layers.
        """
        shapes = [tuple(layer.weight.shape) for layer in self.layers]
        given = [tuple(m.shape) for m in matrices]
        if given != shapes:
            raise ValueError(f"matrices have shapes {given}, expected {shapes}")
        for layer, m in zip(self.layers, matrices, strict=True):
            layer.weight.copy_(m)
        return self


def _product(matrices: Sequence[torch.Tensor]) -> torch.Tensor:
    """W_N ⋯ W₁ for ``matrices = [W₁, …, W_N]`` (cheapest multiplication order).

    Returns:
        The product, a new tensor (a copy when there is one matrix).
    """
    if len(matrices) == 1:
        return matrices[0].clone()
    return torch.linalg.multi_dot(list(reversed(matrices)))


def dln_ranks(matrices: Sequence[torch.Tensor]) -> tuple[int, list[int]]:
    """Numerical rank of the product W = W_N ⋯ W₁ and of each layer W_k.

    Singular values are computed in float64; one counts as zero below σ_max · max(shape) · eps,
    with eps the machine epsilon of the *input* dtype (times N for the product, whose rounding
    errors add up over the N factors), so float32 teachers of exact rank r report r.

    Args:
        matrices: [W₁, …, W_N], W_k of shape ``(H_{k+1}, H_k)``.

    Returns:
        ``(rank W, [rank W₁, …, rank W_N])``.

    Example:
        >>> a, b = torch.ones(2, 3), torch.eye(2)
        >>> dln_ranks([a, b])
        (1, [1, 2])
    """
    eps = torch.finfo(matrices[0].dtype).eps
    m64 = [m.detach().to(torch.float64) for m in matrices]

    def rank(m: torch.Tensor, factors: int) -> int:
        return int(torch.linalg.matrix_rank(m, rtol=factors * max(m.shape) * eps))

    return rank(_product(m64), len(m64)), [rank(m, 1) for m in m64]


def true_lambda(rank: int, input_dim: int, layer_widths: Sequence[int]) -> tuple[float, int]:
    """Learning coefficient λ and multiplicity m of a DLN at a true product of rank r.

    Aoyagi (2024), Theorem 1. Let H₁ = ``input_dim``, (H₂, …, H_{N+1}) = ``layer_widths`` and
    M_k = H_k − r. There is a unique Σ ⊂ {1, …, N+1} with #Σ = ℓ + 1 (ℓ ≥ 1) such that

        max_{σ∈Σ} M_σ < min_{k∉Σ} M_k,   Σ_{σ∈Σ} M_σ ≥ ℓ · max_{σ∈Σ} M_σ,
        Σ_{σ∈Σ} M_σ < ℓ · min_{k∉Σ} M_k

    (Σ consists of the ℓ + 1 smallest M_k). With S = Σ_{σ∈Σ} M_σ, a = S − ℓ(⌈S/ℓ⌉ − 1) ∈ {1, …, ℓ}:

        λ = (−r² + r(H₁ + H_{N+1}))/2 + a(ℓ − a)/(4ℓ) − ℓ(ℓ − 1)/4 · (S/ℓ)²
            + ½ Σ_{σ<τ ∈ Σ} M_σ M_τ,
        m = 1 if a = ℓ, else 2.

    One layer (N = 1) gives the regular value λ = H₁H₂/2 = d/2; two layers give the
    reduced-rank-regression formula of Aoyagi & Watanabe (2005).

    Args:
        rank: r = rank(W*), with 0 ≤ r ≤ min_k H_k.
        input_dim: H₁.
        layer_widths: (H₂, …, H_{N+1}).

    Returns:
        ``(λ, m)``.

    Raises:
        ValueError: If a width is not a positive int or r is outside [0, min_k H_k].

    Example:
        >>> true_lambda(3, 7, [9, 6, 5])
        (16.5, 2)
        >>> true_lambda(0, 5, [5, 5])  # reduced-rank regression 5→5→5 at the origin
        (9.5, 2)
    """  # noqa: DOC501 - the AssertionError guards an internal invariant (Σ always exists), not an API error
    dims = _check_dims(input_dim, list(layer_widths))
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= min(dims):
        raise ValueError(f"rank must be an int in [0, {min(dims)}] (the narrowest width), got {rank!r}")
    r = rank
    ms = sorted(h - r for h in dims)
    for size in range(2, len(ms) + 1):
        sigma, rest = ms[:size], ms[size:]
        ell, s = size - 1, sum(ms[:size])
        if rest and not (sigma[-1] < rest[0] and s < ell * rest[0]):
            continue
        if s >= ell * sigma[-1]:
            break
    else:  # pragma: no cover - Aoyagi (2024) proves Σ exists
        raise AssertionError(f"no index set Σ found for M = {ms}")
    a = s - ell * (math.ceil(s / ell) - 1)
    pairs = sum(sigma[i] * sigma[j] for i in range(size) for j in range(i + 1, size))
    # Exact rational arithmetic: λ is a multiple of 1/(8ℓ), free of float round-off.
    lam = (
        Fraction(-r * r + r * (dims[0] + dims[-1]), 2)
        + Fraction(a * (ell - a), 4 * ell)
        - Fraction((ell - 1) * s * s, 4 * ell)
        + Fraction(pairs, 2)
    )
    return float(lam), 1 if a == ell else 2


def _haar_orthogonal(
    n: int, generator: torch.Generator, cols: int | None = None, device: torch.device | str | None = None
) -> torch.Tensor:
    """The first ``cols`` (default n) columns of a Haar-random n × n orthogonal matrix, in float64.

    QR of a Gaussian with the sign fix. The Gaussian is drawn on the generator's device (the CPU
    in the experiments, so a seed gives the same teacher everywhere); the QR runs on ``device``
    and only on the kept columns: Gram–Schmidt makes the first k columns of Q depend only on the
    first k columns of the Gaussian, so a thin QR gives the same columns at a fraction of the cost
    (seconds instead of minutes for 5000 × 5000 with 500 columns on a CPU).

    Returns:
        The (n, cols) float64 matrix with orthonormal columns, on ``device`` (default the generator's).
    """
    cols = n if cols is None else cols
    gauss = torch.randn(n, n, generator=generator, dtype=torch.float64, device=generator.device)[:, :cols]
    q, r = torch.linalg.qr(gauss.to(device if device is not None else gauss.device))
    return q * torch.sign(torch.diagonal(r)).masked_fill(torch.diagonal(r) == 0, 1.0)


def _with_rank(
    shape: tuple[int, int], rank: int, singular_values: torch.Tensor, generator: torch.Generator
) -> torch.Tensor:
    """U diag(s) Vᵀ with Haar-random U, V and s = ``singular_values[:rank]``.

    Returns:
        The float64 matrix of ``shape``, of rank ``rank`` when those singular values are nonzero.
    """
    u = _haar_orthogonal(shape[0], generator, rank)
    v = _haar_orthogonal(shape[1], generator, rank)
    return (u * singular_values[:rank].to(torch.float64)) @ v.T


def _randint(low: int, high: int, generator: torch.Generator) -> int:
    """Uniform int in [low, high).

    Returns:
        An int k with low ≤ k < high, drawn from ``generator``.
    """
    return int(torch.randint(low, high, (1,), generator=generator))


def make_true_params(
    input_dim: int,
    layer_widths: Sequence[int],
    method: str,
    *,
    prop_rank_reduce: float = 0.5,
    mean: float = 0.0,
    std: float = 5.0,
    rank: int | None = None,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> list[torch.Tensor]:
    """Teacher weights w* = [W₁, …, W_N] (float32, W_k of shape ``(H_{k+1}, H_k)``).

    Methods:
    * ``random``: W_k entries iid N(0, 1/H_k), so ‖W x‖ stays O(‖x‖) at any depth.
    * ``zero``: every W_k = 0 (r = 0).
    * ``rand_rank``: ``random``, then each W_k, with probability ``prop_rank_reduce``, is truncated
      (SVD) to a uniformly random rank in {0, …, min(shape) − 1}. Most layers keep full rank, so w*
      is usually *not* on the most singular stratum (see ``low_rank``).
    * ``rand_rank_sv``: each W_k = U diag(|s|) Vᵀ with Haar-random U, V, s_i ~ N(``mean``, ``std``²)
      and rank uniform in {0, …, min(shape) − 1} with probability ``prop_rank_reduce``, else full.
    * ``low_rank``: w* on the most singular stratum of rank r, where Aoyagi's λ is the local λ:
      W_k = Q_{k+1} O_k Q_kᵀ with Q_k ∈ ℝ^{H_k × r} Haar-random orthonormal columns and O_k ∈ ℝ^{r × r}
      Haar-random orthogonal, so every W_k has rank exactly r and the product Q_{N+1} O_N ⋯ O₁ Q₁ᵀ
      has rank r. ``rank=None`` draws r uniformly from {0, …, min_k H_k}. λ is the same at every
      point of the stratum; this well-conditioned one (all nonzero singular values 1) is where we
      found SGLD to mix fastest. Other points follow by the symmetries W_k → A_k W_k A_{k−1}⁻¹.

    Args:
        input_dim: H₁.
        layer_widths: (H₂, …, H_{N+1}).
        method: One of ``TRUE_PARAM_METHODS``.
        prop_rank_reduce: Probability that a layer's rank is reduced (``rand_rank``, ``rand_rank_sv``).
        mean: Mean of the singular-value Gaussian (``rand_rank_sv``).
        std: Standard deviation of the singular-value Gaussian (``rand_rank_sv``).
        rank: r for ``low_rank``; ignored by the other methods.
        generator: The only source of randomness. Its draws do not depend on ``device``, so a
            CPU generator gives the same teacher on every device (up to the QR's rounding).
        device: Where the matrices are built and returned; default the generator's device.
            ``low_rank`` does its QRs there (at 5000-wide layers a GPU takes well under a second).

    Returns:
        The layer matrices [W₁, …, W_N], on ``device``.

    Raises:
        ValueError: If ``method`` is unknown, ``prop_rank_reduce`` is outside [0, 1], ``std`` < 0,
            or ``rank`` is outside [0, min_k H_k].

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ws = make_true_params(6, [5, 4], "low_rank", rank=2, generator=g)
        >>> dln_ranks(ws)
        (2, [2, 2])
    """
    dims = _check_dims(input_dim, list(layer_widths))
    if method not in TRUE_PARAM_METHODS:
        raise ValueError(f"unknown true_param method {method!r}; choose from {list(TRUE_PARAM_METHODS)}")
    if not 0.0 <= prop_rank_reduce <= 1.0:
        raise ValueError(f"prop_rank_reduce must be in [0, 1], got {prop_rank_reduce!r}")
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    shapes = [(h_out, h_in) for h_in, h_out in zip(dims[:-1], dims[1:], strict=True)]
    g = generator

    device = torch.device(device) if device is not None else g.device
    if method == "zero":
        return [torch.zeros(s, device=device) for s in shapes]
    if method == "low_rank":
        if rank is None:
            rank = _randint(0, min(dims) + 1, g)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank <= min(dims):
            raise ValueError(f"rank must be an int in [0, {min(dims)}] (the narrowest width), got {rank!r}")
        qs = [_haar_orthogonal(h, g, rank, device) for h in dims]
        return [(qs[k + 1] @ _haar_orthogonal(rank, g, device=device) @ qs[k].T).float() for k in range(len(shapes))]

    out = []
    for h_out, h_in in shapes:
        full = min(h_out, h_in)
        reduce = float(torch.rand(1, generator=g)) < prop_rank_reduce
        if method == "random":
            out.append(torch.randn(h_out, h_in, generator=g) / math.sqrt(h_in))
        elif method == "rand_rank":
            w = torch.randn(h_out, h_in, generator=g, dtype=torch.float64) / math.sqrt(h_in)
            if reduce:
                u, s, vh = torch.linalg.svd(w, full_matrices=False)
                k = _randint(0, full, g)
                w = (u[:, :k] * s[:k]) @ vh[:k]
            out.append(w.float())
        else:  # rand_rank_sv
            k = _randint(0, full, g) if reduce else full
            s = (mean + std * torch.randn(full, generator=g, dtype=torch.float64)).abs()
            out.append(_with_rank((h_out, h_in), k, s, g).float())
    return [w.to(device) for w in out]


_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x · c) mod 2³² for int64 x ∈ [0, 2³²): split x into 16-bit halves so no product passes 2⁴⁹.

    Returns:
        (x · c) mod 2³², int64 of x's shape.
    """
    lo, hi = x & 0xFFFF, x >> 16
    return (lo * c + (((hi * c) & 0xFFFF) << 16)) & _MASK32


def _hash32(x: torch.Tensor) -> torch.Tensor:
    """A bijective 32-bit integer mixer (xorshift-multiply, "lowbias32" constants by C. Wellons).

    Works on int64 tensors holding values in [0, 2³²); every intermediate stays below 2⁴⁹, so the
    result is exact integer arithmetic, the same on every device.

    Returns:
        The mixed values, int64 in [0, 2³²), of x's shape.
    """
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def _key(seed: int, stream: int) -> int:
    """32-bit key for one random stream of one seed.

    Returns:
        The key, an int in [0, 2³²).
    """
    k = _hash32(torch.tensor([(seed & _MASK32) ^ 0x9E3779B9], dtype=torch.int64))
    k = _hash32(k ^ (((seed >> 32) + 0x632BE5AB * (stream + 1)) & _MASK32))
    return int(k)


@functools.lru_cache(maxsize=64)
def _hash_int(x: int) -> int:
    """``_hash32`` of one Python int (a 0-d CPU tensor costs tens of µs: done once per key).

    Returns:
        ``_hash32(x)`` as an int.
    """
    return int(_hash32(torch.tensor(x, dtype=torch.int64)))


def _uniform(counter: torch.Tensor, key: int, wide: bool) -> torch.Tensor:
    """Uniform(0, 1] float32 from int64 counters ≥ 0: hash the low and high 32-bit words with ``key``.

    u = (⌊h / 2⁸⌋ + ½) · 2⁻²⁴ for the 32-bit hash h: an exact int → float conversion, then one
    correctly rounded addition (ties to even, so the largest value rounds to 1) and an exact scaling,
    each an IEEE-754 operation that CPUs and GPUs carry out identically. For counters < 2³² the map
    is a bijection, so no two counters share a value before truncation.

    Args:
        counter: Int64 counters, any shape, on any device.
        key: The stream's key (``_key``).
        wide: False if every counter is < 2³² (the high word is then 0 and hashed once, as a
            Python int, instead of per entry); decided from n by the caller, so no device value is
            ever read back to the host. Both settings give the same values.

    Returns:
        Float32 values in (0, 1], of ``counter``'s shape and device.
    """
    if wide:
        hi: torch.Tensor | int = _hash32((counter >> 32) ^ key)
    else:
        hi = _hash_int(key)
    h = _hash32(_hash32((counter & _MASK32) ^ hi) ^ key)
    return ((h >> 8).to(torch.float32) + 0.5) * 2.0**-24


class SyntheticDLNData:
    """Realisable DLN data (x_i, y_i = W* x_i), i < n, generated on the fly from (seed, i).

    x_i is a pure function of (``seed``, i): entry j comes from a counter-based hash of the counter
    i·H₁ + j (int64 arithmetic kept inside 32 bits). Memory is O(batch × H₁) whatever n is, any
    index set is produced in one vectorised call, and the same (seed, i) always gives the same x_i.

    Batches are made on the teacher's device (a GPU makes them without any transfer from the
    host), and ``uniform`` inputs are bit-identical on every device: integer hashing, exact
    conversions and single correctly rounded float32 operations leave no room for a device to
    differ. ``unit_ball`` inputs go through log, cos and sqrt, whose last bits differ between
    math libraries, so they agree across devices only to float32 round-off; so does y, a float64
    matrix product (whose summation order depends on the device and the batch) rounded to float32.

    Inputs (``input_dist``):

    * ``uniform``: each coordinate uniform on [−10, 10] (the paper's DLN experiments).
    * ``unit_ball``: uniform in the unit ball of ℝ^{H₁}: Box–Muller Gaussian direction, radius U^{1/H₁}.

    There is no output noise: y = W* x exactly, as in the paper's DLN experiment, so the MSE loss at
    the teacher is L_n(w*) = 0 and every true parameter is a global minimiser.

    Args:
        teacher: W* of shape ``(H_{N+1}, H₁)`` (e.g. ``DLN.product()``), on the device where
            batches are to be made.
        n: Number of samples.
        input_dist: One of ``INPUT_DISTS``.
        seed: Root of the input stream; different seeds give independent data sets.

    Raises:
        ValueError: If ``teacher`` is not a matrix, ``n`` < 1 or ``input_dist`` is unknown.

    Example:
        >>> data = SyntheticDLNData(torch.eye(3), n=10, seed=0)
        >>> x, y = data.get_batch(torch.tensor([0, 7, 0]))
        >>> bool((x[0] == x[2]).all() and (y == x).all()), x.shape
        (True, torch.Size([3, 3]))
    """

    def __init__(self, teacher: torch.Tensor, n: int, *, input_dist: str = "uniform", seed: int = 0) -> None:
        if teacher.ndim != 2:
            raise ValueError(f"teacher must be a (output_dim, input_dim) matrix, got shape {tuple(teacher.shape)}")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if input_dist not in INPUT_DISTS:
            raise ValueError(f"unknown input_dist {input_dist!r}; choose from {list(INPUT_DISTS)}")
        self.teacher = teacher.detach().to(torch.float32)
        self._teacher64 = self.teacher.double()
        self.device = self.teacher.device
        self.n = int(n)
        self.input_dim = teacher.shape[1]
        self.input_dist = input_dist
        self.seed = int(seed)
        self._keys = [_key(self.seed, s) for s in range(3)]
        self._wide = self.n * self.input_dim > 2**32  # some counters i·H₁ + j need their high word
        self._cols = torch.arange(self.input_dim, dtype=torch.int64, device=self.device)

    def __len__(self) -> int:
        """n, the number of samples.

        Returns:
            n.
        """
        return self.n

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """x_i for each i in ``idx``, made on the teacher's device.

        Args:
            idx: Int tensor of sample indices in [0, n), shape ``(batch,)``. Indices on the CPU
                are checked; on a GPU the check would stall the device on every batch (it reads a
                value back), so there they are trusted (``sgld`` draws them in range).

        Returns:
            Float32 inputs of shape ``(batch, H₁)``.

        Raises:
            IndexError: If an index on the CPU is outside [0, n).
        """
        idx = torch.as_tensor(idx).reshape(-1)
        if idx.device.type == "cpu" and idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise IndexError(
                f"sample indices must lie in [0, {self.n}), got min {int(idx.min())}, max {int(idx.max())}"
            )
        idx = idx.to(device=self.device, dtype=torch.int64)
        counter = idx[:, None] * self.input_dim + self._cols
        if self.input_dist == "uniform":
            return 20.0 * _uniform(counter, self._keys[0], self._wide) - 10.0
        u1, u2 = _uniform(counter, self._keys[0], self._wide), _uniform(counter, self._keys[1], self._wide)
        gauss = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * math.pi * u2)
        radius = _uniform(idx, self._keys[2], self._wide) ** (1.0 / self.input_dim)
        return gauss * (radius / gauss.norm(dim=1))[:, None]

    def get_batch(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y) for the samples ``idx``, with y = x W*ᵀ (computed in float64, stored in float32).

        Args:
            idx: Int tensor of sample indices in [0, n), shape ``(batch,)``.

        Returns:
            ``(x, y)`` of shapes ``(batch, H₁)`` and ``(batch, H_{N+1})``, on the teacher's device.
        """
        x = self.inputs(idx)
        # y in float64, then rounded: a float32 matmul takes different BLAS paths for one row and
        # for many (and on CPU and GPU), which changes y_i in the last bits. In float64 those
        # differences sit far below float32's resolution, so y_i is the same whatever the batch
        # (except in the rare case that it lies within float64 round-off of a float32 tie).
        return x, (x.double() @ self._teacher64.T).float()

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_i, y_i) for one index, so the object is a valid map-style torch ``Dataset``.

        Returns:
            ``(x_i, y_i)``; a negative i counts from the end.
        """
        i = int(i)
        if i < 0:
            i += self.n
        x, y = self.get_batch(torch.tensor([i]))
        return x[0], y[0]
