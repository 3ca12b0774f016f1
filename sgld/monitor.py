r"""Keeping ``epsilon="auto"``'s promise for the whole run: the bias rate re-measured where the chains are.

The calibration bounds the predicted bias :math:`\epsilon\,(\operatorname{tr}H + n\beta^2
\operatorname{tr}\operatorname{Cov}(\nabla L_m))/8` relative to :math:`\hat\lambda` at the curvature
its short pilots saw. Along a long run the chains drift along flat directions into stiffer regions:
on deep linear networks tr H at the chains' states grows 2–25× over tens of thousands of steps,
the MALA acceptance of the SGLD proposals falls from 0.95 to 0.77, and :math:`\hat\lambda` ends up
to 50% above the exact posterior mean, a discretisation bias (full batch shows the same).

So after every round of the stopping rule, :class:`StepSizeMonitor` measures at the chains' current
states tr H (Hutchinson, a few probes per chain on up to 2048 samples), the minibatch gradient noise,
the round's :math:`\hat\lambda` and its mean MALA acceptance, and predicts the relative bias at the
current ε with the round's own :math:`\hat\lambda` as reference. ε shrinks when

* the predicted bias exceeds ``TRIGGER`` × δ (1.5 × 2%): to the ε that meets δ exactly; or
* the round's mean MALA acceptance is below ``MIN_ROUND_ACCEPTANCE`` (0.9): by the factor of
  :func:`sgld.calibration_phases.backoff` toward the calibration's 0.95.

The stopping rule then treats every draw so far as burn-in and starts its rounds again from the
chains' current states (:func:`sgld.stopping.run_until_settled`); every check and every change of ε,
with its reason, is recorded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from sgld.calibration_phases import backoff
from sgld.chains import Chains
from sgld.geometry import above_floor, gradient_noise, mean_hessian_trace

__all__ = ["MIN_ROUND_ACCEPTANCE", "TRIGGER", "StepSizeMonitor"]

TRIGGER = 1.5  # shrink ε once the predicted bias exceeds this many times the bias tolerance δ ...
MIN_ROUND_ACCEPTANCE = 0.9  # ... or a round's mean MALA acceptance falls below this
PROBES_PER_CHAIN = 4  # Hutchinson probes at each chain's state (16 in all for 4 chains)
SAMPLES = 2048  # samples that define L for those probes
NOISE_BATCHES = 8  # minibatches per chain for the gradient noise


@dataclass
class StepSizeMonitor:
    r"""Re-measures the bias rate at the chains' states after each round and says how far to shrink ε.

    Attributes:
        bias_tolerance: :math:`\delta` of the calibration.
        min_acceptance: The calibration's acceptance target (0.95), toward which a low round backs off.
        lambda_ref: The calibration's :math:`\lambda_{\text{ref}}`, used while a round's
            :math:`\hat\lambda` is not positive.
        noise_floor: Gradient noise below which it counts as zero (:func:`sgld.geometry.noise_floor`).
        generator: Source of the probes' samples, probes and minibatches.
    """

    bias_tolerance: float
    min_acceptance: float
    lambda_ref: float
    noise_floor: float
    generator: torch.Generator

    def check(self, chains: Chains, trace: np.ndarray, accept: np.ndarray, epsilon: float) -> tuple[float, dict]:
        r"""Judge the round just run at ε.

        Args:
            chains: The chains, where the round left them.
            trace: (chains, steps) losses of the round.
            accept: The round's MALA acceptances (NaN where none was computed).
            epsilon: The round's ε.

        Returns:
            The ε to continue with (≤ ``epsilon``) and the record: ``step`` (chains' steps so far),
            ``epsilon``, ``mala_acceptance``, ``hessian_trace``, ``gradient_noise``, ``lambdahat``
            (the round's), ``predicted_relative_bias``, ``new_epsilon`` and ``reason`` (None when
            ε stays).
        """
        alive = [i for i, s in enumerate(chains.diverged_at) if s is None]
        record: dict[str, Any] = dict(step=chains.steps, epsilon=epsilon)
        if not alive:
            return epsilon, dict(record, new_epsilon=epsilon, reason=None)
        pot, src, nbeta, gamma = chains.potential, chains.source, chains.nbeta, chains.gamma
        acc = accept[alive]
        acceptance = float(np.nanmean(acc)) if np.isfinite(acc).any() else math.nan
        tr_h = mean_hessian_trace(pot, src, nbeta, gamma, self.generator, chains.w[alive], num_samples=SAMPLES,
                                  num_probes=PROBES_PER_CHAIN)
        noise = gradient_noise(pot, src, chains.batch_size, self.generator, num_batches=NOISE_BATCHES,
                               w=chains.w[alive])
        noise = above_floor(noise, self.noise_floor) if math.isfinite(noise) else 0.0
        lam = float(nbeta * (trace[alive].mean() - chains.init_loss))
        # The round's own λ̂, not the calibration's reference: where the loss has no curvature at w*
        # (w* = 0 in a deep network) the calibration's floor tr H / (2a) is d/2, far above λ.
        lam_ref = lam if math.isfinite(lam) and lam > 0 else self.lambda_ref
        rate = (tr_h + nbeta**2 * noise) / 8
        bias = epsilon * rate / lam_ref if lam_ref > 0 and math.isfinite(rate) else math.nan
        new, reasons = epsilon, []
        if math.isfinite(bias) and bias > TRIGGER * self.bias_tolerance:
            new = min(new, epsilon * self.bias_tolerance / bias)
            reasons.append(f"predicted bias {bias:.1%} > {TRIGGER:g} x {self.bias_tolerance:.0%} at the chains' tr H")
        if math.isfinite(acceptance) and acceptance < MIN_ROUND_ACCEPTANCE:
            new = min(new, epsilon * backoff(acceptance, self.min_acceptance, False))
            reasons.append(f"mean MALA acceptance {acceptance:.3f} < {MIN_ROUND_ACCEPTANCE}")
        record.update(mala_acceptance=acceptance, hessian_trace=tr_h, gradient_noise=noise, lambdahat=lam,
                      predicted_relative_bias=bias, new_epsilon=new, reason="; ".join(reasons) or None)
        return new, record
