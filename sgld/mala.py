r"""Metropolis–Hastings for the Langevin proposal: SGLD's acceptance diagnostic, and full-batch MALA.

The proposal :math:`q(w'|w) = \mathcal N(w - \frac\epsilon2 P\nabla U(w), \epsilon P)` on the local
potential :math:`U = n\beta L + \frac\gamma2\lVert w - w^*\rVert^2` is SGLD's step. Its
Metropolis–Hastings ratio (:func:`log_q_ratio`) is written once, for the acceptance probability of
SGLD's own steps on their minibatch (:func:`mala_acceptance`, a diagnostic that does not steer the
chains) and for the full-batch Metropolis-adjusted Langevin sampler (:func:`run_mala`; Roberts &
Tweedie 1996), which has no step-size bias.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from sgld.potential import Potential
from sgld.source import DataSource

__all__ = ["log_q_ratio", "mala_acceptance", "run_mala"]


def log_q_ratio(
    grad_u_old: Tensor, grad_u_new: Tensor, noise: Tensor, epsilon: float, precond: Tensor | None = None
) -> Tensor:
    r"""The log ratio :math:`\log q(w|w') - \log q(w'|w)` of the Langevin proposal.

    For :math:`w' = w - \frac\epsilon2 P\nabla U(w) + \sqrt{\epsilon P}\,\xi` the forward residual is
    :math:`\sqrt{\epsilon P}\,\xi` and the reverse one :math:`-\sqrt{\epsilon P}\,\xi + a`, with
    :math:`a = \frac\epsilon2 P(\nabla U(w) + \nabla U(w'))`; the norms are in the metric
    :math:`P^{-1}`, and the difference of their squares is formed as one product, to stay accurate
    in float32 at large d.

    Args:
        grad_u_old: (C, d) :math:`\nabla U(w)`.
        grad_u_new: (C, d) :math:`\nabla U(w')`.
        noise: (C, d) the proposal's :math:`\xi`.
        epsilon: :math:`\epsilon`.
        precond: P, (d,) or (C, d); None for P = I.

    Returns:
        (C,) float64 log ratios.
    """
    # Reverse residual r = -√ε ξ + a with a = ε/2 (∇U(w) + ∇U(w')); forward residual is √ε ξ.
    # With P: a = ε/2 P (∇U(w) + ∇U(w')), noise √(εP) ξ, and the norms are in the metric P⁻¹.
    if precond is None:
        a = 0.5 * epsilon * (grad_u_old + grad_u_new)
        return -(a * (a - 2 * math.sqrt(epsilon) * noise)).sum(dim=1).double() / (2 * epsilon)
    g_sum = grad_u_old + grad_u_new
    a = 0.5 * epsilon * precond * g_sum
    return -(g_sum * (a - 2 * math.sqrt(epsilon) * precond.sqrt() * noise)).sum(dim=1).double() / 4


def mala_acceptance(
    potential: Potential, w_old: Tensor, grad_old: Tensor, loss_old: Tensor, w_new: Tensor, noise: Tensor,
    x: Tensor, y: Tensor, w_star: Tensor, epsilon: float, nbeta: float, gamma: float, precond: Tensor | None = None,
) -> Tensor:
    r"""Metropolis–Hastings acceptance probability of the SGLD proposal :math:`w \to w'`, per chain.

    With :math:`U = n\beta L_m + \frac\gamma2\lVert w - w^*\rVert^2` on the step's minibatch and the
    Langevin proposal :math:`q(w'|w) = \mathcal N(w - \frac\epsilon2 P\nabla U(w), \epsilon P)`,
    :math:`\alpha = \min\{1, e^{-U(w') + U(w)}\, q(w|w')/q(w'|w)\}`. Differences of squared norms are
    formed as products of differences, to stay accurate in float32 at large d.

    Args:
        potential: The potential.
        w_old: (C, d) :math:`w`.
        grad_old: (C, d) :math:`\nabla L_m(w)`.
        loss_old: (C,) :math:`L_m(w)`.
        w_new: (C, d) the proposal :math:`w'`.
        noise: (C, d) the proposal's :math:`\xi`.
        x: The step's minibatch inputs (C, m, ...).
        y: Its targets.
        w_star: :math:`w^*`.
        epsilon: :math:`\epsilon`.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        precond: P, (d,) or (C, d); None for P = I.

    Returns:
        (C,) float64 acceptance probabilities; 0 where the ratio is NaN.
    """
    grad_new, loss_new = potential.grad_value(w_new, x, y)
    grad_u_old = nbeta * grad_old + gamma * (w_old - w_star)
    grad_u_new = nbeta * grad_new + gamma * (w_new - w_star)
    delta_u = nbeta * (loss_new - loss_old).double() + 0.5 * gamma * (
        (w_new - w_old) * (w_new + w_old - 2 * w_star)
    ).sum(dim=1).double()
    log_alpha = -delta_u + log_q_ratio(grad_u_old, grad_u_new, noise, epsilon, precond)
    return torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0).exp()


def run_mala(
    potential: Potential, source: DataSource, gens: Sequence[torch.Generator], *, epsilon: float, nbeta: float,
    gamma: float, num_steps: int, batch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    r"""Full-batch Metropolis-adjusted Langevin chains from :math:`w^*` (see ``mala_estimate_llc``).

    Every proposal :math:`w' = w - \frac\epsilon2\nabla U(w) + \sqrt\epsilon\,\xi` uses the full-data
    gradient of :math:`U = n\beta L_n + \frac\gamma2\lVert w-w^*\rVert^2` and is accepted with the
    Metropolis–Hastings probability. Per step, each chain's generator draws its noise, then its uniform.

    Args:
        potential: The potential.
        source: The samples.
        gens: One generator per chain.
        epsilon: :math:`\epsilon`.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        num_steps: Steps per chain.
        batch_size: Samples per forward pass when summing over the data.

    Returns:
        The (C, num_steps) float64 trace of :math:`L_n(w_t)` and the (C, 1) acceptance rates.
    """
    device, num_chains = source.device, len(gens)
    w_star = potential.w_star

    def grad_and_u(w: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, loss = potential.full_grad_value(w, source, batch_size)
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
        log_alpha = torch.nan_to_num(-(u_p - u) + log_q_ratio(grad_u, grad_p, noise, epsilon), nan=-math.inf)
        accept = torch.log(uniform) < log_alpha
        w = torch.where(accept[:, None], proposal, w)
        grad_u = torch.where(accept[:, None], grad_p, grad_u)
        u = torch.where(accept, u_p, u)
        loss = torch.where(accept, loss_p, loss)
        accepted += accept
        trace[:, t] = loss
    return trace.cpu().numpy(), (accepted / num_steps).cpu().numpy()[:, None]
