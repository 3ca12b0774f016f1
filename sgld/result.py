r"""The result of an estimate: :class:`LLCResult`, and its assembly from the chains' raw output."""

from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from sgld.diagnostics import ess, lambdahat_quarters, llc_from_losses, rhat

__all__ = ["LLCResult", "summarise"]


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
            proposals, every ``mala_every`` steps (the step-size check of Lau et al. 2023,
            arXiv:2308.12108): near 1 means ε is small enough that SGLD's discretisation error is small.
        rhat: Split-:math:`\hat R` of the post-burn-in loss trace across chains.
        ess: Effective sample size of the post-burn-in loss trace.
        diverged: Whether any chain diverged (see ``estimate_llc``).
        divergence_step: Per chain, the first step at which it diverged, else None.
        n: Number of training samples.
        nbeta: Inverse temperature :math:`n\beta` used.
        epsilon: Step size :math:`\epsilon` of the kept draws (with ``epsilon="auto"`` and
            ``num_steps="auto"``, the last one the step-size monitor set: ``stopping["final_epsilon"]``).
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
            spread, why it stopped, ``total_steps`` and ``discarded_steps``; with ``epsilon="auto"``
            also ``step_checks`` (the monitor's measurements after every round), ``epsilon_changes``
            (each shrinking of ε, with its reason) and ``final_epsilon``. None for a fixed budget.
        preconditioner: The diagonal preconditioner P, None for P = I: ``kind`` ("fixed" or
            "rmsprop"), and per parameter tensor (by name) its value (fixed; mean, min and max
            for a tensor) or, for rmsprop, ``decay``, ``damping`` and the mean P at the last step.
        restrict: The selection of parameters sampled, as given (:mod:`sgld.restrict`); None for all.
        sampled_parameters: Names of the parameter tensors sampled; the others stayed at :math:`w^*`.
        num_sampled: Number of parameters sampled, d of the (restricted) posterior.
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
    restrict: str | list | dict | None = field(default=None)
    sampled_parameters: list[str] = field(default_factory=list)
    num_sampled: int = 0

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


def summarise(
    loss_trace: np.ndarray, acceptance: np.ndarray, diverged_at: list[int | None], *, init_loss: float, n: int,
    nbeta: float, epsilon: float, gamma: float, batch_size: int, num_burnin_steps: int,
    loss_trace_minibatch: bool, control_variate: bool, seed: int, wall: float, calibration: dict | None,
    init_loss_method: str, full_batch: bool = False, stopping: dict | None = None,
    preconditioner: dict | None = None, restrict: str | list | dict | None = None,
    sampled_parameters: list[str] | None = None, num_sampled: int = 0,
) -> LLCResult:
    r"""Turn raw chain output into an :class:`LLCResult` with its diagnostics.

    Chains that diverged are left out of :math:`\hat\lambda` and of the diagnostics. Warns
    (``stacklevel`` pointing at the caller of ``estimate_llc``) if every chain diverged or if
    split-:math:`\hat R` > 1.1.

    Args:
        loss_trace: (C, steps) losses, burn-in included.
        acceptance: (C, checks) MALA acceptances, NaN where not computed.
        diverged_at: Per chain, the first step at which it diverged, else None.
        init_loss: :math:`L_n(w^*)`.
        n: Number of samples.
        nbeta: :math:`n\beta`.
        epsilon: :math:`\epsilon`.
        gamma: :math:`\gamma`.
        batch_size: m.
        num_burnin_steps: Leading steps left out.
        loss_trace_minibatch: Whether the trace holds minibatch losses.
        control_variate: Whether they were corrected by the same batch at :math:`w^*`.
        seed: Root seed.
        wall: Seconds spent sampling.
        calibration: The calibration record, or None.
        init_loss_method: How :math:`L_n(w^*)` was computed.
        full_batch: Exact full batch.
        stopping: The stopping rule's record, or None.
        preconditioner: The preconditioner's record, or None.
        restrict: The selection of parameters sampled, as given.
        sampled_parameters: Their names.
        num_sampled: Their number of entries, d.

    Returns:
        The :class:`LLCResult`.
    """
    num_chains, num_steps = loss_trace.shape
    alive = np.array([s is None for s in diverged_at])
    per_chain = llc_from_losses(loss_trace, init_loss, nbeta, num_burnin_steps)
    per_chain[~alive] = np.nan
    post = loss_trace[alive, num_burnin_steps:]
    nan = float("nan")
    if alive.any():
        lambdahat = float(per_chain[alive].mean())
        quarters = lambdahat_quarters(post, init_loss, nbeta)
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
        restrict=restrict,
        sampled_parameters=list(sampled_parameters or []),
        num_sampled=int(num_sampled),
    )
    if math.isfinite(result.rhat) and result.rhat > 1.1:
        warnings.warn(
            f"the loss trace has not settled (split-R-hat {result.rhat:.2f} > 1.1; lambdahat by quarter "
            f"{[round(q, 3) for q in quarters]}): run more steps, add burn-in or revisit epsilon.",
            UserWarning,
            stacklevel=3,
        )
    return result
