r"""Running SGLD chains: C chains advanced together, with their MALA acceptance and divergence checks.

Each chain owns a ``torch.Generator`` (:func:`chain_generators`) for its minibatch indices and its
noise, so a chain's path does not depend on how many chains run beside it. :class:`Chains` keeps
the chains' states between stretches of steps: the calibration's checks, the stopping rule's
rounds and the run itself continue the same chains. The host is synchronised only every
``check_every`` steps, for the divergence check.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from sgld.mala import mala_acceptance
from sgld.potential import Potential
from sgld.source import DataSource
from sgld.update import RMSProp, RMSPropPreconditioner, sgld_update_

__all__ = ["Chains", "chain_generators"]


def chain_generators(seed: int, num_chains: int, device: torch.device) -> list[torch.Generator]:
    """One generator per chain, seeded from ``numpy.random.SeedSequence(seed)``: chain i's stream depends on i only.

    Args:
        seed: Root seed.
        num_chains: C.
        device: Where the generators draw.

    Returns:
        C generators, each seeded with 64 bits of its child sequence's state.
    """
    states = [s.generate_state(2, dtype=np.uint32) for s in np.random.SeedSequence(seed).spawn(num_chains)]
    gens = []
    for st in states:
        g = torch.Generator(device=device)
        g.manual_seed(int(st[0]) << 32 | int(st[1]))
        gens.append(g)
    return gens


class Chains:
    r"""C chains that advance in stretches, keeping their states, generators and divergences between them.

    Chains run in groups of ``group`` (memory); a group's states are copied in and out of the (C, d)
    state only when there are several groups, so one group costs no extra memory. ``precond`` is the
    diagonal preconditioner P: None (P = I), a (d,) tensor, or an :class:`RMSPropPreconditioner`, whose
    running mean square V (C, d) is kept per chain across stretches, like the chains' states.

    Args:
        potential: The potential; the chains start at its :math:`w^*`.
        source: The samples.
        gens: One generator per chain (:func:`chain_generators`).
        group: Chains advanced together in one vectorized call.
        batch_size: m (n for full batch).
        full: Exact full batch: all n samples every step, in a fixed order.
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        init_loss: :math:`L_n(w^*)`.
        sigma_m: The minibatch loss's sd at :math:`w^*`, for the runaway threshold.
        check_every: Steps between divergence checks.
        precond: P (see above).
    """

    def __init__(self, potential: Potential, source: DataSource, gens: list[torch.Generator], *, group: int,
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
        """Put all chains back at w*, and clear the step count, divergences and adaptive preconditioner state."""
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
            control_variate: bool, bar: Any = None) -> tuple[np.ndarray, np.ndarray]:
        r"""Advance every chain ``num_steps`` steps from where it stands.

        A chain that diverges is reset to w* and keeps running; ``diverged_at`` records its first
        divergence (steps counted since the last :meth:`restart` or :meth:`reset_divergence`).

        Args:
            num_steps: Steps per chain.
            epsilon: :math:`\epsilon`.
            mala_every: Every this many steps, the MALA acceptance of the proposal; 0 for none.
            loss_trace_minibatch: Trace the minibatch losses (else :math:`L_n(w_t)`, a pass over the data).
            control_variate: Trace :math:`L_B(w_t) - L_B(w^*) + L_n(w^*)`.
            bar: A progress bar to update, or None.

        Returns:
            The (C, num_steps) float64 loss trace and the (C, checks) MALA acceptances (NaN where
            not computed).
        """
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
            # The group's rows of V are a view: RMSProp updates them in place.
            precond = self.precond if self.rms_v is None else RMSProp(self.precond, self.rms_v[lo : lo + len(gens)])
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
        """The adaptive P of the last step.

        Returns:
            [P (C, d)] for an adaptive P; [] for a fixed P or none.
        """
        if self.rms_v is None:
            return []
        return [RMSProp(self.precond, self.rms_v).precond()]


def _run_chains(
    potential: Potential, source: DataSource, gens: Sequence[torch.Generator], w: Tensor, *, epsilon: float,
    gamma: float, nbeta: float, num_steps: int, batch_size: int, full_xy: tuple[Tensor, Tensor] | None,
    loss_trace_minibatch: bool, control_variate: bool, mala_every: int, check_every: int, init_loss: float,
    runaway: float, bar, t0: int = 0, precond: Tensor | RMSProp | None = None,
) -> tuple[np.ndarray, np.ndarray, list[int | None]]:
    """Advance one group of chains ``w`` (C, d) in place (arguments as :meth:`Chains.run` and :class:`Chains`).

    ``precond`` is P: a (d,) tensor, or the group's RMSProp state, updated in place every step.

    Returns:
        The group's (C, num_steps) trace, (C, checks) MALA acceptances, and first divergence step per chain.
    """
    c, d, device = len(gens), potential.d, source.device
    w_star = potential.w_star
    w_star_c = w_star.expand(c, d)
    noise = torch.empty_like(w)
    idx = torch.empty(c, batch_size, dtype=torch.long, device=device)
    # Row views made once: each chain's generator fills its own row in place, every step.
    rows = list(zip(gens, idx, noise, strict=True))
    if full_xy is not None:
        x, y = (t.expand(c, *t.shape) for t in full_xy)
    trace = torch.empty(c, num_steps, device=device, dtype=torch.float64)
    num_mala = len(range(0, num_steps, mala_every)) if mala_every else 0
    accept = torch.full((c, num_mala), float("nan"), device=device, dtype=torch.float64)
    diverged_at: list[int | None] = [None] * c
    checked = 0
    adaptive = isinstance(precond, RMSProp)
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
            accept[:, t // mala_every] = mala_acceptance(
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


def _check_divergence(
    trace: Tensor, lo: int, hi: int, diverged_at: list[int | None], w: Tensor, w_star: Tensor,
    init_loss: float, nbeta: float, runaway: float, t0: int = 0,
) -> None:
    """Mark chains whose trace in [lo, hi) is non-finite or ran away, warn, and reset them to w*.

    The warning's ``stacklevel`` points at the caller of ``estimate_llc``
    (``estimate_llc`` → ``Chains.run`` → ``_run_chains`` → here). Steps count from ``t0``.
    """
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
