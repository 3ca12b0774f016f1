"""experiment.py: the plumbing every experiment shares."""

from types import SimpleNamespace

import pytest

from experiment import record_llc


class FakeRun:
    """Collects ``log_scalar`` calls as {name: [(step, value)]}."""

    def __init__(self) -> None:
        self.metrics: dict[str, list[tuple[int, float]]] = {}

    def log_scalar(self, name: str, value: float, step: int) -> None:
        self.metrics.setdefault(name, []).append((step, value))


def test_record_llc_counts_the_diverged_chains() -> None:
    result = SimpleNamespace(lambdahat=2.0, lambdahat_std=0.1, init_loss=0.0, rhat=1.01, mala_acceptance=None,
                             epsilon=1e-4, diverged=True, divergence_step=[None, 17, None, 3])
    run = FakeRun()
    record_llc(run, result, step=5)
    assert run.metrics["llc/num_diverged"] == [(5, 2.0)]
    assert run.metrics["llc/mean"] == [(5, 2.0)]
    assert run.metrics["llc/mala_acceptance"][0][1] != run.metrics["llc/mala_acceptance"][0][1]  # None is NaN
    assert set(run.metrics) == {f"llc/{k}" for k in ("mean", "std", "init_loss", "rhat", "mala_acceptance",
                                                     "num_diverged", "epsilon")}


@pytest.mark.parametrize("steps, count", [([None, None], 0.0), ([0, 1, 2], 3.0)])
def test_num_diverged_is_a_count_not_a_flag(steps, count) -> None:
    result = SimpleNamespace(lambdahat=1.0, lambdahat_std=0.0, init_loss=0.0, rhat=1.0, mala_acceptance=1.0,
                             epsilon=1e-4, diverged=any(s is not None for s in steps), divergence_step=steps)
    run = FakeRun()
    record_llc(run, result, step=0)
    assert run.metrics["llc/num_diverged"] == [(0, count)]
