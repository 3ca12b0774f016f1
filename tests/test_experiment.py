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


def test_train_sgd_measures_before_each_update_and_after_the_last() -> None:
    import torch

    from experiment import TrainingConfig, model_dim, train_sgd

    model = torch.nn.Linear(2, 1)
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    training = TrainingConfig(optim="sgd", learning_rate=0.1, momentum=None, batch_size=8, num_steps=5)
    seen = []
    losses = train_sgd(model, torch.nn.functional.mse_loss, lambda t: (x, y), training, measure_at=[0, 2, 5],
                       measure=lambda t: seen.append((t, float(torch.nn.functional.mse_loss(model(x), y)))))
    assert [t for t, _ in seen] == [0, 2, 5] and losses.shape == (5,)
    assert seen[0][1] == pytest.approx(float(losses[0])) and seen[1][1] == pytest.approx(float(losses[2]))
    assert model_dim(model) == 3


def test_train_sgd_names_the_first_non_finite_step() -> None:
    import torch

    from experiment import TrainingConfig, train_sgd

    model = torch.nn.Linear(1, 1)
    training = TrainingConfig(optim="sgd", learning_rate=0.1, momentum=None, batch_size=1, num_steps=10)
    y = [torch.zeros(1, 1)] * 3 + [torch.full((1, 1), float("nan"))] * 7
    with pytest.raises(FloatingPointError, match=r"training loss is nan at step 3; lower training_config"):
        train_sgd(model, torch.nn.functional.mse_loss, lambda t: (torch.ones(1, 1), y[t]), training, check_every=4)


def test_check_common_wording() -> None:
    from experiment import check_common

    with pytest.raises(ValueError, match=r"expt_name must be None or a str, got 3"):
        check_common(3)
    with pytest.raises(ValueError, match=r"itemp \(β\) must be a number > 0, got 0"):
        check_common(None, itemp=0)
    with pytest.raises(ValueError, match=r"training_config.batch_size=20 exceeds the 10 training samples; lower it"):
        check_common("x", itemp=0.1, num_train=10, batch_sizes={"sgld_config": 10, "training_config": 20})
