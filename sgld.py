r"""Local learning coefficient (LLC) estimation with stochastic-gradient Langevin dynamics.

The estimator of Lau et al. (2023), "Quantifying degeneracy in singular models via the learning
coefficient", arXiv:2308.12108, as used at scale by Furman & Lau (2024), "Estimating the local
learning coefficient at scale", arXiv:2409.xxxxx. Symbols and the names they have in code:

=====================  ===============  ==========================================================
symbol                 code             meaning
=====================  ===============  ==========================================================
:math:`w^*`            ``model``        the parameter whose LLC is measured (the model as given)
:math:`n`              ``n``            number of training samples
:math:`m`              ``batch_size``   minibatch size
:math:`L_n(w)`         ``loss_fn``      mean training loss over the n samples
:math:`n\beta`         ``nbeta``        inverse temperature times n; default :math:`n/\log n`
:math:`\gamma`         ``gamma``        strength of the localizing Gaussian around :math:`w^*`
:math:`\epsilon`       ``epsilon``      SGLD step size
=====================  ===============  ==========================================================

The localized, tempered posterior is

.. math::  p(w) \propto \exp\bigl(-n\beta\,L_n(w) - \tfrac{\gamma}{2}\lVert w - w^*\rVert^2\bigr),

sampled with SGLD (Welling & Teh, 2011) on minibatch losses :math:`L_m`:

.. math::  \Delta w = -\tfrac{\epsilon}{2}\bigl(n\beta\,\nabla L_m(w) + \gamma (w - w^*)\bigr)
           + \mathcal N(0, \epsilon I),

or, with a diagonal preconditioner :math:`P` (``preconditioner``; Li et al. 2016, "Preconditioned
stochastic gradient Langevin dynamics for deep neural networks", AAAI, without their
:math:`\Gamma` correction term, which vanishes for a constant :math:`P`),

.. math::  \Delta w = -\tfrac{\epsilon}{2}P\bigl(n\beta\,\nabla L_m(w) + \gamma (w - w^*)\bigr)
           + \mathcal N(0, \epsilon P),

which samples the same posterior for any constant :math:`P > 0`. A preconditioner that matches a
reparametrisation :math:`w \mapsto Aw` (:math:`P = A^2`) makes the chain in the new coordinates the
image of the chain in the old ones, so :math:`\hat\lambda` inherits the invariance of the LLC.

and the LLC estimate is the WBIC-style expectation (Watanabe, 2013)

.. math::  \hat\lambda(w^*) = n\beta\,\bigl(\mathbb E_{p}[L_n(w)] - L_n(w^*)\bigr).

As in the paper's reference code, :math:`\mathbb E_p[L_n(w)]` is by default the mean of the
minibatch losses seen along the chains, and :math:`L_n(w^*)` is computed once on the full data.

Design. All chains are one batched computation: the parameters of C chains are a (C, d) tensor,
one forward pass batched over chains (``torch.func.vmap``, or one ``bmm`` per layer for chains of
``nn.Linear`` layers) gives every chain's loss, and one backward pass every chain's gradient. A
single chain is exactly a training step on the model's own parameters. Each chain owns a
``torch.Generator`` seeded from ``numpy.random.SeedSequence(seed)``, used for its minibatch indices
and its noise, so a chain's path does not depend on how many chains run beside it: the vectorized
and the chain-by-chain runs (``chain_batch_size``) agree, and the same seed gives the same result.
The hot loop never copies to the host except every ``check_every`` steps for divergence checks.
This module depends on torch and numpy only; ``tqdm`` is imported only when a progress bar is
asked for.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn
from torch.func import vmap

__all__ = [
    "LLCResult",
    "RMSPropPreconditioner",
    "SGLD",
    "calibrate_epsilon",
    "default_nbeta",
    "ess",
    "estimate_llc",
    "llc_from_losses",
    "mala_estimate_llc",
    "rhat",
    "sgld_update_",
]

LossFn = Callable[[Tensor, Tensor], Tensor]
Data = Any  # (x, y) tensors, a torch Dataset, or an object with __len__ and get_batch(idx)
# None (P = I), "rmsprop", an RMSPropPreconditioner, {parameter name: float | Tensor} (missing names: 1),
# or one float | Tensor per trainable parameter tensor, in model.parameters() order.
Preconditioner = Any


# --------------------------------------------------------------------------------------------
# Pure pieces: temperature, update rule, statistics of a loss trace
# --------------------------------------------------------------------------------------------


def default_nbeta(n: int) -> float:
    r"""The paper's inverse temperature :math:`n\beta = n/\log n` (``itemp = 1/log n``).

    Args:
        n: Number of training samples, at least 2.

    Returns:
        :math:`n/\log n`.

    Raises:
        ValueError: If ``n < 2``.

    >>> round(default_nbeta(1000), 3)
    144.765
    """
    if n < 2:
        raise ValueError(f"n must be >= 2 for nbeta = n/log(n), got {n}")
    return n / math.log(n)


def sgld_update_(
    w: Tensor, grad: Tensor, w_star: Tensor, noise: Tensor, *, epsilon: float, nbeta: float, gamma: float,
    precond: Tensor | float | None = None,
) -> Tensor:
    r"""One SGLD step in place: :math:`w \leftarrow w - \frac\epsilon2 P(n\beta g + \gamma(w-w^*)) + \sqrt{\epsilon P}\xi`.

    Args:
        w: Parameters, updated in place.
        grad: :math:`g = \nabla L_m(w)`, gradient of the mean minibatch loss.
        w_star: Localization centre :math:`w^*`, broadcastable to ``w``.
        noise: Standard normal draw :math:`\xi` of ``w``'s shape.
        epsilon: Step size :math:`\epsilon`.
        nbeta: Inverse temperature :math:`n\beta`.
        gamma: Localization strength :math:`\gamma`.
        precond: Diagonal preconditioner :math:`P > 0`: a number, or a tensor broadcastable to
            ``w``; None means :math:`P = I`.

    Returns:
        ``w``, updated.
    """
    if precond is None or isinstance(precond, (int, float)):
        p = 1.0 if precond is None else float(precond)
        # (1 - εPγ/2) w + (εPγ/2) w* as one lerp, then - (εP nβ / 2) g + √(εP) ξ: three in-place passes over w.
        w.lerp_(w_star, 0.5 * epsilon * gamma * p)
        w.add_(grad, alpha=-0.5 * epsilon * nbeta * p)
        return w.add_(noise, alpha=math.sqrt(epsilon * p))
    w.lerp_(w_star.expand_as(w), (0.5 * epsilon * gamma) * precond)
    w.addcmul_(grad, precond, value=-0.5 * epsilon * nbeta)
    return w.addcmul_(noise, precond.sqrt(), value=math.sqrt(epsilon))


class SGLD(torch.optim.Optimizer):
    r"""SGLD on the localized tempered posterior, as a ``torch.optim.Optimizer``.

    For users who write their own loop. The parameters' values when the optimizer is built are
    :math:`w^*`. Call ``loss.backward()`` on the *mean* minibatch loss, then ``step()``. A diagonal
    preconditioner P is a parameter-group setting, e.g. for the rescaling of a two-layer network::

        SGLD([{"params": layer1.parameters(), "preconditioner": alpha**2},
              {"params": [layer2.weight], "preconditioner": alpha**-2},
              {"params": [layer2.bias]}], epsilon=1e-5, nbeta=1e3)

    Args:
        params: Parameters to sample, or parameter groups (dicts); a group's ``preconditioner``
            (a number > 0, or a tensor per parameter of its shape) overrides the default.
        epsilon: Step size :math:`\epsilon > 0`.
        nbeta: Inverse temperature :math:`n\beta > 0`.
        gamma: Localization :math:`\gamma \ge 0`.
        generator: Source of the Gaussian noise.
        preconditioner: Default diagonal preconditioner :math:`P` of every group (1: none).

    Raises:
        ValueError: For a non-positive ``epsilon``, ``nbeta`` or ``preconditioner``, or a negative ``gamma``.
    """

    def __init__(
        self,
        params,
        *,
        epsilon: float,
        nbeta: float,
        gamma: float = 1.0,
        generator: torch.Generator | None = None,
        preconditioner: float = 1.0,
    ) -> None:
        _check_positive("epsilon", epsilon)
        _check_positive("nbeta", nbeta)
        _check_nonnegative("gamma", gamma)
        super().__init__(params, dict(epsilon=epsilon, nbeta=nbeta, gamma=gamma, preconditioner=preconditioner))
        self.generator = generator
        for group in self.param_groups:
            for i, p in enumerate(group["params"]):
                self.state[p]["w_star"] = p.detach().clone()
                self.state[p]["precond"] = _group_precond(group["preconditioner"], i, p)

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102 - documented by the class
        loss = None if closure is None else closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                noise = torch.randn(p.shape, generator=self.generator, device=p.device, dtype=p.dtype)
                sgld_update_(
                    p, p.grad, self.state[p]["w_star"], noise,
                    epsilon=group["epsilon"], nbeta=group["nbeta"], gamma=group["gamma"],
                    precond=self.state[p]["precond"],
                )
        return loss


def _group_precond(value, index: int, p: Tensor) -> float | Tensor:
    """A group's ``preconditioner`` for its ``index``-th parameter, checked (a sequence: one per parameter)."""
    if isinstance(value, (list, tuple)):
        value = value[index]
    return _check_precond(value, f"preconditioner of a {tuple(p.shape)} parameter", p)


def _check_precond(value, what: str, p: Tensor) -> float | Tensor:
    """``value`` as a float or a tensor shaped like ``p``, all finite and > 0, else a ValueError naming ``what``."""
    if isinstance(value, Tensor):
        if value.shape != p.shape and value.numel() != 1:
            raise ValueError(f"{what} must be a number or a tensor of shape {tuple(p.shape)}, "
                             f"got a tensor of shape {tuple(value.shape)}")
        if not bool(torch.isfinite(value).all() and (value > 0).all()):
            raise ValueError(f"{what} must be finite and > 0 everywhere, got min {float(value.min()):g}")
        return value.detach().to(p.device, p.dtype) if value.numel() > 1 else float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not (
        math.isfinite(value) and value > 0
    ):
        raise ValueError(f"{what} must be a finite number > 0 or a tensor, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class RMSPropPreconditioner:
    r"""RMSProp-adaptive diagonal preconditioner (pSGLD; Li et al. 2016, AAAI, eq. 4), normalised to mean 1.

    Per chain and coordinate, :math:`V \leftarrow \rho V + (1-\rho)\,g^2` with
    :math:`g = n\beta\nabla L_m(w) + \gamma(w - w^*)` the step's drift (:math:`V_0 = 0`; pSGLD
    uses the likelihood's gradient alone, but the localization is what moves the flat directions), and

    .. math::  P_i \propto \frac{1}{\sqrt{V_i} + \delta\,\overline{\sqrt V}},\qquad
               \tfrac1d\textstyle\sum_i P_i = 1,

    :math:`\overline{\sqrt V}` the mean of :math:`\sqrt V` over the d coordinates. Unlike pSGLD's
    :math:`1/(\delta + \sqrt V)`, this is scale-free: at :math:`w^*` of a realisable model the
    gradient vanishes and the raw form would be :math:`1/\delta`, an exploding step. So ε keeps its
    meaning (the average step), a coordinate whose gradient is zero gets at most
    :math:`(1+\delta)/\delta` times the average, and :math:`P = I` until gradients differ. Under a
    rescaling :math:`w \mapsto Aw`, P changes by about :math:`A` (gradients scale by :math:`A^{-1}`),
    not the :math:`A^2` that would make the chain equivariant. An adaptive P makes the chain
    only approximately stationary for the posterior; the Metropolis acceptance diagnostic uses
    the step's P both ways.

    Attributes:
        decay: :math:`\rho \in [0, 1)`, the moving average's decay per step. Its memory
            :math:`1/(1-\rho)` must be long against the chain's relaxation time: a P that follows
            the current position biases λ̂ up (pSGLD drops the correction term that would fix it).
            On a minimally singular model (λ = 1) ρ = 0.99 gave λ̂ = 1.36-1.77, ρ = 0.999 gave 1.01.
        damping: :math:`\delta > 0`, relative to the mean RMS gradient.
    """

    decay: float = 0.999
    damping: float = 0.1

    def __post_init__(self) -> None:
        if not (isinstance(self.decay, (int, float)) and 0 <= self.decay < 1):
            raise ValueError(f"RMSPropPreconditioner.decay must be in [0, 1), got {self.decay!r}")
        _check_positive("RMSPropPreconditioner.damping", self.damping)


def llc_from_losses(loss_trace: np.ndarray, init_loss: float, nbeta: float, num_burnin_steps: int = 0) -> np.ndarray:
    r"""Per-chain :math:`\hat\lambda = n\beta(\overline{L(w_t)} - L_n(w^*))` from a loss trace.

    Args:
        loss_trace: (chains, steps) losses along the chains.
        init_loss: :math:`L_n(w^*)`.
        nbeta: Inverse temperature :math:`n\beta`.
        num_burnin_steps: Leading steps left out of the mean.

    Returns:
        (chains,) array of per-chain estimates.

    >>> llc_from_losses(np.array([[1.0, 2.0, 3.0]]), 1.0, 10.0, num_burnin_steps=1)
    array([15.])
    """
    trace = np.asarray(loss_trace, dtype=np.float64)[:, num_burnin_steps:]
    return nbeta * (trace.mean(axis=1) - init_loss)


def _split_chains(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    half = x.shape[1] // 2
    return np.concatenate([x[:, :half], x[:, x.shape[1] - half :]], axis=0)


def rhat(x: np.ndarray) -> float:
    r"""Split-:math:`\hat R` of a (chains, draws) array (Gelman et al., *Bayesian Data Analysis*, 3rd ed., §11.4).

    Values near 1 mean the chains agree with each other and with themselves over time; above
    about 1.05 the chains have not mixed.

    Args:
        x: (chains, draws) samples, at least 4 draws.

    Returns:
        :math:`\hat R`, or NaN when there are fewer than 4 draws or no variance at all.

    >>> rhat(np.random.default_rng(0).normal(size=(4, 1000))) < 1.01
    True
    """
    if x.shape[1] < 4:
        return float("nan")
    s = _split_chains(x)
    m, n = s.shape
    within = s.var(axis=1, ddof=1).mean()
    between = n * s.mean(axis=1).var(ddof=1)
    if within == 0:
        return float("nan")
    var_plus = (n - 1) / n * within + between / n
    return float(np.sqrt(var_plus / within))


def ess(x: np.ndarray) -> float:
    r"""Effective sample size of a (chains, draws) array (BDA3 §11.5, Geyer's initial monotone sequence).

    Args:
        x: (chains, draws) samples, at least 4 draws.

    Returns:
        Effective number of independent draws across all chains (NaN for fewer than 4 draws).

    >>> 3000 < ess(np.random.default_rng(0).normal(size=(4, 1000))) <= 4000 * 1.2
    True
    """
    if x.shape[1] < 4:
        return float("nan")
    s = _split_chains(x)
    m, n = s.shape
    centred = s - s.mean(axis=1, keepdims=True)
    # Autocovariance of every chain at every lag via FFT, averaged over chains.
    size = 2 ** int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(centred, n=size, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=size, axis=1)[:, :n] / n
    within = s.var(axis=1, ddof=1).mean()
    var_plus = (n - 1) / n * within + n * s.mean(axis=1).var(ddof=1) / n if m > 1 else within
    if var_plus == 0:
        return float("nan")
    rho = 1.0 - (within - acov.mean(axis=0)) / var_plus
    rho[0] = 1.0
    # Geyer: sum pairs of autocorrelations while positive, forcing them to be monotone.
    pair_sums = rho[: n - n % 2].reshape(-1, 2).sum(axis=1)
    positive = np.flatnonzero(pair_sums <= 0)
    pair_sums = pair_sums[: positive[0] if positive.size else pair_sums.size]
    pair_sums = np.minimum.accumulate(pair_sums)
    tau = -1.0 + 2.0 * pair_sums.sum()
    return float(m * n / max(tau, 1.0 / np.log10(m * n)))


# --------------------------------------------------------------------------------------------
# The result
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LLCResult:
    r"""An LLC estimate with everything needed to interpret and check it.

    Attributes:
        lambdahat: :math:`\hat\lambda`, mean over the chains that did not diverge (NaN if all did).
        lambdahat_std: Standard deviation of the per-chain estimates (ddof=1; NaN for one chain).
        lambdahat_per_chain: (chains,) per-chain estimates; NaN for diverged chains.
        lambdahat_quarters: :math:`\hat\lambda` of each quarter of the post-burn-in draws: a trace
            still climbing shows as an increasing sequence.
        loss_trace: (chains, num_steps) loss at each step, burn-in included.
        init_loss: :math:`L_n(w^*)`.
        mala_acceptance: Mean Metropolis-adjusted Langevin acceptance probability of the SGLD
            proposals, every ``mala_every`` steps (Lau et al. 2023, App. ...): near 1 means ε is
            small enough that SGLD's discretisation error is small.
        rhat: Split-:math:`\hat R` of the post-burn-in loss trace across chains.
        ess: Effective sample size of the post-burn-in loss trace.
        diverged: Whether any chain diverged (see ``estimate_llc``).
        divergence_step: Per chain, the first step at which it diverged, else None.
        n: Number of training samples.
        nbeta: Inverse temperature :math:`n\beta` used.
        epsilon: Step size :math:`\epsilon` used.
        gamma: Localization :math:`\gamma` used.
        batch_size: Minibatch size m.
        num_chains: Number of chains.
        num_steps: Steps per chain, burn-in included.
        num_burnin_steps: Leading steps left out of :math:`\hat\lambda`.
        loss_trace_minibatch: True if the trace holds minibatch losses, False if full-data ones.
        control_variate: True if minibatch losses were corrected by the same batch at :math:`w^*`.
        init_loss_method: How :math:`L_n(w^*)` was computed.
        seed: Root seed of the chains.
        wall_time: Seconds spent sampling.
        epsilon_calibration: What ``epsilon="auto"`` measured and chose, else None.
        full_batch: True if every step used all n samples in a fixed order (exact gradient).
        calibration_seconds: Wall time of ``epsilon="auto"``'s probes and checks (not in ``wall_time``).
        calibration_steps: Steps per chain the calibration ran before the trace (its last check's
            steps are burn-in of these very chains, at the chosen ε).
        stopping: For ``num_steps="auto"``: the rule, every round's burn-in, R̂ and quarter
            spread, and why it stopped; else None.
        preconditioner: The diagonal preconditioner P, None for P = I: ``kind`` ("fixed" or
            "rmsprop"), and per parameter tensor (by name) its value (fixed; mean, min and max
            for a tensor) or, for rmsprop, ``decay``, ``damping`` and the mean P at the last step.
    """

    lambdahat: float
    lambdahat_std: float
    lambdahat_per_chain: np.ndarray
    lambdahat_quarters: list[float]
    loss_trace: np.ndarray
    init_loss: float
    mala_acceptance: float
    rhat: float
    ess: float
    diverged: bool
    divergence_step: list[int | None]
    n: int
    nbeta: float
    epsilon: float
    gamma: float
    batch_size: int
    num_chains: int
    num_steps: int
    num_burnin_steps: int
    loss_trace_minibatch: bool
    control_variate: bool
    init_loss_method: str
    seed: int
    wall_time: float
    epsilon_calibration: dict | None = field(default=None)
    full_batch: bool = False
    calibration_seconds: float = 0.0
    calibration_steps: int = 0
    stopping: dict | None = field(default=None)
    preconditioner: dict | None = field(default=None)

    def to_dict(self) -> dict[str, Any]:
        """All scalars and settings as plain JSON-serialisable Python values (no loss trace).

        Returns:
            A dict ready for ``json.dump`` or Sacred's ``run.info``.
        """
        out = {k: v for k, v in asdict(self).items() if k != "loss_trace"}
        out["lambdahat_per_chain"] = [float(v) for v in self.lambdahat_per_chain]
        return out

    def __str__(self) -> str:
        flag = "  DIVERGED" if self.diverged else ""
        return (
            f"λ̂ = {self.lambdahat:.4g} ± {self.lambdahat_std:.2g} (std over {self.num_chains} chains; "
            f"R̂ = {self.rhat:.3f}, quarters {[round(q, 3) for q in self.lambdahat_quarters]}, "
            f"MALA acceptance {self.mala_acceptance:.2f}, ε = {self.epsilon:.3g}, nβ = {self.nbeta:.4g}, "
            f"γ = {self.gamma:g}){flag}"
        )


# --------------------------------------------------------------------------------------------
# Internals: data access and the flat, batched potential
# --------------------------------------------------------------------------------------------


class _Data:
    """Uniform minibatch access to tensors, Datasets, or objects with ``get_batch``."""

    def __init__(self, data: Data, device: torch.device) -> None:
        self.source = data
        if isinstance(data, (tuple, list)):
            if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
                raise ValueError("data must be a pair of tensors (x, y), a torch Dataset, or an object with get_batch")
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"data: x and y must have the same length, got {len(x)} and {len(y)}")
            self.x, self.y = x.to(device), y.to(device)
        elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
            self.x, self.y = (t.to(device) for t in data.tensors)
        elif hasattr(data, "get_batch"):
            self.fetch = lambda idx: tuple(t.to(device) for t in data.get_batch(idx))
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.fetch = self._stack_items
        else:
            raise ValueError(
                f"data must be a pair of tensors (x, y), a torch Dataset, or have get_batch; got {type(data).__name__}"
            )
        self.n = len(data[0]) if isinstance(data, (tuple, list)) else len(data)
        self.device = device
        if self.n == 0:
            raise ValueError("data is empty: estimate_llc needs at least 2 samples")

    def _stack_items(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        # Generic Dataset: one item at a time. Correct but slow; prefer tensors or get_batch.
        items = [self.source[int(i)] for i in idx.reshape(-1).tolist()]
        x = torch.stack([torch.as_tensor(it[0]) for it in items]).to(self.device)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device)
        return x.reshape(*idx.shape, *x.shape[1:]), y.reshape(*idx.shape, *y.shape[1:])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Samples at ``idx`` of any shape S, returned as tensors of shape (*S, ...)."""
        flat = idx.reshape(-1)
        if hasattr(self, "x"):  # index_select: about half the cost of x[idx] for small batches on CPU
            x, y = self.x.index_select(0, flat), self.y.index_select(0, flat)
        else:
            x, y = self.fetch(flat)
        return x.reshape(*idx.shape, *x.shape[1:]), y.reshape(*idx.shape, *y.shape[1:])

    def chunks(self, size: int):
        """Consecutive index blocks covering the data once."""
        for start in range(0, self.n, size):
            yield torch.arange(start, min(start + size, self.n), device=self.device)


# Modules that act elementwise, so they apply unchanged to a (chains, batch, features) tensor.
_ELEMENTWISE = (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Identity)


class _Potential:
    r"""The model as a function of one flat parameter vector, batched over chains.

    The ``d`` trainable parameters are laid out as one vector so that a chain is a row of a
    (chains, d) tensor and noise, update and distances are single tensor operations. The model
    is evaluated on a private copy whose parameters are replaced by views into that vector: this
    costs no more than a plain training step (``torch.func.functional_call`` costs about twice
    as much on small models), and the caller's model is never modified.

    Several chains are evaluated in one forward pass batched over chains, and their gradients come
    from one ordinary backward pass of the sum of their losses (chain c's loss depends only on row
    c, so row c of that gradient is chain c's own): about 1.25x faster on CPU than
    ``vmap(grad_and_value)``, whose per-operator overhead dominates for small models. A model that
    is a chain of ``nn.Linear`` layers and elementwise activations (deep linear networks, MLPs)
    skips ``vmap`` in the forward pass too: each layer is one ``torch.baddbmm`` over the stacked
    chains. That path is used only after it reproduced the model's own output at a random point.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, device: torch.device) -> None:
        self.module = copy.deepcopy(model).to(device).eval()
        self.loss_fn = loss_fn
        self.shapes: list[torch.Size] = []
        self.slots: list[tuple[nn.Module, str, int]] = []
        first: dict[int, int] = {}
        values = []
        self.names: list[str] = []  # one per block of the vector, as in model.named_parameters()
        for prefix, module in self.module.named_modules():
            for name, p in list(module._parameters.items()):
                if p is None or not p.requires_grad:
                    continue
                if id(p) not in first:  # tied weights are one block of the vector
                    first[id(p)] = len(values)
                    values.append(p.detach())
                    self.names.append(f"{prefix}.{name}" if prefix else name)
                del module._parameters[name]
                self.slots.append((module, name, first[id(p)]))
        if not values:
            raise ValueError("model has no trainable parameters: nothing to sample")
        self.shapes = [v.shape for v in values]
        self.numels = [v.numel() for v in values]
        self.w_star = torch.cat([v.reshape(-1) for v in values])
        self.d = self.w_star.numel()
        # One chain lives in ``flat``, and the copy's parameters are leaves sharing its storage: a
        # step is then a training step (forward, backward) plus one concatenation of the gradients,
        # without re-slicing the vector into views every step.
        self.flat = self.w_star.clone()
        self._leaves = [nn.Parameter(t.view(s)) for t, s in zip(self.flat.split(self.numels), self.shapes)]
        self._assign(self.w_star)
        self._vmap_loss = vmap(self.loss)
        self._chain_loss_fn = vmap(loss_fn)
        self.layers: list[tuple[nn.Module, int | None, int | None]] | None = None  # see verify_linear_layers
        # Set by _probe when autograd gives NaN at w* where the loss is finite (a removable 0·∞,
        # e.g. the derivative of w⁰ at w = 0): NaN gradient entries are then taken as 0.
        self.nan_grad_to_zero = False

    def block_names(self, mask: Tensor) -> list[str]:
        """Names of the parameter blocks in which the (d,) boolean ``mask`` has a True entry."""
        return [name for name, block in zip(self.names, mask.split(self.numels)) if bool(block.any())]

    def _set(self, blocks: Sequence[Tensor]) -> None:
        # Straight into __dict__: these names are no longer registered parameters, and
        # nn.Module.__setattr__'s checks cost as much as a small layer's forward.
        for module, name, i in self.slots:
            module.__dict__[name] = blocks[i]

    def _assign(self, w: Tensor) -> None:
        self._set([t.view(s) for t, s in zip(w.split(self.numels), self.shapes)])

    def start(self, num_chains: int) -> Tensor:
        """(C, d) parameters of C chains at w*; a single chain is ``flat`` itself, so its steps copy nothing."""
        if num_chains == 1:
            self.flat.copy_(self.w_star)
            return self.flat.view(1, self.d)
        return self.w_star.expand(num_chains, self.d).clone()

    def _linear_layers(self) -> list[tuple[nn.Module, int | None, int | None]] | None:
        """(module, weight block, bias block) per leaf if the model may be a Linear/activation chain."""
        slot = {(id(module), name): i for module, name, i in self.slots}
        if any(True for _ in self.module.buffers()):
            return None  # state besides parameters: leave it to vmap
        layers = []
        for module in self.module.modules():
            if next(module.children(), None) is not None:
                continue
            if isinstance(module, nn.Linear):
                layers.append((module, slot.get((id(module), "weight")), slot.get((id(module), "bias"))))
            elif isinstance(module, _ELEMENTWISE):
                layers.append((module, None, None))
            else:
                return None
        if any(w is None for m, w, _ in layers if isinstance(m, nn.Linear)) or len(slot) != sum(
            (w is not None) + (b is not None) for _, w, b in layers
        ):
            return None  # a frozen Linear weight, or parameters outside the Linear layers
        return layers

    def verify_linear_layers(self, x: Tensor) -> None:
        """Use the Linear-chain path if the model is such a chain and it reproduces ``model(x)`` near w*."""
        self.layers = self._linear_layers() if x.ndim == 2 and x.is_floating_point() else None
        if self.layers is None:
            return
        gen = torch.Generator(device=self.w_star.device).manual_seed(0)
        scale = float(self.w_star.abs().mean()) + 1.0
        w = self.w_star + 0.1 * scale * torch.randn(self.d, generator=gen, device=self.w_star.device)
        probe = torch.randn(x.shape, generator=gen, device=x.device, dtype=x.dtype)
        with torch.no_grad():
            self._assign(w)
            expected = self.module(probe)
            self._assign(self.w_star)
            got = self._linear_forward(w[None], probe[None])[0]
        if got.shape != expected.shape or not torch.allclose(
            got, expected, rtol=1e-4, atol=1e-5 * float(expected.abs().max())
        ):
            self.layers = None

    def _linear_forward(self, w: Tensor, x: Tensor) -> Tensor:
        """The Linear/activation chain on C chains at once: w (C, d), x (C, m, features)."""
        blocks = w.split(self.numels, dim=1)
        # Features first, h of shape (C, features, m), so that each layer is W h: the weight
        # gradients then come out of bmm already in the vector's (out, in) layout, with no copies.
        h = x.transpose(1, 2)
        for module, wi, bi in self.layers:
            if wi is None:
                h = module(h)
                continue
            weight = blocks[wi].view(-1, *self.shapes[wi])
            h = torch.bmm(weight, h) if bi is None else torch.baddbmm(blocks[bi].unsqueeze(2), weight, h)
        return h.transpose(1, 2)

    def loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Mean loss of one parameter vector on one batch."""
        self._assign(w)
        return self.loss_fn(self.module(x), y)

    def chain_losses(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Losses (C,) of C chains on their own batches x (C, m, ...), differentiable in w."""
        if self.layers is not None and x.ndim == 3:
            return self._chain_loss_fn(self._linear_forward(w, x), y)
        return self._vmap_loss(w, x, y)

    def grad_value(self, w: Tensor, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Gradients (C, d) and losses (C,) of C chains on their own batches x (C, m, ...)."""
        if w.data_ptr() == self.flat.data_ptr():  # a run's single chain (see start): a training step
            self._set(self._leaves)
            with torch.enable_grad():
                value = self.loss_fn(self.module(x[0]), y[0])
                grads = torch.autograd.grad(value, self._leaves, allow_unused=True, materialize_grads=True)
            return self._finite(torch.cat([g.reshape(-1) for g in grads]).unsqueeze(0)), value.detach().unsqueeze(0)
        with torch.enable_grad():
            leaf = w.detach().requires_grad_()
            values = self.chain_losses(leaf, x, y)
            (g,) = torch.autograd.grad(values.sum(), leaf)
        return self._finite(g), values.detach()

    def _finite(self, g: Tensor) -> Tensor:
        return g.masked_fill_(g.isnan(), 0.0) if self.nan_grad_to_zero else g

    @torch.no_grad()
    def batch_loss(self, w: Tensor, x: Tensor, y: Tensor) -> Tensor:
        """Losses (C,) of C chains on their own batches x (C, m, ...), without gradients."""
        if w.shape[0] == 1:
            return self.loss(w[0], x[0], y[0]).unsqueeze(0)
        return self.chain_losses(w, x, y)

    @torch.no_grad()
    def full_loss(self, w: Tensor, data: _Data, batch_size: int) -> Tensor:
        """:math:`L_n` of C chains (C,) on the full data, in batches."""
        total = torch.zeros(w.shape[0], device=w.device, dtype=torch.float64)
        for idx in data.chunks(batch_size):
            x, y = data.batch(idx)
            x = x.expand(w.shape[0], *x.shape)
            y = y.expand(w.shape[0], *y.shape)
            total += self.chain_losses(w, x, y).double() * len(idx)
        return total / data.n

    def full_grad_value(self, w: Tensor, data: _Data, batch_size: int) -> tuple[Tensor, Tensor]:
        """Full-data gradients (C, d) and losses (C,), in batches."""
        g_total = torch.zeros_like(w)
        v_total = torch.zeros(w.shape[0], device=w.device, dtype=torch.float64)
        for idx in data.chunks(batch_size):
            x, y = data.batch(idx)
            x = x.expand(w.shape[0], *x.shape)
            y = y.expand(w.shape[0], *y.shape)
            with torch.enable_grad():
                leaf = w.detach().requires_grad_()
                v = self.chain_losses(leaf, x, y)
                (g,) = torch.autograd.grad(v.sum(), leaf)
            g_total.add_(self._finite(g), alpha=len(idx) / data.n)
            v_total += v.detach().double() * (len(idx) / data.n)
        return g_total, v_total


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _check_nonnegative(name: str, value: float) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def _check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")


def _chain_generators(seed: int, num_chains: int, device: torch.device) -> list[torch.Generator]:
    states = [s.generate_state(2, dtype=np.uint32) for s in np.random.SeedSequence(seed).spawn(num_chains)]
    gens = []
    for st in states:
        g = torch.Generator(device=device)
        g.manual_seed(int(st[0]) << 32 | int(st[1]))
        gens.append(g)
    return gens


def _probe(potential: _Potential, data: _Data) -> None:
    """Fail early, with a clear message, if the model does not accept the data."""
    idx = torch.arange(min(2, data.n), device=data.device)
    x, y = data.batch(idx)
    try:
        value = potential.loss(potential.w_star, x, y)
    except Exception as err:  # the user's model/loss raised: say which inputs it got
        raise ValueError(
            f"model/data shape mismatch: loss_fn(model(x), y) failed for x of shape {tuple(x.shape)} "
            f"and y of shape {tuple(y.shape)}: {err}"
        ) from err
    if value.ndim != 0:
        raise ValueError(
            f"loss_fn must return the mean loss as a scalar, got shape {tuple(value.shape)}; use reduction='mean'"
        )
    if not torch.isfinite(value):
        _raise_nonfinite_loss(potential, float(value), x, y)
    bad = _gradient(potential, x, y).isnan()
    if bool(bad.any()):
        # The loss is finite but autograd is not: typically 0·∞ in the derivative of a factor like
        # w⁰ at w = 0, whose true derivative is 0. Everywhere else the gradient is finite, so the
        # NaN entries are taken as 0 (the limit) rather than letting every chain diverge at step 0.
        potential.nan_grad_to_zero = True
        warnings.warn(
            f"the gradient of the loss at w* is NaN in {potential.block_names(bad)} although the loss is finite "
            f"({float(value):.4g}); NaN gradient entries are taken as 0 (the limit of a removable singularity "
            "such as d/dw w^0 at w = 0).",
            RuntimeWarning,
            stacklevel=3,
        )
    potential.verify_linear_layers(x)


def _gradient(potential: _Potential, x: Tensor, y: Tensor) -> Tensor:
    """Plain autograd gradient (d,) of the loss on one batch at w*, not sanitised."""
    with torch.enable_grad():
        leaf = potential.w_star.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(potential.loss(leaf, x, y), leaf, allow_unused=True, materialize_grads=True)
    return g


def _raise_nonfinite_loss(potential: _Potential, value: float, x: Tensor, y: Tensor) -> None:
    """A loss that is NaN/inf at w* itself: no chain can start there. Say which parameters produced it."""
    bad_values = potential.block_names(~torch.isfinite(potential.w_star))
    if bad_values:
        culprit = f"non-finite values in the parameters {bad_values}"
    else:
        try:
            touched = potential.block_names(~torch.isfinite(_gradient(potential, x, y)))
        except RuntimeError:
            touched = []
        culprit = (f"the NaN flows through the parameters {touched}" if touched
                   else f"all parameters {potential.names} are finite, so the model or loss_fn produces it")
    raise ValueError(
        f"the loss at w* is {value} ({culprit}); the chains start at w*, so the loss must be finite there: "
        "check the model's parameters and loss_fn(model(x), y) at w*"
    )


# --------------------------------------------------------------------------------------------
# Step-size calibration
# --------------------------------------------------------------------------------------------


def _hvp_fn(
    potential: _Potential, x: Tensor, y: Tensor, nbeta: float, gamma: float, at: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    r"""Hessian-vector product of the local potential :math:`n\beta L + \gamma/2\lVert w-w^*\rVert^2` at ``at`` (w*)."""
    # Reverse-over-reverse (the Hessian is symmetric, so a VJP of the gradient is an HVP), linearised
    # once for all products. Forward-over-reverse (jvp of grad) fails on F.mse_loss in torch 2.14
    # ("ZeroTensors are immutable", from the target's absent tangent).
    point = potential.w_star if at is None else at
    _, vjp_fn = torch.func.vjp(lambda w: torch.func.grad(potential.loss)(w, x, y), point)

    def hvp(v: Tensor) -> Tensor:
        (hv,) = vjp_fn(v)
        return nbeta * hv + gamma * v

    return hvp


def _curvature(
    potential: _Potential, data: _Data, nbeta: float, gamma: float, generator: torch.Generator,
    num_samples: int = 4096, num_iter: int = 30, num_probes: int = 16,
) -> tuple[float, float]:
    r"""Largest eigenvalue (power iteration) and trace (Hutchinson) of the local potential's Hessian."""
    idx = torch.randint(data.n, (min(num_samples, data.n),), generator=generator, device=generator.device)
    x, y = data.batch(idx.to(data.device))
    hvp = _hvp_fn(potential, x, y, nbeta, gamma)
    v = torch.randn(potential.d, generator=generator, device=data.device)
    v /= v.norm()
    a_max = 0.0
    for _ in range(num_iter):
        hv = hvp(v)
        a_new = float(v @ hv)
        v = hv / hv.norm().clamp_min(1e-30)
        converged = a_max > 0 and abs(a_new - a_max) < 1e-3 * a_max
        a_max = a_new
        if converged:
            break
    probes = torch.randint(0, 2, (num_probes, potential.d), generator=generator, device=data.device) * 2.0 - 1
    trace = float(np.mean([float(z @ hvp(z)) for z in probes]))
    return a_max, max(trace, a_max)


def _gradient_noise(
    potential: _Potential, data: _Data, batch_size: int, generator: torch.Generator, num_batches: int = 16,
    w: Tensor | None = None,
) -> float:
    r""":math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m(w))`, the minibatch gradient's total variance.

    At :math:`w^*`, or averaged over the rows of ``w`` (C, d), e.g. the states of warmed-up chains.
    """
    if batch_size >= data.n:
        return 0.0
    w = potential.w_star[None] if w is None else w
    grads = []
    for _ in range(num_batches):
        idx = torch.randint(data.n, (w.shape[0], batch_size), generator=generator, device=generator.device)
        x, y = data.batch(idx.to(data.device))
        grads.append(potential.grad_value(w, x, y)[0])
    return float(torch.stack(grads).double().var(dim=0).sum(dim=1).mean())


def _noise_floor(hessian_trace: float, nbeta: float, dtype: torch.dtype) -> float:
    r"""Gradient noise below which :math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m)` counts as zero.

    The noise enters ε only through the bias rate :math:`(\operatorname{tr} H + n\beta^2
    \operatorname{tr}\operatorname{Cov})/8`. A noise term smaller than the float resolution of the
    parameters' dtype (float32: 1.2e-7) relative to :math:`\operatorname{tr} H` cannot change that sum
    at the precision the model computes in; it is rounding residue, not noise. For noise-free data
    the measured value is 0.0 on one CPU and 6e-17 on another (summation order differs between BLAS
    builds): both sit many orders of magnitude below this floor, so both take the same path.
    """
    return torch.finfo(dtype).eps * abs(hessian_trace) / nbeta**2


def _above_floor(noise: float, floor: float) -> float:
    """``noise``, or exactly 0.0 when it is at or below ``floor`` (see :func:`_noise_floor`)."""
    return noise if noise > floor else 0.0


def _hessian_trace_at(
    potential: _Potential, data: _Data, nbeta: float, gamma: float, generator: torch.Generator, w: Tensor,
    num_samples: int = 4096, num_probes: int = 16,
) -> float:
    """Hutchinson's tr H of the local potential at the point ``w`` (d,), on up to 4096 samples."""
    idx = torch.randint(data.n, (min(num_samples, data.n),), generator=generator, device=generator.device)
    x, y = data.batch(idx.to(data.device))
    hvp = _hvp_fn(potential, x, y, nbeta, gamma, at=w.detach().clone())
    probes = torch.randint(0, 2, (num_probes, potential.d), generator=generator, device=data.device) * 2.0 - 1
    return float(np.mean([float(z @ hvp(z)) for z in probes]))


# Fallback when the Hessian at w* gives no usable scale: a loss of O(1) curvature per sample gives
# nβ L a curvature of O(nβ); the MALA acceptance search then corrects this first guess.
_CURVATURE_SOURCES = {
    "w*": "largest eigenvalue and trace of the Hessian at w*",
    "|a| at w*": "|largest-magnitude eigenvalue| at w* (it is negative: w* is not a minimum of the local potential)",
    "nbeta + gamma": "unit-curvature guess nbeta + gamma (the curvature at w* is zero or non-finite); "
    "the step is then set by the MALA acceptance search alone",
}


def _usable_curvature(a_max: float, trace: float, nbeta: float, gamma: float) -> tuple[float, float, str]:
    """(a, tr H, source) to build ε from: the measured values when they are a positive scale, else a fallback."""
    if math.isfinite(a_max) and a_max > 0:
        return a_max, max(abs(trace), a_max) if math.isfinite(trace) else a_max, "w*"
    if math.isfinite(a_max) and a_max < 0:
        return -a_max, max(abs(trace), -a_max) if math.isfinite(trace) else -a_max, "|a| at w*"
    return nbeta + gamma, nbeta + gamma, "nbeta + gamma"


def _backoff(acceptance: float, target: float, diverged: bool) -> float:
    r"""Factor to shrink ε by after a failed check.

    MALA's rejection probability scales as :math:`\epsilon^{3/2}` for small steps (Roberts &
    Rosenthal 1998, "Optimal scaling of discrete approximations to Langevin diffusions"), so the
    step that meets the target is about :math:`((1-t)/(1-a))^{2/3}` times the step that gave
    acceptance a; clipped to [1/16, 1/2]. A divergence, or no acceptance at all, gives 1/4.
    """
    if diverged or not math.isfinite(acceptance) or acceptance >= 1:
        return 0.25
    return float(np.clip(((1 - target) / (1 - acceptance)) ** (2 / 3), 1 / 16, 1 / 2))


def _calibrate(
    potential: _Potential, source: _Data, chains: _Chains, *, gamma: float, nbeta: float, bias_tolerance: float,
    max_stiffness: float, pilot_steps: int, min_acceptance: float, max_backoffs: int, seed: int,
) -> dict[str, Any]:
    """The rule of :func:`calibrate_epsilon`, run on ``chains``, which it leaves warmed up at the chosen ε."""
    start = time.perf_counter()
    gen = torch.Generator(device=source.device)
    gen.manual_seed(seed)
    try:
        a_max, trace = _curvature(potential, source, nbeta, gamma, gen)
    except RuntimeError as err:  # a model that torch.func cannot differentiate twice: no curvature
        warnings.warn(f"calibrate_epsilon: no Hessian-vector products ({err}); using the fallback", RuntimeWarning,
                      stacklevel=3)
        a_max = trace = float("nan")
    a_used, trace_used, source_key = _usable_curvature(a_max, trace, nbeta, gamma)
    grad_noise_measured = _gradient_noise(potential, source, chains.batch_size, gen)
    if not math.isfinite(grad_noise_measured):
        grad_noise_measured = 0.0  # NaN/inf minibatch gradients at w* carry no usable scale; the acceptance guards
    noise_floor = _noise_floor(trace_used, nbeta, potential.w_star.dtype)
    grad_noise = _above_floor(grad_noise_measured, noise_floor)
    eps_stable = max_stiffness / a_used
    # The bias rate (predicted bias of lambdahat per unit ε) uses the largest tr H and gradient noise
    # seen, at w* and at the warmed-up chains' states: away from w* both can be far larger (a reduced
    # rank regression fitted to noise has small weights at w*, so small per-sample gradients there).
    seen = dict(hessian_trace=trace_used, gradient_noise=grad_noise)

    def bias_rate() -> float:
        return (seen["hessian_trace"] + nbeta**2 * seen["gradient_noise"]) / 8

    def choose(lam: float) -> float:
        return min(eps_stable, bias_tolerance * lam / bias_rate()) if lam > 0 else eps_stable

    def look_around() -> None:
        """Update the bias rate with tr H and the gradient noise at the chains' current states."""
        noise = _gradient_noise(potential, source, chains.batch_size, gen, w=chains.w)
        try:
            tr_here = _hessian_trace_at(potential, source, nbeta, gamma, gen, chains.w[0])
        except RuntimeError:  # no second derivatives (see above): the acceptance check still guards
            tr_here = float("nan")
        checks[-1].update(gradient_noise=noise, hessian_trace=tr_here)
        if math.isfinite(noise):
            seen["gradient_noise"] = max(seen["gradient_noise"], _above_floor(noise, noise_floor))
        if math.isfinite(tr_here):
            seen["hessian_trace"] = max(seen["hessian_trace"], tr_here)

    lambda_floor = trace_used / (2 * a_used)
    checks: list[dict[str, Any]] = []

    def check(epsilon: float) -> tuple[bool, float, float]:
        """Advance the chains ``pilot_steps`` at ε; judge divergence and the MALA acceptance of the proposals."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # divergences here are the signal, not an error
            tr, acc = chains.run(pilot_steps, epsilon=epsilon, mala_every=10, loss_trace_minibatch=True,
                                 control_variate=True)
        diverged = any(s is not None for s in chains.diverged_at)
        acceptance = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
        lam = float(llc_from_losses(tr, chains.init_loss, nbeta, pilot_steps // 2).mean())
        ok = not diverged and acceptance >= min_acceptance
        checks.append(dict(epsilon=epsilon, steps=pilot_steps, mala_acceptance=acceptance, lambdahat=lam,
                           diverged=diverged, passed=ok))
        return ok, acceptance, lam

    # 1. A conservative pilot from w*, shrunk (and restarted) while it diverges or its acceptance is low.
    pilot_eps, cap = choose(lambda_floor), math.inf
    for _ in range(max_backoffs + 1):
        chains.restart()
        ok, acceptance, pilot_lambda = check(pilot_eps)
        if ok:
            break
        pilot_eps *= _backoff(acceptance, min_acceptance, checks[-1]["diverged"])
        cap = pilot_eps
    else:
        chains.restart()
        warnings.warn(f"calibrate_epsilon: the MALA acceptance stayed below {min_acceptance} after {max_backoffs} "
                      f"backoffs; using epsilon = {pilot_eps:.3g}. Check diverged and mala_acceptance.",
                      RuntimeWarning, stacklevel=3)
    # 2. Rescale ε to the bias budget at the pilot's λ̂ and at the curvature and noise the chains
    #    found, and check again at that ε, continuing the same chains (their steps are burn-in, not
    #    waste). Repeat while a check fails (shrink by the acceptance) or finds more noise than assumed.
    lambda_ref = max(pilot_lambda, lambda_floor if source_key == "w*" else 0.0) if math.isfinite(pilot_lambda) else 0.0
    epsilon = pilot_eps
    if checks[-1]["passed"]:
        look_around()
        for _ in range(4):
            target = min(choose(lambda_ref), cap)
            if checks[-1]["passed"] and target / 1.25 <= checks[-1]["epsilon"] <= 1.25 * target:
                break  # the last check passed at the budget's ε (25% slack: the estimates are noisy)
            epsilon = target
            ok, acceptance, lam = check(epsilon)
            look_around()
            if not ok:
                cap = epsilon * _backoff(acceptance, min_acceptance, checks[-1]["diverged"])
            elif math.isfinite(lam):
                lambda_ref = max(lambda_ref, lam)
        # The last ε that passed its own check (the pilot's at worst).
        epsilon = checks[-1]["epsilon"] if checks[-1]["passed"] else min(c["epsilon"] for c in checks if c["passed"])
    final = [c for c in checks if c["epsilon"] == epsilon]
    calibration_steps = chains.steps
    chains.reset_divergence()
    lam_for_bias = lambda_ref if lambda_ref > 0 else lambda_floor
    return dict(
        epsilon=epsilon,
        rule="epsilon = min(c_max / a, delta * lambda_ref / ((tr H + nbeta^2 tr Cov(grad L_m)) / 8)), "
        "then MALA acceptance >= min_acceptance checked at the final epsilon",
        a_max=a_max,
        hessian_trace=trace,
        curvature_used=a_used,
        hessian_trace_used=trace_used,
        curvature_source=_CURVATURE_SOURCES[source_key],
        gradient_noise=grad_noise,
        gradient_noise_measured=grad_noise_measured,
        gradient_noise_floor=noise_floor,
        gradient_noise_used=seen["gradient_noise"],
        hessian_trace_seen=seen["hessian_trace"],
        nan_gradient_taken_as_zero=potential.nan_grad_to_zero,
        c_max=max_stiffness,
        delta=bias_tolerance,
        stiffness=epsilon * a_used,
        lambda_floor=lambda_floor,
        lambda_ref=lambda_ref,
        pilot_epsilon=pilot_eps,
        pilot_steps=pilot_steps,
        pilot_lambdahat=checks[0]["lambdahat"] if len(checks) == 1 else pilot_lambda,
        pilot_mala_acceptance=final[-1]["mala_acceptance"] if final else float("nan"),
        checks=checks,
        predicted_relative_bias=epsilon * bias_rate() / lam_for_bias,
        min_acceptance=min_acceptance,
        limited_by="stability" if epsilon == eps_stable else "mala_acceptance" if epsilon >= cap else "bias",
        calibration_steps=calibration_steps,
        calibration_seconds=time.perf_counter() - start,
    )


def calibrate_epsilon(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    gamma: float = 1.0,
    nbeta: float | None = None,
    batch_size: int | Literal["full"] | None = 256,
    bias_tolerance: float = 0.02,
    max_stiffness: float = 1.0,
    pilot_steps: int = 1000,
    pilot_chains: int = 4,
    min_acceptance: float = 0.95,
    max_backoffs: int = 8,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    r"""Choose the SGLD step size ε from the local geometry and gradient noise at :math:`w^*`, then check it.

    The rule bounds the two biases of SGLD and otherwise takes the largest step, since too small
    an ε leaves the flat, singular directions unexplored within the step budget.

    * *Discretisation.* Along a direction of curvature :math:`a` the Euler–Maruyama step samples
      a Gaussian of variance :math:`1/(a(1 - \epsilon a/4))` instead of :math:`1/a`; each such
      direction adds :math:`\tfrac12` to λ, so :math:`\hat\lambda` grows by about
      :math:`\tfrac{\epsilon}{8}\operatorname{tr} H`, H the Hessian of the local potential
      :math:`U = n\beta L_n + \tfrac\gamma2\lVert w - w^*\rVert^2`. The stiffest direction must
      also stay stable: :math:`\epsilon a_{\max} \le c_{\max}`.
    * *Gradient noise.* The minibatch gradient adds variance
      :math:`\tfrac{\epsilon^2}{4} n\beta^2 \operatorname{Cov}(\nabla L_m)` per step to the injected
      :math:`\epsilon`; :math:`\hat\lambda` grows by about
      :math:`\tfrac{\epsilon}{8} n\beta^2 \operatorname{tr}\operatorname{Cov}(\nabla L_m(w^*))`.

    Hence, with :math:`\delta` = ``bias_tolerance`` and a reference :math:`\lambda_{\text{ref}}`,

    .. math::  \epsilon = \min\Bigl(\frac{c_{\max}}{a_{\max}},\;
               \frac{8\,\delta\,\lambda_{\text{ref}}}{\operatorname{tr} H
               + n\beta^2 \operatorname{tr}\operatorname{Cov}(\nabla L_m)}\Bigr).

    :math:`a_{\max}` comes from power iteration and :math:`\operatorname{tr}H` from Hutchinson's
    estimator, on Hessian-vector products over up to 4096 samples; the gradient covariance from 16
    minibatches at :math:`w^*`. The steps:

    1. *Pilot.* At the ε of the lower bound :math:`\lambda_{\text{ref}} = \operatorname{tr}H/(2a_{\max})`,
       ``pilot_chains`` chains run ``pilot_steps`` steps from :math:`w^*`, recording the
       Metropolis–Hastings acceptance probability of their proposals every 10 steps (near 1 while
       the Langevin step is accurate, whatever the curvature). If a chain diverges or the mean
       acceptance is below ``min_acceptance``, ε shrinks by :math:`((1-t)/(1-a))^{2/3}` (MALA's
       rejection scales as :math:`\epsilon^{3/2}`), clipped to [1/16, 1/2], and the pilot restarts.
    2. *Final ε, checked.* ε is rescaled to the pilot's :math:`\hat\lambda` (the bias budget is
       relative), and the *same chains continue* ``pilot_steps`` at that ε with the same acceptance
       check; on failure ε shrinks (not below the pilot's) and is checked again. The final ε has
       always passed the check itself. In :func:`estimate_llc` these chains are the run's own, so
       the calibration steps are burn-in, not waste.

    Inputs without a usable curvature (``curvature_source`` in the record says which path ran):

    * largest-magnitude Hessian eigenvalue negative (w* is not a minimum, e.g. noisy targets at a
      singular point): its absolute value is used, and the trace's;
    * zero or non-finite curvature (a Hessian that vanishes at a singular point with γ = 0; a NaN
      gradient at :math:`w^*`; a model ``torch.func`` cannot differentiate twice): the guess
      :math:`a = n\beta + \gamma` (an O(1) curvature per sample), and the acceptance search decides;
    * zero gradient noise (full batch, a loss that ignores the data, noise-free realisable data):
      only the curvature term. "Zero" is "too small to change the bias rate in the parameters'
      dtype": :math:`n\beta^2 \operatorname{tr}\operatorname{Cov} \le u \operatorname{tr} H`, u the
      float resolution (float32: 1.2e-7). Below that, the measured value is rounding residue
      (0.0 on one CPU, 6e-17 on another) and is recorded as ``gradient_noise_measured`` while
      ``gradient_noise`` is 0.0 on every machine;
    * a gradient that is NaN at :math:`w^*` while the loss is finite (autograd's 0·∞ for factors
      like :math:`w^0` at 0): NaN entries are taken as 0 in every step (``nan_gradient_taken_as_zero``);
    * a loss that is NaN or infinite at :math:`w^*`: ``ValueError`` naming the parameters involved.

    Limits: the prediction is first order in ε at the curvature of :math:`w^*`; the acceptance
    check catches stiffer regions the chains reach, but a short pilot can miss rare excursions
    (the arms of a normal crossing at large nβ): check ``diverged``.

    Args:
        model: The model at :math:`w^*`.
        loss_fn: Mean loss ``loss_fn(output, target)``.
        data: As for :func:`estimate_llc`.
        gamma: Localization :math:`\gamma`.
        nbeta: Inverse temperature; default :math:`n/\log n`.
        batch_size: Minibatch size m of the run to calibrate for; ``None`` or ``"full"`` for exact full batch.
        bias_tolerance: :math:`\delta`, accepted relative bias of :math:`\hat\lambda`.
        max_stiffness: :math:`c_{\max}`, the largest :math:`\epsilon a_{\max}`.
        pilot_steps: Steps of each check (pilot, and at the final ε).
        pilot_chains: Chains of the pilot run.
        min_acceptance: Smallest mean MALA acceptance of the proposals that passes a check.
        max_backoffs: How many times the pilot's ε may shrink.
        seed: Seed for the probes and the pilot.
        device: Where to compute; default the model's device.

    Returns:
        A dict with ``epsilon`` and what it was derived from: ``a_max``, ``hessian_trace`` (as
        measured), ``curvature_used``, ``hessian_trace_used``, ``curvature_source``,
        ``gradient_noise`` (:math:`\operatorname{tr}\operatorname{Cov}`, 0.0 at or below
        ``gradient_noise_floor``), ``gradient_noise_measured``, ``lambda_ref``,
        ``pilot_lambdahat``, ``pilot_mala_acceptance`` (at the final ε), every check in ``checks``,
        ``predicted_relative_bias``, ``limited_by``, ``calibration_steps`` (per chain),
        ``calibration_seconds`` and the ``rule``.

    Raises:
        ValueError: If the loss at :math:`w^*` is not finite, or for an out-of-range argument.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = _Data(data, device)
    nbeta = default_nbeta(source.n) if nbeta is None else nbeta
    full = batch_size is None or batch_size == "full"
    m = source.n if full else min(batch_size, source.n)
    _check_int("pilot_steps", pilot_steps, 2)
    _check_int("pilot_chains", pilot_chains, 1)
    potential = _Potential(model, loss_fn, device)
    _probe(potential, source)
    init_loss, sigma_m = _checked_init_loss(potential, source, m, full)
    chains = _Chains(potential, source, _chain_generators(seed + 1, pilot_chains, device), group=pilot_chains,
                     batch_size=m, full=full, nbeta=nbeta, gamma=gamma, init_loss=init_loss, sigma_m=sigma_m,
                     check_every=100)
    return _calibrate(potential, source, chains, gamma=gamma, nbeta=nbeta, bias_tolerance=bias_tolerance,
                      max_stiffness=max_stiffness, pilot_steps=pilot_steps, min_acceptance=min_acceptance,
                      max_backoffs=max_backoffs, seed=seed)


# --------------------------------------------------------------------------------------------
# The estimator
# --------------------------------------------------------------------------------------------


def _validate(n: int, epsilon, gamma, num_steps, num_chains, batch_size, nbeta, num_burnin_steps,
              mala_every, chain_batch_size, max_steps: int | None = None) -> None:
    if n < 2:
        raise ValueError(f"data must hold at least 2 samples, got {n}")
    if epsilon != "auto":
        _check_positive("epsilon", epsilon)
    _check_nonnegative("gamma", gamma)
    if num_steps == "auto":
        _check_int("max_steps", max_steps, 2)
        num_steps = min(max_steps, _FIRST_ROUND_STEPS)
    else:
        _check_int("num_steps", num_steps, 1)
    _check_int("num_chains", num_chains, 1)
    if batch_size is not None and batch_size != "full":
        _check_int("batch_size", batch_size, 1, n)
    if nbeta is not None:
        _check_positive("nbeta", nbeta)
    _check_int("num_burnin_steps", num_burnin_steps, 0, num_steps - 1)
    _check_int("mala_every", mala_every, 0)
    if chain_batch_size is not None:
        _check_int("chain_batch_size", chain_batch_size, 1, num_chains)


# The stopping rule of num_steps="auto" (documented in estimate_llc).
_FIRST_ROUND_STEPS = 1000
_STOP_RHAT = 1.05
_STOP_QUARTER_SPREAD = 0.10
_STOP_ROUND_CHANGE = 0.05
_BURNIN_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)


def _pilot_steps(budget: int) -> int:
    """Steps of each calibration check: a twentieth of the run, 100 to 1000 (short for short, large runs)."""
    return int(min(1000, max(100, budget // 20)))


def estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    epsilon: float | Literal["auto"],
    gamma: float = 1.0,
    num_steps: int | Literal["auto"] = 1000,
    num_chains: int = 4,
    batch_size: int | Literal["full"] | None = 256,
    nbeta: float | None = None,
    seed: int = 0,
    num_burnin_steps: int = 0,
    loss_trace_minibatch: bool = True,
    control_variate: bool = False,
    mala_every: int = 50,
    chain_batch_size: int | None = None,
    check_every: int = 100,
    progress: bool = False,
    device: torch.device | str | None = None,
    max_steps: int = 64_000,
    preconditioner: Preconditioner = None,
) -> LLCResult:
    r"""Estimate the local learning coefficient :math:`\hat\lambda(w^*)` at the model's parameters.

    Example (minimally singular: :math:`L(w) = w_1^2 + w_2^2` among 20 parameters, λ = 1):

    >>> from models.toy import MinimallySingular, toy_data
    >>> model = MinimallySingular(d=20, r=2)
    >>> res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=2e-5, num_steps=2000, seed=0)
    >>> abs(res.lambdahat - 1.0) < 0.1
    True

    Args:
        model: ``nn.Module`` whose current parameters are :math:`w^*`. It is evaluated in eval
            mode (BatchNorm uses running statistics, dropout is off) so that the loss is a
            function of the parameters alone; its parameters are not modified.
        loss_fn: ``loss_fn(model(x), y)`` returning the *mean* loss :math:`L` over the batch.
        data: The n training samples: a pair of tensors ``(x, y)``, a torch ``Dataset`` of
            ``(x, y)`` items, or any object with ``__len__`` and ``get_batch(idx) -> (x, y)``
            (used for synthetic data generated on the fly).
        epsilon: Step size :math:`\epsilon > 0`, or ``"auto"`` for :func:`calibrate_epsilon`, run on
            this run's own chains: they start the run warmed up at the chosen ε (the calibration's
            steps are extra burn-in; ``calibration_steps`` and ``calibration_seconds`` say how many).
        gamma: Localization strength :math:`\gamma \ge 0`.
        num_steps: SGLD steps per chain, burn-in included; or ``"auto"``: sample in rounds (1000
            steps, then doubling the total up to ``max_steps``) until the trace has settled. After
            each round the burn-in b is the smallest of 10%, 20%, …, 50% of the trace (at least
            ``num_burnin_steps``) after which split-:math:`\hat R` ≤ 1.05 and the four quarters'
            :math:`\hat\lambda` spread (max − min) ≤ 10% of :math:`|\hat\lambda|`. A round *passes*
            if such a b exists; it stops at the first round that passes, whose previous round (the
            trace's first half) passed too, and whose :math:`\hat\lambda` moved ≤ 5% from the
            previous round's (so never before 2000 steps), else at ``max_steps`` (b as picked there, 50% if
            that round did not pass). Asking
            for two rounds in a row means a flat stretch must last as long again as the whole trace
            before it: deep DLNs can sit on a plateau for thousands of steps and then climb again
            (4→4→7→7→7 at rank 2, with ε = "auto": λ̂ flat at 9.1 for 4000 steps, then 11), which
            no test inside one round can see. ``stopping`` in the result records the rule, every
            round (``passes_within_round``, ``change_from_previous_round``) and why it stopped.
        num_chains: Independent chains, all started at :math:`w^*`.
        batch_size: Minibatch size m, 1 ≤ m ≤ n. Minibatches are drawn with replacement,
            independently per chain and step (no per-epoch O(n) shuffles). ``None`` or ``"full"``:
            exact full batch, all n samples every step in a fixed order (the exact gradient of
            :math:`L_n`; ``full_batch`` is set in the result and ``batch_size`` is n).
        nbeta: Inverse temperature :math:`n\beta`; ``None`` means :math:`n/\log n`.
        seed: Root seed; same seed, same result (bit for bit on CPU).
        num_burnin_steps: Leading steps run and kept in the trace but left out of
            :math:`\hat\lambda`.
        loss_trace_minibatch: If True (the reference code's default), the trace holds the
            minibatch loss at each step; if False, the full-data loss :math:`L_n(w_t)` (costs a
            pass over the data per step).
        control_variate: If True, the minibatch trace holds
            :math:`L_B(w_t) - L_B(w^*) + L_n(w^*)`, the same batch B evaluated at :math:`w_t` and at
            :math:`w^*` (one extra forward pass per step). Its mean is the same as the plain
            minibatch trace's, since B is drawn independently of :math:`w_t`, but the
            minibatch noise cancels: with noisy data at large n, where :math:`n\beta` times the
            minibatch noise swamps λ, this is the difference between a usable and a useless
            estimate. Ignored when ``loss_trace_minibatch`` is False.
        mala_every: Every this many steps, compute the MALA acceptance probability of the
            SGLD proposal (one extra forward and backward pass); 0 disables it. The default 50
            costs about 2% (every 10 cost 10-15%) and still averages 40 checks per chain over
            2,000 steps; the acceptance does not steer the chains.
        chain_batch_size: Chains advanced together in one vectorized call; ``None`` means all.
            Smaller values trade speed for memory; results do not depend on it.
        check_every: Steps between divergence checks (the only host synchronisations).
        progress: Show a ``tqdm`` progress bar.
        device: Where to sample; default the model's device.
        max_steps: Step budget per chain for ``num_steps="auto"``.
        preconditioner: Diagonal preconditioner P of the update
            :math:`\Delta w = -\frac\epsilon2 P(n\beta\nabla L_m + \gamma(w - w^*)) + \mathcal N(0, \epsilon P)`:
            None (P = I); ``{name: value}`` with the names of ``model.named_parameters()`` (names
            left out get 1); or a sequence with one value per trainable parameter tensor in
            ``model.parameters()`` order. A value is a number > 0 (the whole tensor) or a tensor of
            the parameter's shape. ``"rmsprop"`` or an :class:`RMSPropPreconditioner` adapts P
            per chain from the gradients. Not combinable with ``epsilon="auto"``.

    Returns:
        An :class:`LLCResult`. A chain *diverges* at the first step whose loss is NaN or
        infinite, or runs away: :math:`n\beta(L(w_t) - L_n(w^*)) > 100\cdot d/2 + 10\,n\beta\,\sigma_m`,
        i.e. a hundred times the largest possible λ (d/2, d = number of parameters) beyond ten
        standard deviations :math:`\sigma_m` of the minibatch loss at :math:`w^*`. A diverged
        chain is reset to :math:`w^*`, its estimate is NaN and excluded from
        :math:`\hat\lambda`, ``diverged`` is set, and a ``RuntimeWarning`` names the chain and step.

    Raises:
        ValueError: For an out-of-range argument (named in the message), empty data, a model
            that does not accept the data, a loss that is NaN/infinite at :math:`w^*` (the
            message names the parameters involved), or a preconditioner that does not fit the model.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = _Data(data, device)
    if preconditioner is not None and epsilon == "auto":
        raise ValueError("epsilon='auto' calibrates the step for P = I; with a preconditioner pass a number epsilon")
    _validate(source.n, epsilon, gamma, num_steps, num_chains, batch_size, nbeta, num_burnin_steps,
              mala_every, chain_batch_size, max_steps)
    full = batch_size is None or batch_size == "full"
    m = source.n if full else batch_size
    potential = _Potential(model, loss_fn, device)
    precond, precond_names = _flat_preconditioner(preconditioner, potential)
    nbeta = default_nbeta(source.n) if nbeta is None else float(nbeta)
    _probe(potential, source)
    init_loss, sigma_m = _checked_init_loss(potential, source, m, full)
    gens = _chain_generators(seed, num_chains, device)
    chains = _Chains(potential, source, gens, group=chain_batch_size or num_chains, batch_size=m, full=full,
                     nbeta=nbeta, gamma=gamma, init_loss=init_loss, sigma_m=sigma_m, check_every=check_every,
                     precond=precond)
    calibration = None
    if epsilon == "auto":
        calibration = _calibrate(
            potential, source, chains, gamma=gamma, nbeta=nbeta, bias_tolerance=0.02, max_stiffness=1.0,
            pilot_steps=_pilot_steps(max_steps if num_steps == "auto" else num_steps), min_acceptance=0.95,
            max_backoffs=8, seed=seed,
        )
        epsilon = calibration["epsilon"]
    run = dict(epsilon=epsilon, mala_every=mala_every, loss_trace_minibatch=loss_trace_minibatch,
               control_variate=control_variate)
    start = time.perf_counter()
    stopping = None
    with _progress_bar(progress, (max_steps if num_steps == "auto" else num_steps) * num_chains) as bar:
        if num_steps == "auto":
            loss_trace, acceptance, num_burnin_steps, stopping = _run_until_settled(
                chains, run, max_steps=max_steps, min_burnin=num_burnin_steps, bar=bar)
        else:
            loss_trace, acceptance = chains.run(num_steps, bar=bar, **run)
    wall = time.perf_counter() - start
    return _summarise(
        loss_trace, acceptance, chains.diverged_at, init_loss=init_loss, n=source.n, nbeta=nbeta, epsilon=epsilon,
        gamma=gamma, batch_size=m, num_burnin_steps=num_burnin_steps,
        loss_trace_minibatch=loss_trace_minibatch, control_variate=control_variate, seed=seed, wall=wall,
        calibration=calibration, full_batch=full, stopping=stopping,
        init_loss_method=f"full data, n={source.n}, in batches of {min(m, 4096) if full else m}",
        preconditioner=_precond_record(precond, chains.final_precond(), precond_names, potential.numels),
    )


def _checked_init_loss(potential: _Potential, source: _Data, batch_size: int, full: bool) -> tuple[float, float]:
    """:math:`L_n(w^*)` and the minibatch loss sd σ_m (0 for full batch); a ValueError if the loss is not finite."""
    init_loss, sigma_m = _init_loss(potential, source, min(batch_size, 4096) if full else batch_size)
    if not math.isfinite(init_loss):
        idx = next(source.chunks(min(batch_size, 4096)))
        _raise_nonfinite_loss(potential, init_loss, *source.batch(idx))
    return init_loss, 0.0 if full else sigma_m


def _settle(trace: np.ndarray, init_loss: float, nbeta: float, min_burnin: int) -> dict[str, Any]:
    """The stopping rule's verdict on a (chains, steps) trace: the burn-in it picks and whether it settled."""
    steps = trace.shape[1]
    verdict: dict[str, Any] = {}
    for fraction in _BURNIN_FRACTIONS:
        burnin = max(min_burnin, int(fraction * steps))
        post = trace[:, burnin:]
        if post.shape[1] < 8:
            break
        quarters = [float(nbeta * (q.mean() - init_loss)) for q in np.array_split(post, 4, axis=1)]
        lam = float(nbeta * (post.mean() - init_loss))
        spread = (max(quarters) - min(quarters)) / abs(lam) if lam != 0 else math.inf
        r = rhat(post)
        verdict = dict(steps=steps, burnin=burnin, lambdahat=lam, quarters=quarters, quarter_spread=spread, rhat=r,
                       settled=bool(spread <= _STOP_QUARTER_SPREAD and not r > _STOP_RHAT))
        if verdict["settled"]:
            break
    return verdict


def _run_until_settled(
    chains: _Chains, run: dict[str, Any], *, max_steps: int, min_burnin: int, bar,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """``num_steps="auto"``: rounds of doubling length until :func:`_settle` passes or ``max_steps`` is reached."""
    traces, accepts, rounds = [], [], []
    total, target = 0, min(_FIRST_ROUND_STEPS, max_steps)
    while True:
        # Each round's length is a multiple of mala_every, so the acceptance checks stay every mala_every steps.
        trace, accept = chains.run(target - total, bar=bar, **run)
        traces.append(trace)
        accepts.append(accept)
        total = target
        trace = np.concatenate(traces, axis=1)
        alive = np.array([s is None for s in chains.diverged_at])
        verdict = _settle(trace[alive], chains.init_loss, chains.nbeta, min_burnin) if alive.any() else {}
        # A slow climb can look flat within one round, and a DLN can sit on a plateau for thousands of
        # steps before it climbs again (4→4→7→7→7 at rank 2: flat at λ̂ ≈ 9.1 for 4000 steps, then up to
        # 11). So the round's verdict must be confirmed by the next round, which adds as many new steps as
        # the whole trace had, and λ̂ must agree with the previous round's.
        previous = rounds[-1] if rounds else {}
        if verdict:
            lam = verdict["lambdahat"]
            prev_lam = previous.get("lambdahat")
            change = abs(lam - prev_lam) / abs(lam) if prev_lam is not None and lam != 0 else math.inf
            verdict["change_from_previous_round"] = change
            verdict["passes_within_round"] = passes = verdict.pop("settled")
            verdict["settled"] = bool(passes and previous.get("passes_within_round", False)
                                      and change <= _STOP_ROUND_CHANGE)
        rounds.append(verdict or dict(steps=total, settled=False))
        if not alive.any():
            reason = "every chain diverged"
        elif verdict.get("settled"):
            reason = "settled"
        elif total >= max_steps:
            reason = "max_steps reached"
        else:
            target = min(2 * total, max_steps)
            continue
        break
    burnin = verdict.get("burnin", max(min_burnin, total // 2))
    stopping = dict(
        rule=f"rounds of {_FIRST_ROUND_STEPS} steps, doubling the total, until split-R-hat <= {_STOP_RHAT} and "
        f"(max - min) of the quarters' lambdahat <= {_STOP_QUARTER_SPREAD} |lambdahat| after a burn-in of "
        f"{', '.join(f'{f:.0%}' for f in _BURNIN_FRACTIONS)} of the trace (the first that passes), in this round "
        f"and in the previous one (the trace's first half), and lambdahat within {_STOP_ROUND_CHANGE} of the "
        f"previous round's",
        max_steps=max_steps,
        rounds=rounds,
        reason=reason,
        settled=reason == "settled",
    )
    return trace, np.concatenate(accepts, axis=1), burnin, stopping


@torch.no_grad()
def _init_loss(potential: _Potential, source: _Data, batch_size: int) -> tuple[float, float]:
    """:math:`L_n(w^*)` over the full data in batches of m, and the sd of the full batches' means."""
    means = []
    for idx in source.chunks(batch_size):
        x, y = source.batch(idx)
        means.append((float(potential.loss(potential.w_star, x, y)), len(idx)))
    init_loss = sum(v * k for v, k in means) / source.n
    full = [v for v, k in means if k == batch_size]
    return init_loss, float(np.std(full)) if len(full) > 1 else 0.0


def _progress_bar(enabled: bool, total: int):
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm  # optional dependency, imported only for the bar

    return tqdm(total=total, desc="SGLD", unit="chain-step")


class _Chains:
    """C chains that advance in stretches, keeping their states, generators and divergences between them.

    Chains run in groups of ``group`` (memory); a group's states are copied in and out of the (C, d)
    state only when there are several groups, so one group costs no extra memory. ``precond`` is the
    diagonal preconditioner P: None (P = I), a (d,) tensor, or an :class:`RMSPropPreconditioner`, whose
    running mean square V (C, d) is kept per chain across stretches, like the chains' states.
    """

    def __init__(self, potential: _Potential, source: _Data, gens: list[torch.Generator], *, group: int,
                 batch_size: int, full: bool, nbeta: float, gamma: float, init_loss: float, sigma_m: float,
                 check_every: int, precond: Tensor | RMSPropPreconditioner | None = None) -> None:
        self.potential, self.source, self.gens, self.group = potential, source, gens, group
        self.batch_size, self.nbeta, self.gamma = batch_size, nbeta, gamma
        self.init_loss, self.sigma_m, self.check_every = init_loss, sigma_m, check_every
        c = len(gens)
        self.w = potential.start(c) if group >= c else potential.w_star.expand(c, potential.d).clone()
        # Exact full batch: every sample once per step, in a fixed order; fetched once.
        self.full_xy = source.batch(torch.arange(source.n, device=source.device)) if full else None
        self.steps = 0
        self.diverged_at: list[int | None] = [None] * c
        self.precond = precond
        self.rms_v = torch.zeros_like(self.w) if isinstance(precond, RMSPropPreconditioner) else None

    def restart(self) -> None:
        """All chains back to w*, step count, divergences and adaptive preconditioner state cleared."""
        self.w.copy_(self.potential.w_star.expand_as(self.w))
        if self.rms_v is not None:
            self.rms_v.zero_()
        self.steps = 0
        self.reset_divergence()

    def reset_divergence(self) -> None:
        """Forget divergences (chains that diverged were already reset to w*) and count steps from 0."""
        self.diverged_at = [None] * len(self.gens)
        self.steps = 0

    def run(self, num_steps: int, *, epsilon: float, mala_every: int, loss_trace_minibatch: bool,
            control_variate: bool, bar=None) -> tuple[np.ndarray, np.ndarray]:
        """Advance every chain ``num_steps``; return the (C, num_steps) trace and the MALA acceptances."""
        # Runaway threshold: 100x the largest possible lambda (d/2) beyond 10 sd of minibatch noise.
        noisy = loss_trace_minibatch and not control_variate
        runaway = 100 * self.potential.d / 2 + 10 * self.nbeta * (self.sigma_m if noisy else 0.0)
        c = len(self.gens)
        traces, accepts = [], []
        for lo in range(0, c, self.group):
            gens = self.gens[lo : lo + self.group]
            w = self.w
            if self.group < c:
                w = self.potential.start(len(gens))
                w.copy_(self.w[lo : lo + len(gens)])
            # The group's rows of V are a view: _RMSProp updates them in place.
            precond = self.precond if self.rms_v is None else _RMSProp(self.precond, self.rms_v[lo : lo + len(gens)])
            t, a, dv = _run_chains(
                self.potential, self.source, gens, w, epsilon=epsilon, gamma=self.gamma, nbeta=self.nbeta,
                num_steps=num_steps, batch_size=self.batch_size, full_xy=self.full_xy,
                loss_trace_minibatch=loss_trace_minibatch, control_variate=control_variate, mala_every=mala_every,
                check_every=self.check_every, init_loss=self.init_loss, runaway=runaway, bar=bar, t0=self.steps,
                precond=precond,
            )
            if self.group < c:
                self.w[lo : lo + len(gens)].copy_(w)
            traces.append(t)
            accepts.append(a)
            for i, step in enumerate(dv):
                if self.diverged_at[lo + i] is None:
                    self.diverged_at[lo + i] = step
        self.steps += num_steps
        return np.concatenate(traces, axis=0), np.concatenate(accepts, axis=0)

    def final_precond(self) -> list[Tensor]:
        """The adaptive P (C, d) of the last step, as a one-element list; empty for a fixed P or none."""
        if self.rms_v is None:
            return []
        return [_RMSProp(self.precond, self.rms_v).precond()]


def _run_chains(
    potential: _Potential, source: _Data, gens: Sequence[torch.Generator], w: Tensor, *, epsilon: float,
    gamma: float, nbeta: float, num_steps: int, batch_size: int, full_xy: tuple[Tensor, Tensor] | None,
    loss_trace_minibatch: bool, control_variate: bool, mala_every: int, check_every: int, init_loss: float,
    runaway: float, bar, t0: int = 0, precond: Tensor | _RMSProp | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
    """Advance one group of chains ``w`` (C, d) in place; return its trace, MALA acceptances, divergence steps.

    ``precond`` is P: a (d,) tensor, or the group's RMSProp state, updated in place every step.
    """
    c, d, device = len(gens), potential.d, source.device
    w_star = potential.w_star
    w_star_c = w_star.expand(c, d)
    noise = torch.empty_like(w)
    idx = torch.empty(c, batch_size, dtype=torch.long, device=device)
    # Row views made once: each chain's generator fills its own row in place, every step.
    rows = list(zip(gens, idx, noise))
    if full_xy is not None:
        x, y = (t.expand(c, *t.shape) for t in full_xy)
    trace = torch.empty(c, num_steps, device=device, dtype=torch.float64)
    num_mala = len(range(0, num_steps, mala_every)) if mala_every else 0
    accept = torch.full((c, num_mala), float("nan"), device=device, dtype=torch.float64)
    diverged_at: list[int | None] = [None] * c
    checked = 0
    adaptive = isinstance(precond, _RMSProp)
    p = None if adaptive else precond
    for t in range(num_steps):
        if full_xy is None:
            for g, idx_i, _ in rows:
                torch.randint(source.n, (batch_size,), generator=g, device=device, out=idx_i)
            x, y = source.batch(idx)
        grad, loss = potential.grad_value(w, x, y)
        if not loss_trace_minibatch:
            trace[:, t] = potential.full_loss(w, source, batch_size)
        elif control_variate:
            trace[:, t] = loss - potential.batch_loss(w_star_c, x, y) + init_loss
        else:
            trace[:, t] = loss
        for g, _, noise_i in rows:
            torch.randn(d, generator=g, device=device, out=noise_i)
        if adaptive:
            p = precond.update(nbeta * grad + gamma * (w - w_star))
        if mala_every and t % mala_every == 0:
            w_old = w.clone()
            sgld_update_(w, grad, w_star, noise, epsilon=epsilon, nbeta=nbeta, gamma=gamma, precond=p)
            accept[:, t // mala_every] = _mala_acceptance(
                potential, w_old, grad, loss, w, noise, x, y, w_star, epsilon, nbeta, gamma, p
            )
        else:
            sgld_update_(w, grad, w_star, noise, epsilon=epsilon, nbeta=nbeta, gamma=gamma, precond=p)
        if t + 1 - checked >= check_every or t == num_steps - 1:
            _check_divergence(trace, checked, t + 1, diverged_at, w, w_star, init_loss, nbeta, runaway, t0)
            if bar is not None:
                bar.update(c * (t + 1 - checked))
            checked = t + 1
    return trace.cpu().numpy(), accept.cpu().numpy(), diverged_at


class _RMSProp:
    """The state of :class:`RMSPropPreconditioner` for C chains: V (C, d), owned by the caller, and P from it."""

    def __init__(self, config: RMSPropPreconditioner, v: Tensor) -> None:
        self.decay, self.damping = config.decay, config.damping
        self.v = v

    def update(self, grad: Tensor) -> Tensor:
        """Fold in this step's drift gradients (C, d) in place; return P (C, d), mean 1 per chain."""
        self.v.mul_(self.decay).addcmul_(grad, grad, value=1 - self.decay)
        return self.precond()

    def precond(self) -> Tensor:
        """P (C, d) from the current V, mean 1 per chain."""
        r = self.v.sqrt()
        # In units of the mean RMS gradient (scale-free); where all gradients vanish, P = 1.
        r = r / r.mean(dim=1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        u = 1.0 / (r + self.damping)
        return u / u.mean(dim=1, keepdim=True)


def _flat_preconditioner(
    spec: Preconditioner, potential: _Potential
) -> tuple[Tensor | RMSPropPreconditioner | None, list[str]]:
    """The ``preconditioner`` argument as a (d,) tensor in the potential's layout (or the RMSProp config), and names."""
    # The potential's blocks: the trainable tensors of model.named_parameters(), tied ones once.
    names = list(potential.names)
    shapes = dict(zip(names, potential.shapes, strict=True))
    if spec is None:
        return None, names
    if isinstance(spec, str):
        if spec != "rmsprop":
            raise ValueError(f"unknown preconditioner {spec!r}: the only named one is 'rmsprop'; or give P by "
                             f"parameter name, e.g. {{{names[0]!r}: 2.0}}")
        return RMSPropPreconditioner(), names
    if isinstance(spec, RMSPropPreconditioner):
        return spec, names
    if isinstance(spec, dict):
        unknown = sorted(set(spec) - set(names))
        if unknown:
            raise ValueError(f"preconditioner names unknown parameter {unknown[0]!r}; the model's are {names}")
        values = [spec.get(name, 1.0) for name in names]
    elif isinstance(spec, (list, tuple)):
        if len(spec) != len(names):
            raise ValueError(f"preconditioner has {len(spec)} entries but the model has {len(names)} trainable "
                             f"parameter tensors {names}; give one per tensor, or a dict by name")
        values = list(spec)
    else:
        raise ValueError(f"preconditioner must be None, 'rmsprop', an RMSPropPreconditioner, a dict by parameter "
                         f"name or a sequence per parameter tensor; got {type(spec).__name__}")
    like = {name: torch.empty(shapes[name], device=potential.w_star.device) for name in names}
    blocks = []
    for name, value in zip(names, values, strict=True):
        v = _check_precond(value, f"preconditioner[{name!r}]", like[name])
        blocks.append(torch.full((like[name].numel(),), v) if isinstance(v, float) else v.reshape(-1).cpu())
    return torch.cat(blocks).to(potential.w_star.device, potential.w_star.dtype), names


def _precond_record(
    precond: Tensor | RMSPropPreconditioner | None, final: list[Tensor | None], names: list[str], numels: list[int]
) -> dict | None:
    """What P was, per parameter tensor by name, for ``LLCResult.preconditioner``."""
    if precond is None:
        return None

    def summary(block: Tensor) -> float | dict[str, float]:
        lo, hi = float(block.min()), float(block.max())
        return lo if lo == hi else {"mean": float(block.mean()), "min": lo, "max": hi}

    if isinstance(precond, Tensor):
        blocks = precond.cpu().split(numels)
        return {"kind": "fixed", "per_tensor": {n: summary(b) for n, b in zip(names, blocks, strict=True)}}
    last = torch.cat([p for p in final if p is not None]).mean(dim=0).cpu()
    return {"kind": "rmsprop", "decay": precond.decay, "damping": precond.damping,
            "final_mean_per_tensor": {n: float(b.mean()) for n, b in zip(names, last.split(numels), strict=True)}}


def _mala_acceptance(
    potential: _Potential, w_old: Tensor, grad_old: Tensor, loss_old: Tensor, w_new: Tensor, noise: Tensor,
    x: Tensor, y: Tensor, w_star: Tensor, epsilon: float, nbeta: float, gamma: float, precond: Tensor | None = None,
) -> Tensor:
    r"""Metropolis–Hastings acceptance probability of the SGLD proposal :math:`w \to w'`, per chain.

    With :math:`U = n\beta L_m + \frac\gamma2\lVert w - w^*\rVert^2` on the step's minibatch and the
    Langevin proposal :math:`q(w'|w) = \mathcal N(w - \frac\epsilon2 P\nabla U(w), \epsilon P)`,
    :math:`\alpha = \min\{1, e^{-U(w') + U(w)}\, q(w|w')/q(w'|w)\}`. Differences of squared norms are
    formed as products of differences, to stay accurate in float32 at large d.
    """
    grad_new, loss_new = potential.grad_value(w_new, x, y)
    grad_u_old = nbeta * grad_old + gamma * (w_old - w_star)
    grad_u_new = nbeta * grad_new + gamma * (w_new - w_star)
    delta_u = nbeta * (loss_new - loss_old).double() + 0.5 * gamma * (
        (w_new - w_old) * (w_new + w_old - 2 * w_star)
    ).sum(dim=1).double()
    # Reverse residual r = -√ε ξ + a with a = ε/2 (∇U(w) + ∇U(w')); forward residual is √ε ξ.
    # With P: a = ε/2 P (∇U(w) + ∇U(w')), noise √(εP) ξ, and the norms are in the metric P⁻¹.
    if precond is None:
        a = 0.5 * epsilon * (grad_u_old + grad_u_new)
        log_q_ratio = -(a * (a - 2 * math.sqrt(epsilon) * noise)).sum(dim=1).double() / (2 * epsilon)
    else:
        g_sum = grad_u_old + grad_u_new
        a = 0.5 * epsilon * precond * g_sum
        log_q_ratio = -(g_sum * (a - 2 * math.sqrt(epsilon) * precond.sqrt() * noise)).sum(dim=1).double() / 4
    log_alpha = -delta_u + log_q_ratio
    return torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0).exp()


def _check_divergence(
    trace: Tensor, lo: int, hi: int, diverged_at: list[int | None], w: Tensor, w_star: Tensor,
    init_loss: float, nbeta: float, runaway: float, t0: int = 0,
) -> None:
    """Mark chains whose trace in [lo, hi) is non-finite or ran away; reset them to w*. Steps count from ``t0``."""
    seg = trace[:, lo:hi]
    bad = ~torch.isfinite(seg) | (nbeta * (seg - init_loss) > runaway)
    if not bool(bad.any()):
        return
    for chain in torch.nonzero(bad.any(dim=1)).flatten().tolist():
        if diverged_at[chain] is None:
            step = lo + int(torch.nonzero(bad[chain])[0])
            diverged_at[chain] = t0 + step
            warnings.warn(
                f"SGLD chain {chain} diverged at step {t0 + step} (loss {float(trace[chain, step]):.4g}, "
                f"L_n(w*) = {init_loss:.4g}); it is excluded from lambdahat. Reduce epsilon.",
                RuntimeWarning,
                stacklevel=5,
            )
        w[chain] = w_star


def _summarise(
    loss_trace: np.ndarray, acceptance: np.ndarray, diverged_at: list[int | None], *, init_loss: float, n: int,
    nbeta: float, epsilon: float, gamma: float, batch_size: int, num_burnin_steps: int,
    loss_trace_minibatch: bool, control_variate: bool, seed: int, wall: float, calibration: dict | None,
    init_loss_method: str, full_batch: bool = False, stopping: dict | None = None,
    preconditioner: dict | None = None,
) -> LLCResult:
    """Turn raw chain output into an :class:`LLCResult` with its diagnostics."""
    num_chains, num_steps = loss_trace.shape
    alive = np.array([s is None for s in diverged_at])
    per_chain = llc_from_losses(loss_trace, init_loss, nbeta, num_burnin_steps)
    per_chain[~alive] = np.nan
    post = loss_trace[alive, num_burnin_steps:]
    nan = float("nan")
    if alive.any():
        lambdahat = float(per_chain[alive].mean())
        quarters = [float(nbeta * (q.mean() - init_loss)) for q in np.array_split(post, 4, axis=1) if q.size]
        quarters += [nan] * (4 - len(quarters))
    else:
        lambdahat, quarters = nan, [nan] * 4
        warnings.warn("every SGLD chain diverged: lambdahat is NaN. Reduce epsilon.", RuntimeWarning, stacklevel=3)
    std = float(per_chain[alive].std(ddof=1)) if alive.sum() > 1 else nan
    result = LLCResult(
        lambdahat=lambdahat,
        lambdahat_std=std,
        lambdahat_per_chain=per_chain,
        lambdahat_quarters=quarters,
        loss_trace=loss_trace,
        init_loss=float(init_loss),
        mala_acceptance=float(np.nanmean(acceptance[alive])) if acceptance.size and alive.any() else nan,
        rhat=rhat(post) if alive.any() else nan,
        ess=ess(post) if alive.any() else nan,
        diverged=not alive.all(),
        divergence_step=list(diverged_at),
        n=n,
        nbeta=float(nbeta),
        epsilon=float(epsilon),
        gamma=float(gamma),
        batch_size=batch_size,
        num_chains=num_chains,
        num_steps=num_steps,
        num_burnin_steps=num_burnin_steps,
        loss_trace_minibatch=loss_trace_minibatch,
        control_variate=control_variate and loss_trace_minibatch,
        init_loss_method=init_loss_method,
        seed=seed,
        wall_time=wall,
        epsilon_calibration=calibration,
        full_batch=full_batch,
        calibration_seconds=calibration["calibration_seconds"] if calibration else 0.0,
        calibration_steps=calibration["calibration_steps"] if calibration else 0,
        stopping=stopping,
        preconditioner=preconditioner,
    )
    if math.isfinite(result.rhat) and result.rhat > 1.1:
        warnings.warn(
            f"the loss trace has not settled (split-R-hat {result.rhat:.2f} > 1.1; lambdahat by quarter "
            f"{[round(q, 3) for q in quarters]}): run more steps, add burn-in or revisit epsilon.",
            UserWarning,
            stacklevel=3,
        )
    return result


def mala_estimate_llc(
    model: nn.Module,
    loss_fn: LossFn,
    data: Data,
    *,
    epsilon: float,
    gamma: float = 1.0,
    num_steps: int = 1000,
    num_chains: int = 4,
    nbeta: float | None = None,
    seed: int = 0,
    num_burnin_steps: int = 0,
    eval_batch_size: int = 4096,
    device: torch.device | str | None = None,
) -> LLCResult:
    r"""Reference estimate with full-batch Metropolis-adjusted Langevin (MALA), exact up to mixing.

    Same posterior and estimator as :func:`estimate_llc`, but every proposal
    :math:`w' = w - \frac\epsilon2\nabla U(w) + \sqrt\epsilon\,\xi` uses the full-data gradient of
    :math:`U = n\beta L_n + \frac\gamma2\lVert w-w^*\rVert^2` and is accepted with the
    Metropolis–Hastings probability (Roberts & Tweedie 1996), so no step-size bias remains. The
    trace holds :math:`L_n(w_t)`. Each step costs a full pass over the data: use it to check SGLD.

    Args:
        model: The model at :math:`w^*`.
        loss_fn: Mean loss ``loss_fn(output, target)``.
        data: As for :func:`estimate_llc`.
        epsilon: Proposal step size :math:`\epsilon > 0`.
        gamma: Localization :math:`\gamma \ge 0`.
        num_steps: Steps per chain, burn-in included.
        num_chains: Chains, all started at :math:`w^*`.
        nbeta: Inverse temperature; default :math:`n/\log n`.
        seed: Root seed.
        num_burnin_steps: Leading steps left out of :math:`\hat\lambda`.
        eval_batch_size: Samples per forward pass when summing over the data.
        device: Where to compute; default the model's device.

    Returns:
        An :class:`LLCResult` whose ``mala_acceptance`` is the realised acceptance rate.

    Raises:
        ValueError: For an out-of-range argument.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = _Data(data, device)
    _validate(source.n, epsilon, gamma, num_steps, num_chains, 1, nbeta, num_burnin_steps, 0, None)
    potential = _Potential(model, loss_fn, device)
    nbeta = default_nbeta(source.n) if nbeta is None else float(nbeta)
    gens = _chain_generators(seed, num_chains, device)
    bs = min(eval_batch_size, source.n)
    _probe(potential, source)
    start = time.perf_counter()
    w_star = potential.w_star
    init_loss = float(potential.full_loss(w_star[None], source, bs)[0])

    def grad_and_u(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, loss = potential.full_grad_value(w, source, bs)
        dist = w - w_star
        grad_u = nbeta * g + gamma * dist
        u = nbeta * loss + 0.5 * gamma * (dist.double() ** 2).sum(dim=1)
        return grad_u, u, loss

    w = w_star.expand(num_chains, potential.d).clone()
    grad_u, u, loss = grad_and_u(w)
    trace = torch.empty(num_chains, num_steps, dtype=torch.float64, device=device)
    accepted = torch.zeros(num_chains, dtype=torch.float64, device=device)
    noise = torch.empty_like(w)
    uniform = torch.empty(num_chains, dtype=torch.float64, device=device)
    for t in range(num_steps):
        for i, g in enumerate(gens):
            torch.randn(potential.d, generator=g, device=device, out=noise[i])
            torch.rand(1, generator=g, device=device, dtype=torch.float64, out=uniform[i : i + 1])
        proposal = w - 0.5 * epsilon * grad_u + math.sqrt(epsilon) * noise
        grad_p, u_p, loss_p = grad_and_u(proposal)
        a = 0.5 * epsilon * (grad_u + grad_p)
        log_q_ratio = -(a * (a - 2 * math.sqrt(epsilon) * noise)).sum(dim=1).double() / (2 * epsilon)
        log_alpha = torch.nan_to_num(-(u_p - u) + log_q_ratio, nan=-math.inf)
        accept = torch.log(uniform) < log_alpha
        w = torch.where(accept[:, None], proposal, w)
        grad_u = torch.where(accept[:, None], grad_p, grad_u)
        u = torch.where(accept, u_p, u)
        loss = torch.where(accept, loss_p, loss)
        accepted += accept
        trace[:, t] = loss
    wall = time.perf_counter() - start
    rate = (accepted / num_steps).cpu().numpy()[:, None]
    return _summarise(
        trace.cpu().numpy(), rate, [None] * num_chains, init_loss=init_loss, n=source.n, nbeta=nbeta,
        epsilon=epsilon, gamma=gamma, batch_size=source.n, num_burnin_steps=num_burnin_steps,
        loss_trace_minibatch=False, control_variate=False, seed=seed, wall=wall, calibration=None,
        init_loss_method=f"full data, n={source.n}, in batches of {bs}",
    )
