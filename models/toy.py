r"""Toy models whose learning coefficient λ is known exactly: the estimator's ground truth.

* :class:`MinimallySingular`: :math:`K(w) = \sum_{i \le r} w_i^2` among d parameters; the Hessian
  has rank r and :math:`\lambda = r/2` (Watanabe 2009, *Algebraic Geometry and Statistical
  Learning Theory*, Thm 6.1 for the regular part; the remaining d − r directions are flat).
* :class:`NormalCrossing`: :math:`K(w) = \prod_i w_i^{2k_i}`; with a prior positive at 0,
  :math:`\lambda = \min_i 1/(2k_i)` with multiplicity the number of minimisers (Watanabe 2009,
  §2.4 and Thm 6.1; normal crossing form of the resolution theorem).
* :class:`ReducedRankRegression`: :math:`y = BAx + \text{noise}` with A of shape H×M and B of shape
  N×H and a true map of rank r; λ from Aoyagi & Watanabe (2005), "Stochastic complexities of reduced
  rank regression in Bayesian estimation", *Neural Networks* 18(7), Theorem 1 (:func:`rrr_lambda`).

Potential models (the first two) ignore their input: their "data" only fixes n and the batch
shape (:func:`toy_data`), and ``model.loss_fn`` turns the output into :math:`K(w)`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = [
    "MinimallySingular",
    "NormalCrossing",
    "PolynomialRegression",
    "ReducedRankRegression",
    "half_squared_error",
    "rrr_data",
    "rrr_lambda",
    "toy_data",
]


def toy_data(n: int) -> tuple[Tensor, Tensor]:
    """Placeholder samples for the potential models, which ignore their input.

    Args:
        n: Number of samples (fixes nβ = n/log n by default).

    Returns:
        ``(x, y)`` of shapes (n, 1) and (n,), all zeros.
    """
    return torch.zeros(n, 1), torch.zeros(n)


def _mean_output(output: Tensor, target: Tensor) -> Tensor:
    return output.mean()


class MinimallySingular(nn.Module):
    r"""Minimally singular potential :math:`K(w) = \sum_{i \le r} w_i^2`, d parameters, λ = r/2.

    Args:
        d: Number of parameters.
        r: Number of parameters the loss depends on (the Hessian rank), 0 ≤ r ≤ d.

    Raises:
        ValueError: If r is not in [0, d].
    """

    loss_fn = staticmethod(_mean_output)

    def __init__(self, d: int, r: int) -> None:
        super().__init__()
        if not 0 <= r <= d:
            raise ValueError(f"r must be in [0, d={d}], got {r}")
        self.r = r
        self.w = nn.Parameter(torch.zeros(d))

    @property
    def true_lambda(self) -> tuple[float, int]:
        """(λ, multiplicity) = (r/2, 1)."""
        return self.r / 2, 1

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - K(w) for each sample
        return (self.w[: self.r] ** 2).sum().expand(x.shape[0])


class NormalCrossing(nn.Module):
    r"""Normal crossing potential :math:`K(w) = \prod_i w_i^{2k_i}`, :math:`\lambda = \min_i 1/(2k_i)`.

    Args:
        powers: The exponents :math:`k_i \ge 1`, one per parameter in the product.
        extra_dims: Further parameters that the loss ignores (flat directions).

    Raises:
        ValueError: If a power is not a positive integer.
    """

    loss_fn = staticmethod(_mean_output)

    def __init__(self, powers: tuple[int, ...] | list[int], extra_dims: int = 0) -> None:
        super().__init__()
        if not powers or any(int(k) != k or k < 1 for k in powers):
            raise ValueError(f"powers must be positive integers, got {powers!r}")
        self.powers = tuple(int(k) for k in powers)
        self.register_buffer("exponents", 2 * torch.tensor(self.powers, dtype=torch.float32))
        self.w = nn.Parameter(torch.zeros(len(self.powers) + extra_dims))

    @property
    def true_lambda(self) -> tuple[float, int]:
        """(λ, multiplicity): min 1/(2k_i) and how many i attain it."""
        k_max = max(self.powers)
        return 1 / (2 * k_max), self.powers.count(k_max)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102 - K(w) for each sample
        core = self.w[: len(self.powers)]
        return torch.prod(core**self.exponents).expand(x.shape[0])


def rrr_lambda(input_dim: int, hidden_dim: int, output_dim: int, rank: int) -> tuple[float, int]:
    r"""λ and multiplicity of reduced rank regression (Aoyagi & Watanabe 2005, Theorem 1).

    With M = input_dim, H = hidden_dim, N = output_dim and true rank r:

    1. If N + r ≤ M + H, M + r ≤ N + H and H + r ≤ M + N:
       :math:`\lambda = [2(H+r)(M+N) - (M-N)^2 - (H+r)^2]/8` with m = 1 when M + H + N + r is even,
       and :math:`[\ldots + 1]/8` with m = 2 when it is odd.
    2. If M + H < N + r: :math:`\lambda = (HM - Hr + Nr)/2`, m = 1.
    3. If N + H < M + r: :math:`\lambda = (HN - Hr + Mr)/2`, m = 1.
    4. If M + N < H + r: :math:`\lambda = MN/2`, m = 1.

    Args:
        input_dim: M.
        hidden_dim: H.
        output_dim: N.
        rank: r, 0 ≤ r ≤ min(M, H, N).

    Returns:
        (λ, multiplicity).

    Raises:
        ValueError: If the rank is impossible for the shapes.

    >>> rrr_lambda(6, 3, 5, 1)
    (9.0, 2)
    >>> rrr_lambda(5, 5, 5, 0)
    (9.5, 2)
    """
    m_, h, n_, r = input_dim, hidden_dim, output_dim, rank
    if not 0 <= r <= min(m_, h, n_):
        raise ValueError(f"rank must be in [0, min(M, H, N) = {min(m_, h, n_)}], got {r}")
    if m_ + h < n_ + r:
        return (h * m_ - h * r + n_ * r) / 2, 1
    if n_ + h < m_ + r:
        return (h * n_ - h * r + m_ * r) / 2, 1
    if m_ + n_ < h + r:
        return m_ * n_ / 2, 1
    core = 2 * (h + r) * (m_ + n_) - (m_ - n_) ** 2 - (h + r) ** 2
    if (m_ + h + n_ + r) % 2 == 0:
        return core / 8, 1
    return (core + 1) / 8, 2


def half_squared_error(output: Tensor, target: Tensor) -> Tensor:
    r"""Gaussian negative log-likelihood up to a constant, unit noise, batch mean.

    Returns:
        The scalar :math:`\tfrac12\lVert y - f(x)\rVert^2` (summed over the last dimension), averaged over the batch.
    """
    return 0.5 * ((output - target) ** 2).sum(dim=-1).mean()


class ReducedRankRegression(nn.Module):
    r"""Reduced rank regression :math:`f(x) = BAx`, a two-layer linear network.

    Built at a true parameter on the most singular stratum: the true map :math:`B_0A_0` has
    rank r and *each* factor has rank exactly r (rows of A and columns of B beyond r are zero),
    so the local λ at this point is Aoyagi & Watanabe's λ.

    Args:
        input_dim: M.
        hidden_dim: H.
        output_dim: N.
        rank: r.
        singular_values: The r singular values of the true map (default all 1).
        generator: Source of the random singular vectors.

    Raises:
        ValueError: If the rank is impossible or the number of singular values is not r.
    """

    loss_fn = staticmethod(half_squared_error)

    def __init__(
        self,
        input_dim: int,
        hidden_dim: int,
        output_dim: int,
        rank: int,
        singular_values: list[float] | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.shape = (input_dim, hidden_dim, output_dim)
        self.rank = rank
        rrr_lambda(input_dim, hidden_dim, output_dim, rank)  # validates the rank
        s = torch.ones(rank) if singular_values is None else torch.tensor(singular_values, dtype=torch.float32)
        if s.shape != (rank,):
            raise ValueError(f"singular_values must have {rank} entries, got {len(s)}")
        u, _ = torch.linalg.qr(torch.randn(output_dim, output_dim, generator=generator))
        v, _ = torch.linalg.qr(torch.randn(input_dim, input_dim, generator=generator))
        root = s.sqrt()
        a = torch.zeros(hidden_dim, input_dim)
        b = torch.zeros(output_dim, hidden_dim)
        a[:rank] = root[:, None] * v[:, :rank].T
        b[:, :rank] = u[:, :rank] * root[None, :]
        self.A = nn.Linear(input_dim, hidden_dim, bias=False)
        self.B = nn.Linear(hidden_dim, output_dim, bias=False)
        with torch.no_grad():
            self.A.weight.copy_(a)
            self.B.weight.copy_(b)

    @property
    def true_lambda(self) -> tuple[float, int]:
        """(λ, multiplicity) from :func:`rrr_lambda`."""
        return rrr_lambda(*self.shape, self.rank)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self.B(self.A(x))


@torch.no_grad()
def rrr_data(model: ReducedRankRegression, n: int, noise_std: float = 1.0, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Samples x ~ N(0, I), y = f(x) + N(0, noise_std² I) from the model as teacher.

    Args:
        model: The teacher.
        n: Number of samples.
        noise_std: Output noise; 1 matches :func:`half_squared_error` as the exact likelihood.
        seed: Seed of the samples.

    Returns:
        ``(x, y)`` of shapes (n, M) and (n, N).
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, model.shape[0], generator=g)
    y = model(x) + noise_std * torch.randn(n, model.shape[2], generator=g)
    return x, y



class PolynomialRegression(nn.Module):
    r"""Normal crossing as a regression: :math:`f(x; w) = x \prod_i w_i^{k_i}`, evaluated at :math:`w^* = 0`.

    With inputs :math:`x \sim \mathcal N(0, 1)` and targets that do not depend on x (pure noise),
    :math:`K(w) = \tfrac12 \mathbb E[x^2] \prod_i w_i^{2k_i}`, a normal crossing: :math:`\lambda =
    \min_i 1/(2k_i)` over :math:`k_i \ge 1` (Watanabe 2009, §2.4). With finitely many noisy
    targets :math:`w^* = 0` is not the empirical minimiser, and at a singular point the Hessian
    at :math:`w^*` vanishes or is indefinite: the hard inputs for step-size calibration. A power
    :math:`k_i = 0` is a factor :math:`w_i^0 = 1` whose second derivative at 0 autograd gives as NaN.

    Args:
        powers: The exponents :math:`k_i \ge 0`.

    Raises:
        ValueError: If a power is not a non-negative integer, or none is positive.
    """

    loss_fn = staticmethod(half_squared_error)

    def __init__(self, powers: tuple[int, ...] | list[int]) -> None:
        super().__init__()
        if not powers or any(int(k) != k or k < 0 for k in powers) or max(powers) < 1:
            raise ValueError(f"powers must be non-negative integers, at least one positive, got {powers!r}")
        self.powers = tuple(int(k) for k in powers)
        self.register_buffer("exponents", torch.tensor(self.powers, dtype=torch.float32))
        self.w = nn.Parameter(torch.zeros(len(self.powers)))

    @property
    def true_lambda(self) -> tuple[float, int]:
        r"""(λ, multiplicity) of the normal crossing :math:`\prod_i w_i^{2k_i}`."""
        k_max = max(self.powers)
        return 1 / (2 * k_max), self.powers.count(k_max)

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return x * torch.prod(self.w**self.exponents)
