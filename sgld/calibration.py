r"""Step-size calibration, ``epsilon="auto"``: :func:`calibrate_epsilon`, whose docstring states the rule.

:func:`calibrate` runs the rule on given chains (``estimate_llc`` passes the run's own, so the
calibration's steps are their burn-in): it measures the local geometry at :math:`w^*`
(:func:`sgld.geometry.measure_geometry`), then runs the phases of ``sgld.calibration_phases`` over
one explicit state: ``pilot_search``, ``rescale_and_check``, ``record``.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import torch
from torch import nn

from sgld.calibration_phases import CalibrationRule, CalibrationState, pilot_search, record, rescale_and_check
from sgld.chains import Chains, chain_generators
from sgld.checks import check_int
from sgld.geometry import measure_geometry
from sgld.potential import LossFn, Potential, default_nbeta
from sgld.restrict import Restrict
from sgld.source import Data, DataSource
from sgld.start import checked_init_loss, probe

__all__ = ["calibrate", "calibrate_epsilon", "pilot_steps_for"]


def pilot_steps_for(budget: int) -> int:
    """Steps of each calibration check: a twentieth of the run, 100 to 1000 (short for short, large runs).

    Args:
        budget: Steps per chain of the run (``max_steps`` for ``num_steps="auto"``).

    Returns:
        The steps per check.
    """
    return int(min(1000, max(100, budget // 20)))


def calibrate(
    potential: Potential, source: DataSource, chains: Chains, rule: CalibrationRule, *, seed: int
) -> dict[str, Any]:
    """The rule of :func:`calibrate_epsilon`, run on ``chains``, which it leaves warmed up at the chosen ε.

    Args:
        potential: The potential at :math:`w^*`.
        source: The samples.
        chains: The chains to calibrate on (a run's own, in ``estimate_llc``).
        rule: The settings.
        seed: Seed of the probes and minibatches the calibration draws itself.

    Returns:
        The record of :func:`sgld.calibration_phases.record`; the chains' step count and divergences
        are reset, their states kept.
    """
    start = time.perf_counter()
    generator = torch.Generator(device=source.device)
    generator.manual_seed(seed)
    geometry = measure_geometry(potential, source, chains.batch_size, rule.nbeta, rule.gamma, generator)
    state = CalibrationState.at_w_star(rule, geometry)
    pilot_search(chains, state)
    rescale_and_check(potential, source, chains, state, generator)
    calibration_steps = chains.steps
    chains.reset_divergence()
    return record(state, nan_gradient_taken_as_zero=potential.nan_grad_to_zero, calibration_steps=calibration_steps,
                  seconds=time.perf_counter() - start)


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
    restrict: Restrict = None,
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
        restrict: The parameters to sample, the rest held at :math:`w^*`, as for ``estimate_llc``.

    Returns:
        A dict with ``epsilon`` and what it was derived from: ``a_max``, ``hessian_trace`` (as
        measured), ``curvature_used``, ``hessian_trace_used``, ``curvature_source``,
        ``gradient_noise`` (:math:`\operatorname{tr}\operatorname{Cov}`, 0.0 at or below
        ``gradient_noise_floor``), ``gradient_noise_measured``, ``lambda_ref``,
        ``pilot_lambdahat``, ``pilot_mala_acceptance`` (at the final ε), every check in ``checks``,
        ``predicted_relative_bias``, ``limited_by``, ``calibration_steps`` (per chain),
        ``calibration_seconds`` and the ``rule``.

    Raises:
        ValueError: If the loss at :math:`w^*` is not finite, for an out-of-range argument, or an
            empty or unknown ``restrict``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = DataSource(data, device)
    nbeta = default_nbeta(source.n) if nbeta is None else nbeta
    full = batch_size is None or batch_size == "full"
    m = source.n if full else min(batch_size, source.n)
    check_int("pilot_steps", pilot_steps, 2)
    check_int("pilot_chains", pilot_chains, 1)
    potential = Potential(model, loss_fn, device, restrict)
    probe(potential, source)
    init_loss, sigma_m = checked_init_loss(potential, source, m, full)
    chains = Chains(potential, source, chain_generators(seed + 1, pilot_chains, device), group=pilot_chains,
                    batch_size=m, full=full, nbeta=nbeta, gamma=gamma, init_loss=init_loss, sigma_m=sigma_m,
                    check_every=100)
    rule = CalibrationRule(nbeta=nbeta, gamma=gamma, bias_tolerance=bias_tolerance, max_stiffness=max_stiffness,
                           pilot_steps=pilot_steps, min_acceptance=min_acceptance, max_backoffs=max_backoffs)
    return calibrate(potential, source, chains, rule, seed=seed)
