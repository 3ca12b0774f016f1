"""Science, configuration and notebook tests for expt_dln_saddle_dynamics.py."""

import json
import shlex

import numpy as np
import pandas as pd
import pytest
from docopt import docopt
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run
from sacred.observers import FileStorageObserver

import expt_dln_saddle_dynamics as sd
import plots
import results
from experiment import SGLDConfig, TrainingConfig, parse
from gen_commands_expt_dln_saddle_dynamics import Grid, make_commands
from models.dln import true_lambda
from tests.notebook_runner import execute_notebook

README_COMMAND = ("python expt_dln_saddle_dynamics.py -m HOST:27017:DB with expt_name=NAME width=500 seed=42 "
                  "training_config.num_steps=50000 logging_period=100")

# The default network (D = 5, width 3, 3 layers: λ = 4.5, 6.5, 8.5 at ranks 0-2) over its rank-0, 1 and 2
# plateaus, λ̂ at 4-5 steps inside each (the transitions are near steps 300 and 1400), with short chains.
SCIENCE = {
    "training_config": {"num_steps": 2300},
    "log_at_steps": [0, 30, 60, 90, 600, 680, 760, 840, 1700, 1850, 2000, 2150, 2300],
    "sgld_config": {"num_steps": 800, "num_burnin_steps": 400},
}


@pytest.fixture
def observed(tmp_path):
    observer = FileStorageObserver(str(tmp_path))
    sd.ex.observers.append(observer)
    yield tmp_path
    sd.ex.observers.remove(observer)


@pytest.mark.slow
def test_lambdahat_steps_up_with_the_rank_and_follows_aoyagi(observed, tmp_path) -> None:
    run = sd.ex.run(config_updates={**SCIENCE, "do_plot": True})
    assert run.status == "COMPLETED"
    plateaus = run.info["plateaus"]
    ranks = [p["rank"] for p in plateaus]
    assert ranks == [0, 1, 2] and all(p["num_points"] >= 3 for p in plateaus), plateaus
    means = [p["lambdahat_mean"] for p in plateaus]
    assert all(b > a for a, b in zip(means, means[1:], strict=False)), f"λ̂ does not step up: {plateaus}"
    for p in plateaus:
        assert abs(p["rel_error"]) <= 0.15, f"rank {p['rank']}: λ̂ {p['lambdahat_mean']:.2f} vs λ {p['true_lambda']}"
    # What was stored reads back and draws: metrics, plateaus, the figure artifact.
    metrics = results.load_metrics(str(observed))
    curve = plots.training_curve(metrics, plots.SADDLE_METRICS)
    assert set(curve["rank"]) >= set(ranks)
    assert np.all(curve["true_lambda"] == [true_lambda(int(r), 5, [3, 3, 5])[0] for r in curve["rank"]])
    assert sorted(set(curve["step"])) == SCIENCE["log_at_steps"]
    for name in ("layer0/rank", "layer2/nuclear_norm", "product/sv4", "test/loss", "llc/rhat"):
        assert name in set(metrics["metric"])
    assert (observed / "1" / "saddle_to_saddle.png").stat().st_size > 10_000
    execute_notebook("dln_saddle_dynamics.ipynb", {"RUNS_DIR": str(observed)}, tmp_path)


def test_plateau_summary_trims_transitions_and_skips_short_plateaus() -> None:
    curve = pd.DataFrame({"step": range(10), "rank": [0, 0, 1, 1, 1, 1, 1, 2, 2, 2],
                          "true_lambda": [3.0] * 2 + [6.0] * 5 + [8.0] * 3,
                          "lambdahat": [3, 3, 9, 6, 6.6, 5.4, 1, 7, 8, 8.0]})
    out = sd.plateau_summary(curve, min_points=2)
    assert [(p["rank"], p["first_step"], p["last_step"]) for p in out] == [(1, 3, 5), (2, 8, 9)]
    assert out[0]["lambdahat_mean"] == pytest.approx(6.0) and out[0]["rel_error"] == pytest.approx(0.0)
    assert out[1]["rel_error"] == pytest.approx(0.0)


def test_plateau_summary_keeps_only_settled_points() -> None:
    # Rank 1 by the threshold 1.0 at steps 2-7, but settled (s₁ ≥ 10, s₂ ≤ 0.1) only at 4-6: at 2-3 the
    # first singular value is still growing, at 7 the second one is on its way up.
    curve = pd.DataFrame({"step": range(9), "rank": [0, 0, 1, 1, 1, 1, 1, 1, 2],
                          "true_lambda": [3.0] * 2 + [6.0] * 6 + [8.0],
                          "lambdahat": [3, 3, 4, 5, 6, 6.5, 5.5, 7.5, 8],
                          "sv_last": [np.nan] * 2 + [1.5, 9.0, 40, 50, 50, 50, 30],
                          "sv_next": [0.05, 0.5, 0.01, 0.01, 0.02, 0.05, 0.1, 0.3, np.nan]})
    out = sd.plateau_summary(curve, min_points=1, rank_threshold=1.0, margin=10.0)
    assert [(p["rank"], p["first_step"], p["last_step"], p["num_points"]) for p in out] == [
        (0, 0, 0, 1), (1, 4, 6, 3), (2, 8, 8, 1)]
    assert out[1]["lambdahat_mean"] == pytest.approx(6.0)
    assert [p["num_points"] for p in sd.plateau_summary(curve, 1, rank_threshold=1.0, margin=2.0)] == [2, 5, 1]
    with pytest.raises(ValueError, match="margin must be > 1"):
        sd.plateau_summary(curve, rank_threshold=1.0, margin=1.0)


def test_logging_steps() -> None:
    assert sd.logging_steps(1000, 300) == [0, 300, 600, 900, 1000]
    steps = sd.logging_steps(50_000, 100, log_spaced=True, num_logging_points=40)
    assert steps[0] == 1 and steps[-1] == 50_000 and len(steps) <= 40
    assert np.all(np.diff(np.log(steps[-10:])) == pytest.approx(np.log(50_000) / 39, rel=1e-2))


def test_reference_command_is_accepted_as_written() -> None:
    argv = shlex.split(README_COMMAND)
    args = docopt(sd.ex.get_usage()[2], argv[1:], default_help=False)  # as ex.run_commandline parses it
    assert args["--mongo_db"] == "HOST:27017:DB"
    updates, named = get_config_updates(args["UPDATE"])
    config = create_run(sd.ex, "run", updates, named_configs=named).config  # raises on unknown keys
    assert (config["width"], config["seed"], config["logging_period"]) == (500, 42, 100)
    assert config["expt_name"] == "NAME"
    assert parse(TrainingConfig, "training_config", config["training_config"]).num_steps == 50_000
    parse(SGLDConfig, "sgld_config", config["sgld_config"])


def test_reference_keys_and_bad_values() -> None:
    config = create_run(sd.ex, "run", {}, named_configs=["reference"]).config
    for key in ("expt_name", "in_out_dim", "loss_trace_minibatch", "width", "initialisation_exponent",
                "num_hidden_layers", "num_training_data", "itemp", "seed", "logging_period", "verbose",
                "do_plot", "device"):
        assert key in config
    assert set(config["sgld_config"]) >= {"epsilon", "gamma", "num_steps", "num_chains", "batch_size"}
    assert set(config["training_config"]) == {"optim", "learning_rate", "momentum", "batch_size", "num_steps"}
    with pytest.raises(TypeError, match="sgld_config.eps"):
        sd.ex.run(config_updates={"sgld_config": {"eps": 1e-6}})
    with pytest.raises(ValueError, match="width must be an int >= 1, got 0"):
        sd.ex.run(config_updates={"width": 0})
    with pytest.raises(ValueError, match="log_at_steps must be None or a non-empty list"):
        sd.ex.run(config_updates={"log_at_steps": [0, 5000]})
    with pytest.raises(ValueError, match="plateau_margin must be a number > 1"):
        sd.ex.run(config_updates={"plateau_margin": 0.5})


def test_tiny_run_metrics(observed) -> None:
    tiny = {"num_training_data": 200, "num_test_data": 20, "training_config": {"num_steps": 20, "batch_size": 20},
            "logging_period": 10, "sgld_config": {"epsilon": 1e-5, "num_steps": 20, "num_burnin_steps": 0,
                                                  "num_chains": 2, "batch_size": 20}}
    run = sd.ex.run(config_updates=tiny)
    assert run.status == "COMPLETED" and run.result["final_rank"] == 0
    metrics = json.loads((observed / "1" / "metrics.json").read_text())
    assert metrics["llc/mean"]["steps"] == [0, 10, 20]
    assert metrics["true/lambda"]["values"] == [4.5] * 3  # Aoyagi at rank 0 for 5 → 3 → 3 → 5
    assert metrics["train/loss"]["values"][0] == pytest.approx(10**2 * (1 + 4 + 9 + 16 + 25) / 5, rel=0.2)


def test_study_commands_parse_and_validate() -> None:
    commands = make_commands(Grid(widths="3,4", num_seeds=2, epsilon="1e-6"))
    assert len(commands) == 4
    for command, (width, seed) in zip(commands, [(3, 0), (3, 1), (4, 0), (4, 1)], strict=True):
        argv = shlex.split(command)
        args = docopt(sd.ex.get_usage()[2], argv[2:], default_help=False)
        assert argv[:2] == ["python", "expt_dln_saddle_dynamics.py"] and args["--file_storage"]
        updates, named = get_config_updates(args["UPDATE"])
        config = create_run(sd.ex, "run", updates, named_configs=named).config
        assert (config["width"], config["seed"], config["sgld_config"]["epsilon"]) == (width, seed, 1e-6)
        parse(SGLDConfig, "sgld_config", config["sgld_config"])
    assert make_commands(Grid()) == make_commands(Grid())
    with pytest.raises(ValueError, match="widths"):
        Grid(widths="3,x")
