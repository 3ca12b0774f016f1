"""expt_mala_vs_sgld.py: records, config checks, SGLD against MALA on a small n, its sweep file and notebook."""

import json
import shlex

import pytest
from sacred.arg_parser import get_config_updates
from sacred.observers import FileStorageObserver

import results
from expt_mala_vs_sgld import ex
from gen_commands_expt_mala_vs_sgld import Grid, make_commands, sizes
from tests.notebook_runner import execute_notebook

# A small ReLU network at n = 300 where both samplers mix within 2,000 steps: a larger ε and a
# tighter localization than the study's (ε = 1e-5, γ = 1), so the chains forget w* in ~200 steps.
SMALL = {
    "input_dim": 3,
    "layer_widths": [5, 2],
    "num_training_data": 300,
    "device": "cpu",
    "sgld_config": {"epsilon": 1e-3, "gamma": 10.0, "num_steps": 2000, "num_chains": 4, "batch_size": 32,
                    "num_burnin_steps": 500},
}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("mala_runs")
    observer = FileStorageObserver(str(path))
    ex.observers.append(observer)
    try:
        for sampler in ("mala", "sgld"):
            assert ex.run(config_updates={**SMALL, "sampler": sampler}).status == "COMPLETED"
    finally:
        ex.observers.remove(observer)
    return path


@pytest.mark.slow
def test_runs_record_estimate_time_and_acceptance(runs_dir):
    for run_id, sampler in (("1", "mala"), ("2", "sgld")):
        info = json.loads((runs_dir / run_id / "info.json").read_text())
        assert info["sampler"] == sampler and info["n"] == 300 and info["device"] == "cpu"
        assert info["wall_time_s"] > 0 and info["model_dim"] == 5 * 4 + 2 * 6
        assert 0.9 <= info["mala_acceptance"] <= 1.0  # MALA: realised rate; SGLD: mean MH probability
        assert info["batch_size"] == (300 if sampler == "mala" else 32)
        assert (runs_dir / run_id / "loss_traces.npz").exists()


@pytest.mark.slow
def test_sgld_agrees_with_mala_on_small_n(runs_dir):
    # Same network, data, ε, γ, nβ and steps. Measured (seed 0): MALA 2.321 ± 0.33, SGLD 2.328 ± 0.21
    # (std over 4 chains), +0.3%. Tolerance 10%: about two standard errors of the difference.
    runs = results.load_runs(runs_dir, status="COMPLETED").set_index("sampler")
    mala, sgld = runs.loc["mala", "lambdahat"], runs.loc["sgld", "lambdahat"]
    assert mala > 0.5
    assert sgld == pytest.approx(mala, rel=0.10)


def test_bad_config_is_explained():
    with pytest.raises(ValueError, match="unknown sampler 'hmc'"):
        ex.run(config_updates={**SMALL, "sampler": "hmc"})
    with pytest.raises(ValueError, match="sgld_config.epsilon must be a number here"):
        ex.run(config_updates={**SMALL, "sgld_config": {"epsilon": "auto"}})
    with pytest.raises(ValueError, match="layer_widths must list >= 1 hidden widths"):
        ex.run(config_updates={**SMALL, "layer_widths": [2]})


def test_default_sweep_is_the_reference_study():
    assert sizes(Grid()) == [100, 316, 1000, 3162, 10_000, 31_623, 100_000]
    commands = make_commands(Grid())
    assert len(commands) == 7 * 2
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:4] == ["python", "expt_mala_vs_sgld.py", "-F", "outputs/mala_vs_sgld/"]
        updates, named = get_config_updates(argv[argv.index("with") + 1:])
        assert named == []
        assert updates["sgld_config"] == {"epsilon": 1e-5, "gamma": 1.0, "num_steps": 10_000, "num_chains": 5,
                                          "batch_size": 32}
        seen.add((updates["num_training_data"], updates["sampler"]))
    assert len(seen) == len(commands)
    with pytest.raises(ValueError, match="unknown sampler 'hmc'"):
        Grid(samplers="mala,hmc")


@pytest.mark.slow
def test_notebook_runs_on_real_runs(runs_dir, tmp_path):
    nb = execute_notebook("mala_vs_sgld.ipynb", {"MALA_RUNS_DIR": str(runs_dir)}, tmp_path)
    text = "".join(o.get("data", {}).get("text/plain", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.outputs)
    assert "relative_difference" in text and "speedup" in text
