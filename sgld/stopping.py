r"""The stopping rule of ``num_steps="auto"``: its constants, its verdict on a trace, and the round loop.

Sample in rounds (4000 steps, then doubling the total up to ``max_steps``). After each round the
burn-in b is the smallest of 10%, 20%, …, 50% of the trace (at least ``num_burnin_steps``) after
which split-:math:`\hat R` ≤ 1.05, the four quarters' :math:`\hat\lambda` spread (max − min) ≤
10% of :math:`|\hat\lambda|` and the quarters are not strictly monotone (:func:`settle`). A round
*passes* if such a b exists; the run stops at the first round that passes, whose previous round
passed too, and whose :math:`\hat\lambda` moved
≤ 5% from the previous round's (:func:`confirm`), else at ``max_steps``. The full argument is in
``estimate_llc``'s docstring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from sgld.chains import Chains
from sgld.diagnostics import lambdahat_quarters, rhat

__all__ = [
    "BURNIN_FRACTIONS",
    "FIRST_ROUND_STEPS",
    "RULE",
    "STOP_QUARTER_SPREAD",
    "STOP_RHAT",
    "STOP_ROUND_CHANGE",
    "StepCheck",
    "confirm",
    "run_until_settled",
    "settle",
]

FIRST_ROUND_STEPS = 4000  # steps of the first round; each later round doubles the total (so never below 8000)
STOP_RHAT = 1.05  # largest split-R-hat of a round that passes
STOP_QUARTER_SPREAD = 0.10  # largest (max - min) of the quarters' lambdahat, relative to |lambdahat|
STOP_ROUND_CHANGE = 0.05  # largest relative change of lambdahat from the previous round
BURNIN_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)  # burn-ins tried, as fractions of the trace, first that passes

# monitor(chains, round_trace, round_acceptances, epsilon) -> (epsilon to continue with, record)
StepCheck = Callable[[Chains, np.ndarray, np.ndarray, float], tuple[float, dict[str, Any]]]

RULE = (
    f"rounds of {FIRST_ROUND_STEPS} steps, doubling the total, until split-R-hat <= {STOP_RHAT} and "
    f"(max - min) of the quarters' lambdahat <= {STOP_QUARTER_SPREAD} |lambdahat|, quarters not strictly "
    f"monotone, after a burn-in of "
    f"{', '.join(f'{f:.0%}' for f in BURNIN_FRACTIONS)} of the trace (the first that passes), in this round "
    f"and in the previous one (the trace's first half), and lambdahat within {STOP_ROUND_CHANGE} of the "
    f"previous round's"
)


def settle(trace: np.ndarray, init_loss: float, nbeta: float, min_burnin: int) -> dict[str, Any]:
    r"""The stopping rule's verdict on one round's trace: the burn-in it picks and whether the trace settled.

    Args:
        trace: (chains, steps) losses of the chains that did not diverge, from step 0.
        init_loss: :math:`L_n(w^*)`.
        nbeta: :math:`n\beta`.
        min_burnin: Smallest burn-in (``num_burnin_steps``).

    Returns:
        ``steps``, ``burnin``, ``lambdahat``, ``quarters``, ``quarter_spread``, ``rhat`` and
        ``settled`` at the first burn-in that passes (else the last tried); empty if fewer than 8
        draws remain after every burn-in.
    """
    steps = trace.shape[1]
    verdict: dict[str, Any] = {}
    for fraction in BURNIN_FRACTIONS:
        burnin = max(min_burnin, int(fraction * steps))
        post = trace[:, burnin:]
        if post.shape[1] < 8:
            break
        quarters = lambdahat_quarters(post, init_loss, nbeta)
        lam = float(nbeta * (post.mean() - init_loss))
        spread = (max(quarters) - min(quarters)) / abs(lam) if lam != 0 else math.inf
        r = rhat(post)
        # Four quarters in strictly rising (or falling) order are a trend, not noise: a stationary trace
        # orders them so with probability 2/4! = 1/12. Within the spread a slow climb hides otherwise
        # (a 4-layer DLN at rank 1 climbed 6.6 -> 7.0 -> 7.4 -> 8.1 per 2000 steps toward lambda = 8.5,
        # and the round before it agreed within 5%).
        monotone = bool(np.all(np.diff(quarters) > 0) or np.all(np.diff(quarters) < 0))
        verdict = dict(steps=steps, burnin=burnin, lambdahat=lam, quarters=quarters, quarter_spread=spread, rhat=r,
                       monotone=monotone,
                       settled=bool(spread <= STOP_QUARTER_SPREAD and not r > STOP_RHAT and not monotone))
        if verdict["settled"]:
            break
    return verdict


def confirm(verdict: dict[str, Any], previous: dict[str, Any]) -> dict[str, Any]:
    """Judge a round against the one before it: it settles only if both passed and λ̂ agrees.

    A slow climb can look flat within one round, and a DLN can sit on a plateau for thousands of
    steps before it climbs again (4→4→7→7→7 at rank 2: flat at λ̂ ≈ 9.1 for 4000 steps, then up to
    11). So the round's verdict must be confirmed by the next round, which adds as many new steps as
    the whole trace had, and λ̂ must agree with the previous round's.

    Args:
        verdict: This round's :func:`settle` verdict, updated in place; may be empty.
        previous: The previous round's record, empty for the first round.

    Returns:
        ``verdict``, its ``settled`` renamed ``passes_within_round``, with ``change_from_previous_round``
        and the across-rounds ``settled`` added.
    """
    if verdict:
        lam = verdict["lambdahat"]
        prev_lam = previous.get("lambdahat")
        change = abs(lam - prev_lam) / abs(lam) if prev_lam is not None and lam != 0 else math.inf
        verdict["change_from_previous_round"] = change
        verdict["passes_within_round"] = passes = verdict.pop("settled")
        verdict["settled"] = bool(passes and previous.get("passes_within_round", False)
                                  and change <= STOP_ROUND_CHANGE)
    return verdict


def run_until_settled(
    chains: Chains, run: dict[str, Any], *, max_steps: int, min_burnin: int, bar: Any = None,
    monitor: StepCheck | None = None,
) -> tuple[np.ndarray, np.ndarray, int, dict[str, Any]]:
    """Advance the chains in rounds of doubling length until a round is :func:`confirm`-ed or ``max_steps``.

    With a ``monitor`` (``epsilon="auto"``: :meth:`sgld.monitor.StepSizeMonitor.check`), each round
    is first judged for its step size; when the monitor shrinks ε, every draw so far becomes burn-in:
    the rounds start again (4000 steps, then doubling) from the chains' current states at the new ε,
    within the same ``max_steps`` budget.

    Args:
        chains: The chains, continued from where they stand.
        run: Keyword arguments of :meth:`Chains.run` for every round (``epsilon``, ``mala_every``,
            ``loss_trace_minibatch``, ``control_variate``).
        max_steps: Step budget per chain, discarded draws included.
        min_burnin: Smallest burn-in (``num_burnin_steps``).
        bar: A progress bar to update, or None.
        monitor: ``monitor(chains, round_trace, round_acceptances, epsilon) -> (epsilon, record)``, or None.

    Returns:
        The (chains, steps) trace since the last change of ε, its MALA acceptances, the burn-in picked
        (50% of the trace if the last round did not pass), and the record: ``rule``, ``max_steps``,
        every round's verdict in ``rounds``, ``reason``, ``settled``, ``total_steps`` (per chain),
        ``discarded_steps`` (run before the last change of ε), and with a monitor ``step_checks``
        (its record of every round), ``epsilon_changes`` (those that shrank ε, with the reason) and
        ``final_epsilon``.
    """
    traces, accepts, rounds, checks = [], [], [], []
    total, target, start = 0, min(FIRST_ROUND_STEPS, max_steps), 0  # start: first step of the kept trace
    while True:
        # Each round's length is a multiple of mala_every, so the acceptance checks stay every mala_every steps.
        trace, accept = chains.run(target - total, bar=bar, **run)
        total = target
        if monitor is not None:
            epsilon, check = monitor(chains, trace, accept, run["epsilon"])
            checks.append(check)
            if epsilon < run["epsilon"] and total < max_steps:
                run = dict(run, epsilon=epsilon)
                traces, accepts, start = [], [], total
                rounds.append(dict(steps=total, settled=False, epsilon_changed=True))
                target = min(total + FIRST_ROUND_STEPS, max_steps)
                continue
        traces.append(trace)
        accepts.append(accept)
        trace = np.concatenate(traces, axis=1)
        alive = np.array([s is None for s in chains.diverged_at])
        verdict = settle(trace[alive], chains.init_loss, chains.nbeta, min_burnin) if alive.any() else {}
        verdict = confirm(verdict, rounds[-1] if rounds else {})
        rounds.append(verdict or dict(steps=trace.shape[1], settled=False))
        if not alive.any():
            reason = "every chain diverged"
        elif verdict.get("settled"):
            reason = "settled"
        elif total >= max_steps:
            reason = "max_steps reached"
        else:
            target = min(start + 2 * (total - start), max_steps)
            continue
        break
    burnin = verdict.get("burnin", max(min_burnin, trace.shape[1] // 2))
    stopping = dict(rule=RULE, max_steps=max_steps, rounds=rounds, reason=reason, settled=reason == "settled",
                    total_steps=total, discarded_steps=start)
    if monitor is not None:
        stopping.update(step_checks=checks, epsilon_changes=[c for c in checks if c["new_epsilon"] < c["epsilon"]],
                        final_epsilon=run["epsilon"])
    return trace, np.concatenate(accepts, axis=1), burnin, stopping
