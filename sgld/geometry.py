r"""The local geometry that sets the step size: curvature, Hessian trace and gradient noise.

All of the local potential :math:`U = n\beta L + \tfrac\gamma2\lVert w - w^*\rVert^2`: its largest
Hessian eigenvalue (power iteration) and trace (Hutchinson's estimator) from Hessian-vector
products, and :math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m)`, the minibatch gradient's
total variance, with the float-resolution floor below which it counts as zero; all of them at
:math:`w^*` in one :class:`Geometry` (:func:`measure_geometry`). How ``calibrate_epsilon`` turns
them into ε is in ``sgld.calibration``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sgld.potential import Potential
from sgld.source import DataSource

__all__ = [
    "CURVATURE_SOURCES",
    "Geometry",
    "above_floor",
    "curvature",
    "gradient_noise",
    "hessian_trace_at",
    "mean_hessian_trace",
    "measure_geometry",
    "noise_floor",
    "usable_curvature",
]


def _hvp_fn(
    potential: Potential, x: Tensor, y: Tensor, nbeta: float, gamma: float, at: Tensor | None = None
) -> Callable[[Tensor], Tensor]:
    r"""Hessian-vector products of the local potential :math:`n\beta L + \gamma/2\lVert w-w^*\rVert^2`.

    Args:
        potential: The potential.
        x: Inputs of the batch that defines L.
        y: Its targets.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        at: The point (d,); default :math:`w^*`.

    Returns:
        ``v -> H v`` for (d,) vectors v.
    """
    # Reverse-over-reverse (the Hessian is symmetric, so a VJP of the gradient is an HVP), linearised
    # once for all products. Forward-over-reverse (jvp of grad) fails on F.mse_loss in torch 2.14
    # ("ZeroTensors are immutable", from the target's absent tangent).
    point = potential.w_star if at is None else at
    _, vjp_fn = torch.func.vjp(lambda w: torch.func.grad(potential.loss)(w, x, y), point)

    def hvp(v: Tensor) -> Tensor:
        (hv,) = vjp_fn(v)
        return nbeta * hv + gamma * v

    return hvp


def curvature(
    potential: Potential, data: DataSource, nbeta: float, gamma: float, generator: torch.Generator,
    num_samples: int = 4096, num_iter: int = 30, num_probes: int = 16,
) -> tuple[float, float]:
    r"""Largest eigenvalue (power iteration) and trace (Hutchinson) of the local potential's Hessian at w*.

    Args:
        potential: The potential.
        data: The samples; up to ``num_samples`` of them, drawn with replacement, define L.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        generator: Source of the samples, the start vector and the probes.
        num_samples: Samples drawn.
        num_iter: Most power iterations (they stop at a relative change below 1e-3).
        num_probes: Rademacher probes of the trace.

    Returns:
        :math:`a_{\max}` (the Rayleigh quotient of the last iterate: the largest-magnitude
        eigenvalue, which may be negative) and :math:`\max(\operatorname{tr} H, a_{\max})`.
    """
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


def gradient_noise(
    potential: Potential, data: DataSource, batch_size: int, generator: torch.Generator, num_batches: int = 16,
    w: Tensor | None = None,
) -> float:
    r""":math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m(w))`, the minibatch gradient's total variance.

    Args:
        potential: The potential.
        data: The samples.
        batch_size: m.
        generator: Source of the minibatches.
        num_batches: Minibatches per point.
        w: (C, d) points to average over, e.g. the states of warmed-up chains; default :math:`w^*`.

    Returns:
        The variance summed over the d coordinates, averaged over the points; 0.0 for full batch.
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


def noise_floor(hessian_trace: float, nbeta: float, dtype: torch.dtype) -> float:
    r"""Gradient noise below which :math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m)` counts as zero.

    The noise enters ε only through the bias rate :math:`(\operatorname{tr} H + n\beta^2
    \operatorname{tr}\operatorname{Cov})/8`. A noise term smaller than the float resolution of the
    parameters' dtype (float32: 1.2e-7) relative to :math:`\operatorname{tr} H` cannot change that sum
    at the precision the model computes in; it is rounding residue, not noise. For noise-free data
    the measured value is 0.0 on one CPU and 6e-17 on another (summation order differs between BLAS
    builds): both sit many orders of magnitude below this floor, so both take the same path.

    Args:
        hessian_trace: :math:`\operatorname{tr} H` of the local potential.
        nbeta: :math:`n\beta`.
        dtype: The parameters' dtype.

    Returns:
        :math:`u \lvert\operatorname{tr} H\rvert / n\beta^2`, u the dtype's float resolution.
    """
    return torch.finfo(dtype).eps * abs(hessian_trace) / nbeta**2


def above_floor(noise: float, floor: float) -> float:
    r"""Gradient noise with rounding residue set to zero.

    Args:
        noise: Measured :math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m)`.
        floor: :func:`noise_floor`.

    Returns:
        ``noise``, or exactly 0.0 when it is at or below ``floor``.
    """
    return noise if noise > floor else 0.0


def hessian_trace_at(
    potential: Potential, data: DataSource, nbeta: float, gamma: float, generator: torch.Generator, w: Tensor,
    num_samples: int = 4096, num_probes: int = 16,
) -> float:
    r"""Hutchinson's estimate of tr H of the local potential at a point.

    Args:
        potential: The potential.
        data: The samples; up to ``num_samples`` of them, drawn with replacement, define L.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        generator: Source of the samples and the probes.
        w: The point (d,), e.g. a chain's state.
        num_samples: Samples drawn.
        num_probes: Rademacher probes.

    Returns:
        The estimate of tr H.
    """
    idx = torch.randint(data.n, (min(num_samples, data.n),), generator=generator, device=generator.device)
    x, y = data.batch(idx.to(data.device))
    hvp = _hvp_fn(potential, x, y, nbeta, gamma, at=w.detach().clone())
    probes = torch.randint(0, 2, (num_probes, potential.d), generator=generator, device=data.device) * 2.0 - 1
    return float(np.mean([float(z @ hvp(z)) for z in probes]))


def mean_hessian_trace(
    potential: Potential, data: DataSource, nbeta: float, gamma: float, generator: torch.Generator, states: Tensor,
    num_samples: int = 4096, num_probes: int = 16,
) -> float:
    r"""Hutchinson's tr H of the local potential averaged over points, e.g. the chains' current states.

    Args:
        potential: The potential.
        data: The samples (up to ``num_samples`` of them, per point).
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        generator: Source of the samples and the probes.
        states: (C, d) points.
        num_samples: Samples drawn per point.
        num_probes: Rademacher probes per point.

    Returns:
        The mean estimate; NaN for a model that ``torch.func`` cannot differentiate twice (as at
        :math:`w^*`, see :func:`measure_geometry`: the MALA acceptance checks still guard the step).
    """
    try:
        return float(np.mean([hessian_trace_at(potential, data, nbeta, gamma, generator, w, num_samples, num_probes)
                              for w in states]))
    except RuntimeError:
        return float("nan")


# Fallback when the Hessian at w* gives no usable scale: a loss of O(1) curvature per sample gives
# nβ L a curvature of O(nβ); the MALA acceptance search then corrects this first guess.
CURVATURE_SOURCES = {
    "w*": "largest eigenvalue and trace of the Hessian at w*",
    "|a| at w*": "|largest-magnitude eigenvalue| at w* (it is negative: w* is not a minimum of the local potential)",
    "nbeta + gamma": "unit-curvature guess nbeta + gamma (the curvature at w* is zero or non-finite); "
    "the step is then set by the MALA acceptance search alone",
}


def usable_curvature(a_max: float, trace: float, nbeta: float, gamma: float) -> tuple[float, float, str]:
    r"""The curvature and trace to build ε from: the measured ones when they give a positive scale, else a fallback.

    Args:
        a_max: Measured largest-magnitude eigenvalue (may be negative, zero or NaN).
        trace: Measured trace.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.

    Returns:
        (a, tr H, source), ``source`` a key of :data:`CURVATURE_SOURCES`.
    """
    if math.isfinite(a_max) and a_max > 0:
        return a_max, max(abs(trace), a_max) if math.isfinite(trace) else a_max, "w*"
    if math.isfinite(a_max) and a_max < 0:
        return -a_max, max(abs(trace), -a_max) if math.isfinite(trace) else -a_max, "|a| at w*"
    return nbeta + gamma, nbeta + gamma, "nbeta + gamma"



@dataclass(frozen=True)
class Geometry:
    r"""The local potential at :math:`w^*` as the step-size rule sees it.

    Attributes:
        a_max: Largest-magnitude Hessian eigenvalue, as measured (NaN if none).
        hessian_trace: tr H, as measured (NaN if none).
        curvature_used: The curvature a that ε is built from (:func:`usable_curvature`).
        hessian_trace_used: The tr H that ε is built from.
        source_key: Which path gave them, a key of :data:`CURVATURE_SOURCES`.
        gradient_noise_measured: :math:`\operatorname{tr}\operatorname{Cov}(\nabla L_m(w^*))`, as measured
            (0.0 if not finite).
        gradient_noise_floor: :func:`noise_floor` at ``hessian_trace_used``.
        gradient_noise: The measured noise, 0.0 at or below the floor.
    """

    a_max: float
    hessian_trace: float
    curvature_used: float
    hessian_trace_used: float
    source_key: str
    gradient_noise_measured: float
    gradient_noise_floor: float
    gradient_noise: float


def measure_geometry(
    potential: Potential, source: DataSource, batch_size: int, nbeta: float, gamma: float,
    generator: torch.Generator,
) -> Geometry:
    r"""Curvature, Hessian trace and gradient noise at :math:`w^*`, and the curvature to build ε from.

    A model that ``torch.func`` cannot differentiate twice gives no curvature (a ``RuntimeWarning``
    whose ``stacklevel`` points at the caller of ``calibrate_epsilon``/``estimate_llc``) and takes the
    fallback of :func:`usable_curvature`.

    Args:
        potential: The potential at :math:`w^*`.
        source: The samples.
        batch_size: m of the run to calibrate for.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        generator: Source of the samples and probes, in this order: :func:`curvature`, then
            :func:`gradient_noise`.

    Returns:
        The :class:`Geometry`.
    """
    try:
        a_max, trace = curvature(potential, source, nbeta, gamma, generator)
    except RuntimeError as err:  # a model that torch.func cannot differentiate twice: no curvature
        warnings.warn(f"calibrate_epsilon: no Hessian-vector products ({err}); using the fallback", RuntimeWarning,
                      stacklevel=4)
        a_max = trace = float("nan")
    a_used, trace_used, source_key = usable_curvature(a_max, trace, nbeta, gamma)
    noise_measured = gradient_noise(potential, source, batch_size, generator)
    if not math.isfinite(noise_measured):
        noise_measured = 0.0  # NaN/inf minibatch gradients at w* carry no usable scale; the acceptance guards
    floor = noise_floor(trace_used, nbeta, potential.w_star.dtype)
    return Geometry(
        a_max=a_max, hessian_trace=trace, curvature_used=a_used, hessian_trace_used=trace_used, source_key=source_key,
        gradient_noise_measured=noise_measured, gradient_noise_floor=floor,
        gradient_noise=above_floor(noise_measured, floor),
    )
