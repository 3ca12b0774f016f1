"""expt_rescaling.py: records, config checks, the invariance itself, its sweep file and its notebook."""

import contextlib
import json
import shlex

import pytest
import torch
from sacred.arg_parser import get_config_updates
from sacred.observers import FileStorageObserver

import results
from expt_rescaling import ex, rescale, rescaling_preconditioner
from gen_commands_expt_rescaling import Grid, make_commands, scales
from models.mlp import random_mlp
from tests.notebook_runner import execute_notebook

# A small network at the study's ε, γ = 0, batch and input range; n and the steps are cut down.
TINY = {
    "input_dim": 3,
    "layer_widths": [6, 2],
    "num_copies": 2,
    "num_training_data": 500,
    "sgld_config": {"epsilon": 1e-5, "gamma": 0.0, "num_steps": 400, "num_chains": 2, "batch_size": 100},
}
RUNS = [(1e-3, "rescaling"), (1.0, "rescaling"), (1e3, "rescaling"), (1.0, "none"), (1e3, "none"),
        (1.0, "rmsprop"), (1e3, "rmsprop")]


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("rescaling_runs")
    observer = FileStorageObserver(str(path))
    ex.observers.append(observer)
    try:
        for scale, precond in RUNS:
            # Off the matching P, at α = 1e3, the chains diverge and the estimator warns so.
            diverges = precond != "rescaling" and scale != 1.0
            with pytest.warns(RuntimeWarning, match="diverged") if diverges else contextlib.nullcontext():
                run = ex.run(config_updates={**TINY, "scale": scale, "preconditioner": precond})
            assert run.status == "COMPLETED"
    finally:
        ex.observers.remove(observer)
    return path


def test_rescaled_network_computes_the_same_function():
    teacher = random_mlp(3, [6], 2, torch.Generator().manual_seed(0), num_copies=2)
    x = torch.randn(50, 3) * 10
    for alpha in (1e-4, 1e4):
        torch.testing.assert_close(rescale(teacher, alpha)(x), teacher(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_run_records_result_scale_and_preconditioner(runs_dir):
    info = json.loads((runs_dir / "3" / "info.json").read_text())  # α = 1e3, rescaling
    assert info["scale"] == 1e3 and info["preconditioner_name"] == "rescaling"
    assert info["preconditioner"]["kind"] == "fixed"
    assert info["preconditioner"]["per_tensor"] == {
        "net.0.weight": pytest.approx(1e6), "net.0.bias": pytest.approx(1e6), "net.2.weight": pytest.approx(1e-6),
        "net.2.bias": 1.0}
    assert info["model_dim"] == 6 * 4 + 2 * 7 and len(info["lambdahat_per_chain"]) == 2
    assert (runs_dir / "3" / "loss_traces.npz").exists()
    assert rescaling_preconditioner(0.1) == {"net.0.weight": pytest.approx(0.01), "net.0.bias": pytest.approx(0.01),
                                             "net.2.weight": pytest.approx(100.0)}


@pytest.mark.slow
def test_rescaling_preconditioner_makes_lambdahat_invariant(runs_dir):
    # With P = α² / α⁻² the chain at α is the image of the chain at α = 1 (same seed, same noise), so
    # λ̂ is the same up to float32 rounding along 400 steps. Tolerance 0.5% (the study's target is ±2%).
    runs = results.load_runs(runs_dir, status="COMPLETED").set_index(["preconditioner", "scale"])
    base = runs.loc[("rescaling", 1.0), "lambdahat"]
    assert base > 0
    for alpha in (1e-3, 1e3):
        assert runs.loc[("rescaling", alpha), "lambdahat"] == pytest.approx(base, rel=5e-3)
    # P = 1 at α = 1: the same sampler as no preconditioner.
    assert runs.loc[("none", 1.0), "lambdahat"] == pytest.approx(base, rel=1e-6)
    # Without the matching P the same ε breaks at α = 1e3 (measured: every chain diverges; so does rmsprop).
    for precond in ("none", "rmsprop"):
        row = runs.loc[(precond, 1e3)]
        assert row["diverged"] or abs(row["lambdahat"] / base - 1) > 0.1


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="layer_widths must be \\[hidden width, output dim\\]"):
        ex.run(config_updates={**TINY, "layer_widths": [4, 4, 2]})
    with pytest.raises(ValueError, match="unknown preconditioner 'adam'"):
        ex.run(config_updates={**TINY, "preconditioner": "adam"})
    with pytest.raises(ValueError, match="scale \\(α\\) must be a number > 0"):
        ex.run(config_updates={**TINY, "scale": -1.0})
    with pytest.raises(TypeError, match="unknown config key sgld_config.eps"):
        ex.run(config_updates={**TINY, "sgld_config": {"eps": 1e-5}})


def test_default_sweep_is_the_reference_study():
    commands = make_commands(Grid())
    assert len(commands) == 3 * 3 * 17
    assert scales(Grid())[0] == 1e-4 and scales(Grid())[-1] == 1e4 and scales(Grid())[8] == 1.0
    seen, chain_seeds = set(), {}
    for command in commands:
        argv = shlex.split(command)
        assert argv[:4] == ["python", "expt_rescaling.py", "-F", "outputs/rescaling/"]
        updates, named = get_config_updates(argv[argv.index("with") + 1:])
        assert named in ([], ["medium"], ["large"])
        assert updates["sgld_config"] == {"epsilon": 1e-5, "gamma": 0.0, "num_steps": 10_000, "num_chains": 5,
                                          "batch_size": 500}
        assert updates["num_training_data"] == 10_000
        seen.add((tuple(named), updates["preconditioner"], updates["scale"]))
        chain_seeds.setdefault((tuple(named), updates["preconditioner"]), []).append(updates["sgld_seed"])
    assert len(seen) == len(commands)  # no two lines are the same run
    # Independent chains per factor by default, so the spread over factors is Monte Carlo noise.
    assert all(sorted(v) == list(range(17)) for v in chain_seeds.values())
    assert "sgld_seed" not in make_commands(Grid(shared_noise=True))[0]
    with pytest.raises(ValueError, match="unknown network 'huge'"):
        Grid(networks="small,huge")


@pytest.mark.slow
def test_notebook_runs_on_real_runs(runs_dir, tmp_path):
    nb = execute_notebook("rescaling_invariance.ipynb", {"RESCALING_RUNS_DIR": str(runs_dir)}, tmp_path)
    text = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "max_abs_deviation" in text and "rescaling" in text
