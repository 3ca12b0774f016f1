r"""The estimators: :func:`estimate_llc` (SGLD) and :func:`mala_estimate_llc` (full-batch MALA, the reference).

Both take a model at :math:`w^*`, its loss and its data, and return an ``LLCResult``; the math is
in the ``sgld`` package docstring.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from typing import Any, Literal

import torch
from torch import nn

from sgld.calibration import calibrate, pilot_steps_for
from sgld.calibration_phases import CalibrationRule
from sgld.chains import Chains, chain_generators
from sgld.checks import check_int, check_nonnegative, check_positive
from sgld.mala import run_mala
from sgld.monitor import StepSizeMonitor
from sgld.potential import LossFn, Potential, default_nbeta
from sgld.restrict import Restrict
from sgld.result import LLCResult, summarise
from sgld.source import Data, DataSource
from sgld.start import checked_init_loss, probe
from sgld.stopping import FIRST_ROUND_STEPS, run_until_settled
from sgld.update import Preconditioner, flat_preconditioner, precond_record

__all__ = ["estimate_llc", "mala_estimate_llc"]


def _validate(n: int, epsilon, gamma, num_steps, num_chains, batch_size, nbeta, num_burnin_steps,
              mala_every, chain_batch_size, max_steps: int | None = None) -> None:
    """Check the arguments of an estimator (as ``estimate_llc``'s), given the number of samples n.

    Raises:
        ValueError: Naming the first argument out of range, and its range.
    """
    if n < 2:
        raise ValueError(f"data must hold at least 2 samples, got {n}")
    if epsilon != "auto":
        check_positive("epsilon", epsilon)
    check_nonnegative("gamma", gamma)
    if num_steps == "auto":
        check_int("max_steps", max_steps, 2)
        num_steps = min(max_steps, FIRST_ROUND_STEPS)
    else:
        check_int("num_steps", num_steps, 1)
    check_int("num_chains", num_chains, 1)
    if batch_size is not None and batch_size != "full":
        check_int("batch_size", batch_size, 1, n)
    if nbeta is not None:
        check_positive("nbeta", nbeta)
    check_int("num_burnin_steps", num_burnin_steps, 0, num_steps - 1)
    check_int("mala_every", mala_every, 0)
    if chain_batch_size is not None:
        check_int("chain_batch_size", chain_batch_size, 1, num_chains)


def _progress_bar(enabled: bool, total: int) -> Any:
    """A ``tqdm`` bar of ``total`` chain-steps if ``enabled``, else a context that does nothing.

    Returns:
        A context manager; its value has ``update(k)``, or is None.
    """
    if not enabled:
        return contextlib.nullcontext()
    from tqdm.auto import tqdm  # optional dependency, imported only for the bar

    return tqdm(total=total, desc="SGLD", unit="chain-step")


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
    restrict: Restrict = None,
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
        num_steps: SGLD steps per chain, burn-in included; or ``"auto"``: sample in rounds (4000
            steps, then doubling the total up to ``max_steps``) until the trace has settled. After
            each round the burn-in b is the smallest of 10%, 20%, …, 50% of the trace (at least
            ``num_burnin_steps``) after which split-:math:`\hat R` ≤ 1.05, the four quarters'
            :math:`\hat\lambda` spread (max − min) ≤ 10% of :math:`|\hat\lambda|` and the quarters
            are not in strictly rising or falling order. A round *passes*
            if such a b exists; it stops at the first round that passes, whose previous round (the
            trace's first half) passed too, and whose :math:`\hat\lambda` moved ≤ 5% from the
            previous round's (so never before 8000 steps), else at ``max_steps`` (b as picked there, 50% if
            that round did not pass). With ``epsilon="auto"`` each round is first checked for its
            step size (:mod:`sgld.monitor`): where ε has become too large for the bias budget at the
            chains' states it shrinks, and the rounds start again from there. Asking
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
            per chain from the gradients. Not combinable with ``epsilon="auto"``. With ``restrict``,
            it covers the sampled tensors only: naming another is an error.
        restrict: The parameters to sample, the rest held at :math:`w^*` (:mod:`sgld.restrict`):
            name patterns (``"layer3.*"``, ``["net.0.weight", "fc.*"]``), ``{name: bool}``, or one
            bool per trainable tensor; None samples all. λ̂ is then that of the restricted posterior.

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
            message names the parameters involved), a preconditioner that does not fit the model, or an
            empty or unknown ``restrict`` (the message lists the parameter names).
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = DataSource(data, device)
    if preconditioner is not None and epsilon == "auto":
        raise ValueError("epsilon='auto' calibrates the step for P = I; with a preconditioner pass a number epsilon")
    _validate(source.n, epsilon, gamma, num_steps, num_chains, batch_size, nbeta, num_burnin_steps,
              mala_every, chain_batch_size, max_steps)
    full = batch_size is None or batch_size == "full"
    m = source.n if full else batch_size
    potential = Potential(model, loss_fn, device, restrict)
    precond, precond_names = flat_preconditioner(preconditioner, potential.names, potential.shapes, potential.w_star)
    nbeta = default_nbeta(source.n) if nbeta is None else float(nbeta)
    probe(potential, source)
    init_loss, sigma_m = checked_init_loss(potential, source, m, full)
    gens = chain_generators(seed, num_chains, device)
    chains = Chains(potential, source, gens, group=chain_batch_size or num_chains, batch_size=m, full=full,
                    nbeta=nbeta, gamma=gamma, init_loss=init_loss, sigma_m=sigma_m, check_every=check_every,
                    precond=precond)
    calibration = None
    if epsilon == "auto":
        # calibrate_epsilon's defaults, with checks sized to the run.
        rule = CalibrationRule(nbeta=nbeta, gamma=gamma,
                               pilot_steps=pilot_steps_for(max_steps if num_steps == "auto" else num_steps))
        calibration = calibrate(potential, source, chains, rule, seed=seed)
        epsilon = calibration["epsilon"]
    run = dict(epsilon=epsilon, mala_every=mala_every, loss_trace_minibatch=loss_trace_minibatch,
               control_variate=control_variate)
    start = time.perf_counter()
    stopping = None
    monitor = None
    if calibration is not None:
        gen = torch.Generator(device=source.device)
        gen.manual_seed(seed + 1)  # the calibration's own stream is seed's
        monitor = StepSizeMonitor(bias_tolerance=rule.bias_tolerance, min_acceptance=rule.min_acceptance,
                                  lambda_ref=calibration["lambda_ref"],
                                  noise_floor=calibration["gradient_noise_floor"], generator=gen)
    with _progress_bar(progress, (max_steps if num_steps == "auto" else num_steps) * num_chains) as bar:
        if num_steps == "auto":
            loss_trace, acceptance, num_burnin_steps, stopping = run_until_settled(
                chains, run, max_steps=max_steps, min_burnin=num_burnin_steps, bar=bar,
                monitor=monitor.check if monitor else None)
            epsilon = stopping.get("final_epsilon", epsilon)
        else:
            loss_trace, acceptance = chains.run(num_steps, bar=bar, **run)
            if monitor is not None:
                # A fixed budget cannot restart its draws: check the step at the end and say so.
                post = loss_trace[:, num_burnin_steps:]
                new, check = monitor.check(chains, post, acceptance, epsilon)
                calibration = dict(calibration, end_of_run_check=check)
                if new < epsilon:
                    warnings.warn(f"epsilon='auto': at the chains' final states {check['reason']}; lambdahat may be "
                                  f"biased. num_steps='auto' shrinks epsilon when this happens.", RuntimeWarning,
                                  stacklevel=2)
    wall = time.perf_counter() - start
    return summarise(
        loss_trace, acceptance, chains.diverged_at, init_loss=init_loss, n=source.n, nbeta=nbeta, epsilon=epsilon,
        gamma=gamma, batch_size=m, num_burnin_steps=num_burnin_steps,
        loss_trace_minibatch=loss_trace_minibatch, control_variate=control_variate, seed=seed, wall=wall,
        calibration=calibration, full_batch=full, stopping=stopping,
        init_loss_method=f"full data, n={source.n}, in batches of {min(m, 4096) if full else m}",
        preconditioner=precond_record(precond, chains.final_precond(), precond_names, potential.numels),
        **potential.sampled(),
    )


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
    restrict: Restrict = None,
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
        restrict: The parameters to sample, as for :func:`estimate_llc`.

    Returns:
        An :class:`LLCResult` whose ``mala_acceptance`` is the realised acceptance rate.

    Raises:
        ValueError: For an out-of-range argument or an empty or unknown ``restrict``.
    """
    device = torch.device(device) if device is not None else next(model.parameters()).device
    source = DataSource(data, device)
    _validate(source.n, epsilon, gamma, num_steps, num_chains, 1, nbeta, num_burnin_steps, 0, None)
    potential = Potential(model, loss_fn, device, restrict)
    nbeta = default_nbeta(source.n) if nbeta is None else float(nbeta)
    gens = chain_generators(seed, num_chains, device)
    bs = min(eval_batch_size, source.n)
    probe(potential, source)
    start = time.perf_counter()
    init_loss = float(potential.full_loss(potential.w_star[None], source, bs)[0])
    trace, rate = run_mala(potential, source, gens, epsilon=epsilon, nbeta=nbeta, gamma=gamma, num_steps=num_steps,
                           batch_size=bs)
    wall = time.perf_counter() - start
    return summarise(
        trace, rate, [None] * num_chains, init_loss=init_loss, n=source.n, nbeta=nbeta,
        epsilon=epsilon, gamma=gamma, batch_size=source.n, num_burnin_steps=num_burnin_steps,
        loss_trace_minibatch=False, control_variate=False, seed=seed, wall=wall, calibration=None,
        init_loss_method=f"full data, n={source.n}, in batches of {bs}", **potential.sampled(),
    )
