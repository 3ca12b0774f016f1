r"""The SGLD update, the optimizer, and the diagonal preconditioners P, all in one place.

:math:`\Delta w = -\frac\epsilon2 P\bigl(n\beta\nabla L_m(w) + \gamma(w - w^*)\bigr) + \mathcal N(0, \epsilon P)`
(see the ``sgld`` package docstring): :func:`sgld_update_` applies it to a tensor in place,
:class:`SGLD` is the same step as a ``torch.optim.Optimizer``, and a preconditioner P is either fixed
(a number or a tensor per parameter, laid out by :func:`flat_preconditioner`) or adapted along each
chain (:class:`RMSPropPreconditioner`, with its per-chain state :class:`RMSProp`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgld.checks import check_nonnegative, check_positive

__all__ = [
    "SGLD",
    "Preconditioner",
    "RMSProp",
    "RMSPropPreconditioner",
    "flat_preconditioner",
    "precond_record",
    "sgld_update_",
]

# None (P = I), "rmsprop", an RMSPropPreconditioner, {parameter name: float | Tensor} (missing names: 1),
# or one float | Tensor per trainable parameter tensor, in model.parameters() order.
Preconditioner = Any


def sgld_update_(
    w: Tensor, grad: Tensor, w_star: Tensor, noise: Tensor, *, epsilon: float, nbeta: float, gamma: float,
    precond: Tensor | float | None = None,
) -> Tensor:
    r"""One SGLD step in place.

    :math:`w \leftarrow w - \frac\epsilon2 P(n\beta g + \gamma(w-w^*)) + \sqrt{\epsilon P}\,\xi`.

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
        check_positive("epsilon", epsilon)
        check_positive("nbeta", nbeta)
        check_nonnegative("gamma", gamma)
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
    """A group's ``preconditioner`` for its ``index``-th parameter, checked.

    Args:
        value: The group's setting: one value for all its parameters, or a sequence with one per parameter.
        index: The parameter's position in the group.
        p: The parameter.

    Returns:
        P for ``p``, as :func:`_check_precond` returns it.
    """
    if isinstance(value, (list, tuple)):
        value = value[index]
    return _check_precond(value, f"preconditioner of a {tuple(p.shape)} parameter", p)


def _check_precond(value, what: str, p: Tensor) -> float | Tensor:
    """A value of P for the parameter ``p``, checked.

    Args:
        value: A number, or a tensor of ``p``'s shape (or with one element).
        what: How to name the value in an error message.
        p: The parameter.

    Returns:
        A float, or a tensor on ``p``'s device and dtype.

    Raises:
        ValueError: If ``value`` is not finite and > 0 everywhere, or a tensor of another shape.
    """
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
        check_positive("RMSPropPreconditioner.damping", self.damping)


class RMSProp:
    """The running state of an :class:`RMSPropPreconditioner` for C chains: V (C, d), and P from it.

    Args:
        config: Decay and damping.
        v: V (C, d), owned by the caller (e.g. a group's rows of every chain's V) and updated in place.
    """

    def __init__(self, config: RMSPropPreconditioner, v: Tensor) -> None:
        self.decay, self.damping = config.decay, config.damping
        self.v = v

    def update(self, grad: Tensor) -> Tensor:
        r"""Fold this step's drift gradients into V, in place.

        Args:
            grad: (C, d) drift gradients :math:`n\beta\nabla L_m(w) + \gamma(w - w^*)`.

        Returns:
            P (C, d) from the updated V, mean 1 per chain.
        """
        self.v.mul_(self.decay).addcmul_(grad, grad, value=1 - self.decay)
        return self.precond()

    def precond(self) -> Tensor:
        """P from the current V.

        Returns:
            P (C, d), mean 1 per chain.
        """
        r = self.v.sqrt()
        # In units of the mean RMS gradient (scale-free); where all gradients vanish, P = 1.
        r = r / r.mean(dim=1, keepdim=True).clamp_min(torch.finfo(r.dtype).tiny)
        u = 1.0 / (r + self.damping)
        return u / u.mean(dim=1, keepdim=True)


def flat_preconditioner(
    spec: Preconditioner, names: Sequence[str], shapes: Sequence[torch.Size], w_star: Tensor
) -> tuple[Tensor | RMSPropPreconditioner | None, list[str]]:
    """The ``preconditioner`` argument of ``estimate_llc`` in the layout of the flat parameter vector.

    Args:
        spec: As ``estimate_llc``'s ``preconditioner``.
        names: The vector's blocks in order: the trainable tensors of ``model.named_parameters()``,
            tied ones once (``Potential.names``).
        shapes: Their shapes.
        w_star: The flat :math:`w^*` (d,), whose device and dtype P takes.

    Returns:
        P as a (d,) tensor, the :class:`RMSPropPreconditioner` to adapt, or None (P = I); and the names.

    Raises:
        ValueError: For an unknown name, a wrong number of entries, a value that is not finite and
            > 0, a tensor of the wrong shape, or a ``spec`` of another type.
    """
    names = list(names)
    shapes = dict(zip(names, shapes, strict=True))
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
    like = {name: torch.empty(shapes[name], device=w_star.device) for name in names}
    blocks = []
    for name, value in zip(names, values, strict=True):
        v = _check_precond(value, f"preconditioner[{name!r}]", like[name])
        blocks.append(torch.full((like[name].numel(),), v) if isinstance(v, float) else v.reshape(-1).cpu())
    return torch.cat(blocks).to(w_star.device, w_star.dtype), names


def precond_record(
    precond: Tensor | RMSPropPreconditioner | None, final: list[Tensor | None], names: list[str], numels: list[int]
) -> dict | None:
    """What P was, per parameter tensor by name, for ``LLCResult.preconditioner``.

    Args:
        precond: P as :func:`flat_preconditioner` returned it.
        final: For an adaptive P, its (C, d) values at the last step (``Chains.final_precond``).
        names: The parameter tensors' names.
        numels: Their sizes, in the flat vector's order.

    Returns:
        None for P = I; else ``kind`` ("fixed" or "rmsprop") and P per tensor (see ``LLCResult``).
    """
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


