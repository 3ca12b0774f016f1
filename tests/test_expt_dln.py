"""Smoke, configuration and science tests for expt_dln.py."""

import json
import shlex
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sacred.arg_parser import get_config_updates
from sacred.initialize import create_run
from sacred.observers import FileStorageObserver
from torch.func import hessian

import expt_dln
from curvature import flat_function, functional_rank
from experiment import MAX_POINTS_PER_METRIC, SGLDConfig, TrainingConfig, mse_loss, parse
from expt_dln import TrueParamConfig, ex, hessian_trace
from models.dln import DLN, SyntheticDLNData, make_true_params

TINY = {
    "input_dim": 3,
    "layer_widths": [4, 2],
    "num_training_data": 200,
    "num_test_data": 10,
    "sgld_config": {"epsilon": 1e-4, "num_steps": 40, "num_chains": 2, "batch_size": 20, "num_burnin_steps": 10},
    "training_config": {"optim": "adam", "num_steps": 30, "batch_size": 20},
    "true_param_config": {"method": "low_rank", "rank": 1},
    "do_training": True,
    "do_functional_rank": True,
    "do_hessian_trace": True,
    "do_compute_distance": True,
    "save_true_param": True,
}

README_COMMAND = (
    "python expt_dln.py -F /tmp/out with expt_name=x num_training_data=1000000 "
    "layer_widths='[259, 286, 885, 235, 204, 274, 252]' input_dim=185 true_param_config.method='rand_rank' "
    "true_param_config.prop_rank_reduce=0.5 sgld_config.epsilon=2e-07 sgld_config.num_steps=20000 "
    "sgld_config.gamma=1.0 sgld_config.batch_size=500 do_training=True training_config.optim='sgd' "
    "training_config.learning_rate=0.01 training_config.batch_size=500 training_config.num_steps=50000 "
    "do_functional_rank=False do_hessian_trace=False seed=1"
)


@pytest.fixture
def observed(tmp_path):
    observer = FileStorageObserver(str(tmp_path))
    ex.observers.append(observer)
    yield tmp_path
    ex.observers.remove(observer)


def test_tiny_run_records_everything(observed) -> None:
    run = ex.run(config_updates=TINY)
    assert run.status == "COMPLETED"
    info = json.loads((observed / "1" / "info.json").read_text())
    for key in [
        "lambdahat", "lambdahat_std", "lambdahat_per_chain", "init_loss", "true_lambda", "true_multiplicity",
        "true_rank", "true_matrix_shape", "model_dim", "mala_acceptance", "rhat", "ess", "lambdahat_quarters",
        "diverged", "epsilon", "epsilon_calibration", "nbeta", "trained_param_info", "functional_rank_info",
        "hessian_trace_estimate", "true_layer_ranks",
    ]:
        assert key in info, key
    assert "loss_trace" not in info and "loss_trace" not in info["trained_param_info"]
    assert info["true_rank"] == 1 and info["true_layer_ranks"] == [1, 1]
    assert info["true_lambda"] == 3.0 and info["model_dim"] == 20  # 3→4→2 at rank 1: RRR case 1, (50 − 1 − 25)/8
    assert info["true_matrix_shape"] == [2, 3]
    assert info["nbeta"] == pytest.approx(200 / np.log(200))
    assert len(info["lambdahat_per_chain"]) == 2 and len(info["lambdahat_quarters"]) == 4
    assert {"lambdahat", "training_losses", "final_training_loss"} <= set(info["trained_param_info"])
    # rank of the output Jacobian = dim of the rank-1 matrices in ℝ^{2×3} = 1·(3 + 2 − 1)
    assert info["functional_rank_info"]["functional_rank"] == 4
    assert run.result["true_lambda"] == 3.0

    files = {p.name for p in (observed / "1").iterdir()}
    assert {"config.json", "run.json", "info.json", "metrics.json", "loss_traces.npz", "true_param.pt"} <= files
    with np.load(observed / "1" / "loss_traces.npz") as npz:
        assert npz["loss_trace"].shape == (2, 40) and npz["trained_loss_trace"].shape == (2, 40)
        assert npz["sgld_distance"].shape == (40,) and (npz["sgld_distance"] > 0).all()
        assert len(npz["jacobian_singular_values"]) == 20
    metrics = json.loads((observed / "1" / "metrics.json").read_text())
    assert len(metrics["sgld/loss/chain1"]["values"]) == 40 and "trained/sgld/loss/chain0" in metrics
    assert len(metrics["train/loss"]["values"]) == 30
    teacher = torch.load(observed / "1" / "true_param.pt")
    assert [tuple(w.shape) for w in teacher] == [(4, 3), (2, 4)]


@pytest.mark.slow
def test_command_line_run_records_its_device(tmp_path) -> None:
    """``python expt_dln.py -F DIR with device=cpu ...`` runs there and says so in the run's info."""
    command = [sys.executable, "expt_dln.py", "-F", str(tmp_path), "with", "device=cpu", "input_dim=3",
               "layer_widths=[4, 2]", "num_training_data=200", "sgld_config.num_steps=20",
               "sgld_config.num_burnin_steps=10", "sgld_config.batch_size=20", "sgld_config.num_chains=2",
               "do_training=True", "training_config.optim=adam", "training_config.num_steps=20",
               "training_config.batch_size=20"]
    done = subprocess.run(command, capture_output=True, text=True, cwd=expt_dln.__file__.rsplit("/", 1)[0])
    assert done.returncode == 0, done.stderr
    info = json.loads((tmp_path / "1" / "info.json").read_text())
    assert info["device"] == "cpu" and isinstance(info["device_name"], str) and info["device_name"]
    assert np.isfinite(info["lambdahat"]) and len(info["trained_param_info"]["training_losses"]) == 20


def test_training_divergence_names_its_first_bad_step() -> None:
    """The loss is checked every CHECK_EVERY steps, not every step, but the first bad step is named."""
    updates = {**TINY, "do_functional_rank": False, "do_hessian_trace": False, "do_compute_distance": False,
               "training_config": {"optim": "sgd", "learning_rate": 50.0, "num_steps": 250, "batch_size": 20}}
    with pytest.raises(FloatingPointError, match=r"training loss is (nan|inf) at step (\d+); lower") as err:
        ex.run(config_updates=updates)
    step = int(str(err.value).split(" at step ")[1].split(";")[0])
    assert step < expt_dln.CHECK_EVERY  # SGD at learning rate 50 on inputs of size ~10 blows up at once


def test_same_seed_same_estimate() -> None:
    updates = {**TINY, "do_training": False, "do_functional_rank": False, "do_hessian_trace": False,
               "do_compute_distance": False, "save_true_param": False}
    a, b = ex.run(config_updates=updates), ex.run(config_updates=updates)
    c = ex.run(config_updates={**updates, "seed": 1})
    assert a.info["lambdahat"] == b.info["lambdahat"] != c.info["lambdahat"]


def test_long_traces_are_thinned_in_metrics() -> None:
    logged = []
    fake_run = SimpleNamespace(log_scalar=lambda name, value, step: logged.append((name, step)))
    expt_dln.log_traces(fake_run, SimpleNamespace(loss_trace=np.zeros((2, 200_001))), "x/")
    chain1 = [step for name, step in logged if name == "x/sgld/loss/chain1"]
    assert 900 <= len(chain1) <= MAX_POINTS_PER_METRIC and chain1[0] == 0 and chain1[-1] > 199_000


def test_epsilon_auto_records_the_calibration() -> None:
    updates = {**TINY, "sgld_config": {**TINY["sgld_config"], "epsilon": "auto"}, "do_training": False,
               "do_functional_rank": False, "do_hessian_trace": False, "do_compute_distance": False}
    info = ex.run(config_updates=updates).info
    assert info["epsilon"] == info["epsilon_calibration"]["epsilon"] > 0


@pytest.mark.parametrize(
    "updates,error,match",
    [
        ({"bogus_key": 1}, Exception, "bogus_key"),  # Sacred's ConfigAddedError
        ({"sgld_config": {"eps": 1e-3}}, TypeError, r"unknown config key sgld_config.eps; sgld_config accepts"),
        ({"training_config": {"lr": 0.1}}, TypeError, r"training_config.lr"),
        ({"true_param_config": {"method": "lowrank"}}, ValueError,
         r"unknown true_param_config.method 'lowrank'; choose from "
         r"\['random', 'zero', 'rand_rank', 'rand_rank_sv', 'low_rank'\]"),
        ({"training_config": {"optim": "rmsprop"}}, ValueError,
         r"unknown training_config.optim 'rmsprop'; choose from \['sgd', 'adam'\]"),
        ({"sgld_config": {"epsilon": -1e-6}}, ValueError,
         r"sgld_config.epsilon must be a number > 0 or 'auto', got -1e-06"),
        ({"sgld_config": {"num_steps": 2.5}}, ValueError, r"sgld_config.num_steps must be an int >= 1, got 2.5"),
        ({"layer_widths": "abc"}, ValueError, r"layer_widths must be a non-empty list of ints"),
        ({"input_dist": "gauss"}, ValueError, r"unknown input_dist 'gauss'; choose from \['uniform', 'unit_ball'\]"),
        ({"true_param_config": {"rank": 9}}, ValueError, r"rank must be an int in \[0, 2\]"),
        ({"num_test_data": 10**7}, ValueError, r"lower num_test_data or set do_functional_rank=False"),
        ({"device": "gpu"}, ValueError, r"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got 'gpu'"),
        ({"device": "cuda:99"}, ValueError, r"device='cuda:99' but torch sees"),  # no such GPU, here or anywhere
    ],
)
def test_bad_config_fails_clearly(updates: dict, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ex.run(config_updates={**TINY, **updates})


def test_config_dataclasses_accept_every_reference_key() -> None:
    config = create_run(ex, "run", {}).config
    assert parse(SGLDConfig, "sgld_config", config["sgld_config"]).num_burnin_steps >= 0
    assert parse(TrueParamConfig, "true_param_config", config["true_param_config"]).method == "low_rank"
    assert parse(TrainingConfig, "training_config", config["training_config"]).optim == "sgd"
    for key in ["expt_name", "loss_trace_minibatch", "do_compute_distance", "layer_widths", "input_dim", "input_dist",
                "num_training_data", "itemp", "num_test_data", "do_training", "do_functional_rank",
                "do_hessian_trace", "seed", "save_true_param", "verbose", "device"]:
        assert key in config, key


def test_readme_command_is_accepted_as_written() -> None:
    argv = shlex.split(README_COMMAND)
    updates, named = get_config_updates(argv[argv.index("with") + 1:])
    config = create_run(ex, "run", updates, named_configs=named).config  # raises on unknown top-level keys
    assert config["layer_widths"] == [259, 286, 885, 235, 204, 274, 252]
    assert config["itemp"] == pytest.approx(1 / np.log(1e6))
    parse(SGLDConfig, "sgld_config", config["sgld_config"])
    parse(TrueParamConfig, "true_param_config", config["true_param_config"])
    parse(TrainingConfig, "training_config", config["training_config"])


def test_default_observer_is_named_after_the_run(monkeypatch) -> None:
    monkeypatch.setattr(ex, "observers", [])
    expt_dln.observe_by_default({"UPDATE": ["expt_name=foo", "seed=3"]})
    assert ex.observers[0].basedir.endswith("outputs/foo")
    monkeypatch.setattr(ex, "observers", [])
    expt_dln.observe_by_default({"UPDATE": ["demo"]})
    assert ex.observers[0].basedir.endswith("outputs/demo")
    monkeypatch.setattr(ex, "observers", [])
    expt_dln.observe_by_default({"UPDATE": []})
    assert ex.observers[0].basedir.endswith("outputs/dln")
    monkeypatch.setattr(ex, "observers", [])
    expt_dln.observe_by_default({"UPDATE": [], "--file_storage": "/tmp/x"})
    expt_dln.observe_by_default({"UPDATE": [], "--mongo_db": "localhost:27017:db"})
    assert ex.observers == []


def test_hutchinson_matches_the_exact_hessian_trace() -> None:
    g = torch.Generator().manual_seed(0)
    model = DLN(3, [4, 2]).set_matrices(make_true_params(3, [4, 2], "random", generator=g))
    data = SyntheticDLNData(torch.randn(2, 3, generator=g), 50, seed=0)
    x, y = data.get_batch(torch.arange(50))
    w, forward = flat_function(model, x)
    exact = float(torch.trace(hessian(lambda v: mse_loss(forward(v), y))(w)))
    est = hessian_trace(model, x, y, g, num_probes=400)
    assert est["estimate"] == pytest.approx(exact, abs=4 * est["std_error"])
    assert est["std_error"] < 0.1 * exact


def test_functional_rank_is_the_rank_r_manifold_dimension() -> None:
    for r in range(4):
        g = torch.Generator().manual_seed(r)
        model = DLN(4, [5, 3, 6]).set_matrices(make_true_params(4, [5, 3, 6], "low_rank", rank=r, generator=g))
        x = SyntheticDLNData(model.product(), 30, seed=r).inputs(torch.arange(30))
        assert functional_rank(model, x)[0]["functional_rank"] == r * (4 + 6 - r)


# λ̂ against Aoyagi's λ at w* on the most singular stratum (true_param_config.method=low_rank).
# Hyperparameters: ε at about half the stability limit 1/a_max of the local potential's Hessian at
# w* (power iteration), where the predicted discretisation bias ε·tr H/8 stays below 5% of λ; half
# the steps burn-in; uniform inputs on [-10, 10]; nβ = n / log n. Deeper nets mix more slowly and
# vary more between runs (see the issue), hence more chains at depth 4.
SCIENCE = [
    # id, input_dim, layer_widths, rank, n, epsilon, chains; true λ (m) in the comment
    ("depth2-rank3", 7, [6, 5], 3, 3000, 1.2e-5, 8),  # λ = 16.5 (m = 2), d = 72, regular part 13.5
    ("depth3-rank1", 4, [4, 8, 8], 1, 10_000, 1.5e-5, 8),  # λ = 10 (m = 1), d = 112, regular part 5.5
    ("depth4-rank2", 4, [4, 7, 7, 7], 2, 10_000, 1.2e-5, 16),  # λ = 11 (m = 1), d = 142, regular part 9
]


@pytest.mark.slow
@pytest.mark.parametrize("name,input_dim,widths,rank,n,epsilon,chains", SCIENCE, ids=[c[0] for c in SCIENCE])
def test_lambdahat_matches_aoyagi_on_the_most_singular_stratum(name, input_dim, widths, rank, n, epsilon,
                                                                chains) -> None:
    run = ex.run(config_updates={
        "input_dim": input_dim, "layer_widths": widths, "num_training_data": n,
        "true_param_config": {"method": "low_rank", "rank": rank},
        "sgld_config": {"epsilon": epsilon, "gamma": 1.0, "num_steps": 5000, "num_chains": chains, "batch_size": 100,
                        "num_burnin_steps": 2500},
        "seed": 0,
    })
    info = run.info
    assert info["true_rank"] == rank and not info["diverged"]
    assert info["lambdahat"] == pytest.approx(info["true_lambda"], rel=0.10), info["lambdahat_quarters"]
