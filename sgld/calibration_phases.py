r"""The phases of the step-size calibration, as plain functions over one explicit :class:`CalibrationState`.

After :func:`sgld.geometry.measure_geometry` (curvature, Hessian trace and gradient noise at
:math:`w^*`): :func:`pilot_search` (a conservative ε from :math:`w^*`, shrunk while its check
fails), :func:`rescale_and_check` (ε rescaled to the bias budget, the same chains continuing,
checked again) and :func:`record` (what was measured and chosen). A *check* (:func:`run_check`)
advances the chains ``CalibrationRule.pilot_steps`` steps and passes when no chain diverged and the
mean MALA acceptance of the proposals is at least ``min_acceptance``. The rule itself is documented
in ``sgld.calibration.calibrate_epsilon``, which runs these phases.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from sgld.chains import Chains
from sgld.diagnostics import llc_from_losses
from sgld.geometry import CURVATURE_SOURCES, Geometry, above_floor, gradient_noise, mean_hessian_trace
from sgld.potential import Potential
from sgld.source import DataSource

__all__ = [
    "RULE",
    "CalibrationRule",
    "CalibrationState",
    "backoff",
    "look_around",
    "pilot_search",
    "record",
    "rescale_and_check",
    "run_check",
]

RULE = (
    "epsilon = min(c_max / a, delta * lambda_ref / ((tr H + nbeta^2 tr Cov(grad L_m)) / 8)), "
    "then MALA acceptance >= min_acceptance checked at the final epsilon"
)


def backoff(acceptance: float, target: float, diverged: bool) -> float:
    r"""Factor to shrink ε by after a failed check.

    MALA's rejection probability scales as :math:`\epsilon^{3/2}` for small steps (Roberts &
    Rosenthal 1998, "Optimal scaling of discrete approximations to Langevin diffusions"), so the
    step that meets the target is about :math:`((1-t)/(1-a))^{2/3}` times the step that gave
    acceptance a; clipped to [1/16, 1/2]. A divergence, or no acceptance at all, gives 1/4.

    Args:
        acceptance: The failed check's mean acceptance a.
        target: ``min_acceptance`` t.
        diverged: Whether a chain diverged in the check.

    Returns:
        The factor, in [1/16, 1/2].
    """
    if diverged or not math.isfinite(acceptance) or acceptance >= 1:
        return 0.25
    return float(np.clip(((1 - target) / (1 - acceptance)) ** (2 / 3), 1 / 16, 1 / 2))


@dataclass(frozen=True)
class CalibrationRule:
    r"""The settings of the rule (see :func:`calibrate_epsilon`, whose defaults these are).

    Attributes:
        nbeta: :math:`n\beta`.
        gamma: :math:`\gamma`.
        bias_tolerance: :math:`\delta`, accepted relative bias of :math:`\hat\lambda`.
        max_stiffness: :math:`c_{\max}`, the largest :math:`\epsilon a_{\max}`.
        pilot_steps: Steps of each check.
        min_acceptance: Smallest mean MALA acceptance that passes a check.
        max_backoffs: How many times the pilot's ε may shrink.
    """

    nbeta: float
    gamma: float
    bias_tolerance: float = 0.02
    max_stiffness: float = 1.0
    pilot_steps: int = 1000
    min_acceptance: float = 0.95
    max_backoffs: int = 8


@dataclass
class CalibrationState:
    r"""What the phases of one calibration have measured and decided so far.

    Attributes:
        rule: The settings.
        geometry: The local potential at :math:`w^*` (:func:`sgld.geometry.measure_geometry`).
        hessian_trace_seen: Largest tr H seen, at :math:`w^*` and at the chains' states.
        gradient_noise_seen: Largest gradient noise seen (above the floor), likewise.
        checks: Every check, in order: ``epsilon``, ``steps``, ``mala_acceptance``, ``lambdahat``,
            ``diverged``, ``passed``, and after the pilot ``gradient_noise`` and ``hessian_trace``
            at the chains' states.
        cap: Largest ε allowed after failed checks.
        pilot_epsilon: The pilot's ε.
        pilot_lambdahat: The pilot's :math:`\hat\lambda`.
        lambda_ref: :math:`\lambda_{\text{ref}}` of the bias budget.
        epsilon: The chosen ε.
    """

    rule: CalibrationRule
    geometry: Geometry
    hessian_trace_seen: float
    gradient_noise_seen: float
    checks: list[dict[str, Any]] = field(default_factory=list)
    cap: float = math.inf
    pilot_epsilon: float = math.nan
    pilot_lambdahat: float = math.nan
    lambda_ref: float = 0.0
    epsilon: float = math.nan

    @classmethod
    def at_w_star(cls, rule: CalibrationRule, geometry: Geometry) -> CalibrationState:
        """A fresh state: no checks yet, the largest tr H and noise seen being those at :math:`w^*`.

        Args:
            rule: The settings.
            geometry: The measurements at :math:`w^*`.

        Returns:
            The state.
        """
        # The bias rate (predicted bias of lambdahat per unit ε) uses the largest tr H and gradient noise
        # seen, at w* and at the warmed-up chains' states: away from w* both can be far larger (a reduced
        # rank regression fitted to noise has small weights at w*, so small per-sample gradients there).
        return cls(rule, geometry, hessian_trace_seen=geometry.hessian_trace_used,
                   gradient_noise_seen=geometry.gradient_noise)

    @property
    def stable_epsilon(self) -> float:
        r""":math:`c_{\max}/a`, the largest stable step."""
        return self.rule.max_stiffness / self.geometry.curvature_used

    @property
    def lambda_floor(self) -> float:
        r""":math:`\operatorname{tr}H/(2a)`, a lower bound of λ at the curvature used."""
        return self.geometry.hessian_trace_used / (2 * self.geometry.curvature_used)

    def bias_rate(self) -> float:
        r"""Predicted bias of :math:`\hat\lambda` per unit ε, at the largest tr H and gradient noise seen.

        Returns:
            :math:`(\operatorname{tr} H + n\beta^2 \operatorname{tr}\operatorname{Cov}(\nabla L_m)) / 8`.
        """
        return (self.hessian_trace_seen + self.rule.nbeta**2 * self.gradient_noise_seen) / 8

    def choose(self, lam: float) -> float:
        r"""The rule's ε for a reference :math:`\lambda_{\text{ref}}`.

        Args:
            lam: :math:`\lambda_{\text{ref}}`.

        Returns:
            :math:`\min(c_{\max}/a, \delta\lambda_{\text{ref}}/\text{bias rate})`; the stable step if lam ≤ 0.
        """
        stable = self.stable_epsilon
        return min(stable, self.rule.bias_tolerance * lam / self.bias_rate()) if lam > 0 else stable


def run_check(chains: Chains, state: CalibrationState, epsilon: float) -> tuple[bool, float, float]:
    r"""Advance the chains ``pilot_steps`` at ε; judge divergence and the MALA acceptance of the proposals.

    Args:
        chains: The chains, continued from where they stand.
        state: The state; the check is appended to ``state.checks``.
        epsilon: ε to check.

    Returns:
        Whether it passed, the mean acceptance (NaN if none), and :math:`\hat\lambda` of the check's
        second half.
    """
    rule = state.rule
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # divergences here are the signal, not an error
        tr, acc = chains.run(rule.pilot_steps, epsilon=epsilon, mala_every=10, loss_trace_minibatch=True,
                             control_variate=True)
    diverged = any(s is not None for s in chains.diverged_at)
    acceptance = float(np.nanmean(acc)) if np.isfinite(acc).any() else float("nan")
    lam = float(llc_from_losses(tr, chains.init_loss, rule.nbeta, rule.pilot_steps // 2).mean())
    ok = not diverged and acceptance >= rule.min_acceptance
    state.checks.append(dict(epsilon=epsilon, steps=rule.pilot_steps, mala_acceptance=acceptance, lambdahat=lam,
                             diverged=diverged, passed=ok))
    return ok, acceptance, lam


def look_around(
    potential: Potential, source: DataSource, chains: Chains, state: CalibrationState, generator: torch.Generator
) -> None:
    """Update the bias rate with tr H and the gradient noise at the chains' current states.

    Both are recorded in the last check; the largest seen so far set the bias rate.

    Args:
        potential: The potential.
        source: The samples.
        chains: The chains, where the last check left them.
        state: The state, updated in place.
        generator: The calibration's generator.
    """
    rule = state.rule
    noise = gradient_noise(potential, source, chains.batch_size, generator, w=chains.w)
    tr_here = mean_hessian_trace(potential, source, rule.nbeta, rule.gamma, generator, chains.w[:1])
    state.checks[-1].update(gradient_noise=noise, hessian_trace=tr_here)
    if math.isfinite(noise):
        above = above_floor(noise, state.geometry.gradient_noise_floor)
        state.gradient_noise_seen = max(state.gradient_noise_seen, above)
    if math.isfinite(tr_here):
        state.hessian_trace_seen = max(state.hessian_trace_seen, tr_here)


def pilot_search(chains: Chains, state: CalibrationState) -> None:
    r"""Phase 1: a conservative pilot from w*, shrunk (and restarted) while it diverges or its acceptance is low.

    The pilot's ε is the rule's at :math:`\lambda_{\text{ref}} = \operatorname{tr}H/(2a)`. After
    ``max_backoffs`` failures it warns and keeps the last, shrunk ε (unchecked), the chains back at w*.

    Args:
        chains: The chains, restarted from w* before every try.
        state: The state; sets ``pilot_epsilon``, ``pilot_lambdahat``, ``cap`` and ``epsilon``.
    """
    rule = state.rule
    state.pilot_epsilon = state.choose(state.lambda_floor)
    for _ in range(rule.max_backoffs + 1):
        chains.restart()
        ok, acceptance, state.pilot_lambdahat = run_check(chains, state, state.pilot_epsilon)
        if ok:
            break
        state.pilot_epsilon *= backoff(acceptance, rule.min_acceptance, state.checks[-1]["diverged"])
        state.cap = state.pilot_epsilon
    else:
        chains.restart()
        warnings.warn(f"calibrate_epsilon: the MALA acceptance stayed below {rule.min_acceptance} after "
                      f"{rule.max_backoffs} backoffs; using epsilon = {state.pilot_epsilon:.3g}. Check diverged and "
                      "mala_acceptance.", RuntimeWarning, stacklevel=4)
    state.epsilon = state.pilot_epsilon


def rescale_and_check(
    potential: Potential, source: DataSource, chains: Chains, state: CalibrationState, generator: torch.Generator
) -> None:
    """Phase 2: rescale ε to the bias budget and check it again on the same chains, up to 4 times.

    ε is rescaled to the pilot's λ̂ and to the curvature and noise the chains found, and checked
    again at that ε continuing the same chains (their steps are burn-in, not waste). This repeats
    while a check fails (the cap shrinks by the acceptance) or finds more noise than assumed. The
    final ε is the last that passed its own check (the pilot's at worst). Skipped if the pilot failed.

    Args:
        potential: The potential.
        source: The samples.
        chains: The chains, where the pilot left them.
        state: The state; sets ``lambda_ref`` and ``epsilon``, and may lower ``cap``.
        generator: The calibration's generator.
    """
    rule = state.rule
    lam0, floor = state.pilot_lambdahat, state.lambda_floor
    # tr H/(2a) counts the directions the loss stiffens. Where the largest curvature at w* is within a
    # factor 2 of γ's (w* = 0 in a deep network: H = γI), it counts the prior's d directions instead,
    # d/2 far above λ, and would license a step 10x too large for the bias budget.
    loss_curved = state.geometry.source_key == "w*" and state.geometry.curvature_used > 2 * rule.gamma
    state.lambda_ref = max(lam0, floor if loss_curved else 0.0) if math.isfinite(lam0) else 0.0
    checks = state.checks
    if not checks[-1]["passed"]:
        return
    look_around(potential, source, chains, state, generator)
    for _ in range(4):
        target = min(state.choose(state.lambda_ref), state.cap)
        if checks[-1]["passed"] and target / 1.25 <= checks[-1]["epsilon"] <= 1.25 * target:
            break  # the last check passed at the budget's ε (25% slack: the estimates are noisy)
        ok, acceptance, lam = run_check(chains, state, target)
        look_around(potential, source, chains, state, generator)
        if not ok:
            state.cap = target * backoff(acceptance, rule.min_acceptance, checks[-1]["diverged"])
        elif math.isfinite(lam):
            state.lambda_ref = max(state.lambda_ref, lam)
    state.epsilon = checks[-1]["epsilon"] if checks[-1]["passed"] else min(c["epsilon"] for c in checks if c["passed"])


def record(
    state: CalibrationState, *, nan_gradient_taken_as_zero: bool, calibration_steps: int, seconds: float
) -> dict[str, Any]:
    """Phase 3: the calibration record, what ``calibrate_epsilon`` returns.

    Args:
        state: The final state.
        nan_gradient_taken_as_zero: Whether NaN gradient entries were taken as 0.
        calibration_steps: Steps per chain of all checks.
        seconds: Wall time of the calibration.

    Returns:
        The record (its keys are listed in ``sgld.calibration.calibrate_epsilon``).
    """
    rule, geo, checks, epsilon = state.rule, state.geometry, state.checks, state.epsilon
    final = [c for c in checks if c["epsilon"] == epsilon]
    lam_for_bias = state.lambda_ref if state.lambda_ref > 0 else state.lambda_floor
    limited_by = ("stability" if epsilon == state.stable_epsilon
                  else "mala_acceptance" if epsilon >= state.cap else "bias")
    return dict(
        epsilon=epsilon,
        rule=RULE,
        a_max=geo.a_max,
        hessian_trace=geo.hessian_trace,
        curvature_used=geo.curvature_used,
        hessian_trace_used=geo.hessian_trace_used,
        curvature_source=CURVATURE_SOURCES[geo.source_key],
        gradient_noise=geo.gradient_noise,
        gradient_noise_measured=geo.gradient_noise_measured,
        gradient_noise_floor=geo.gradient_noise_floor,
        gradient_noise_used=state.gradient_noise_seen,
        hessian_trace_seen=state.hessian_trace_seen,
        nan_gradient_taken_as_zero=nan_gradient_taken_as_zero,
        c_max=rule.max_stiffness,
        delta=rule.bias_tolerance,
        stiffness=epsilon * geo.curvature_used,
        lambda_floor=state.lambda_floor,
        lambda_ref=state.lambda_ref,
        pilot_epsilon=state.pilot_epsilon,
        pilot_steps=rule.pilot_steps,
        pilot_lambdahat=checks[0]["lambdahat"] if len(checks) == 1 else state.pilot_lambdahat,
        pilot_mala_acceptance=final[-1]["mala_acceptance"] if final else float("nan"),
        checks=checks,
        predicted_relative_bias=epsilon * state.bias_rate() / lam_for_bias,
        min_acceptance=rule.min_acceptance,
        limited_by=limited_by,
        calibration_steps=calibration_steps,
        calibration_seconds=seconds,
    )
