"""expt_llc_curve.py: the README command, end-to-end runs, recorded metrics, errors, and λ̂ against an exact λ."""

import json
import math
import shlex

import numpy as np
import pytest
import torch
from sacred.initialize import create_run
from sacred.observers import FileStorageObserver

import data
import expt_llc_curve
from experiment import generators, int_seed
from expt_llc_curve import ModelDataConfig, ex, make_loss
from models import make_model
from tests.data_files import write_cifar10, write_mnist
from tests.notebook_runner import execute_notebook

README_COMMAND = (
    "python expt_llc_curve.py --comment readme -F {out} with expt_name='readme' sgld_config.epsilon=2e-07 "
    "sgld_config.gamma=1.0 sgld_config.num_steps=5000 sgld_config.batch_size=2048 loss_trace_minibatch=True "
    "training_config.optim=sgd training_config.momentum=None training_config.num_steps=30001 "
    "training_config.learning_rate=0.005 training_config.batch_size=512 training_config.l2_regularization=None "
    "force_realisable=False logging_period=1000 do_plot=False verbose=False seed=0"
)
METRICS = ["train/loss", "train/accuracy", "test/loss", "test/accuracy", "train/temperature", "llc/mean", "llc/std",
           "llc/init_loss", "llc/rhat", "llc/mala_acceptance", "llc/num_diverged", "llc/epsilon"]
QUIET = {"--loglevel": "ERROR"}
# Runs of a few SGLD steps are plumbing tests: their traces cannot settle, and the estimator says so.
pytestmark = pytest.mark.filterwarnings("ignore:the loss trace has not settled:UserWarning")


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    write_cifar10(root, per_batch=8, num_test=10)
    write_mnist(root, num_train=64, num_test=32, gz=True)
    return root


@pytest.fixture
def observed(tmp_path):
    observer = FileStorageObserver(str(tmp_path / "runs"))
    ex.observers.append(observer)
    yield tmp_path / "runs"
    ex.observers.remove(observer)


def _metrics(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.mark.slow
def test_readme_command_runs_as_written_on_a_cifar_folder(cifar_dir, tmp_path, monkeypatch):
    # The reference README's command, unchanged, then a few updates that shrink it to seconds.
    monkeypatch.setenv("LLC_DATA_DIR", str(cifar_dir))
    argv = shlex.split(README_COMMAND.format(out=tmp_path))[1:]
    shrink = ["sgld_config.num_steps=4", "sgld_config.batch_size=16", "training_config.num_steps=3",
              "training_config.batch_size=8", "logging_period=2", "model_data_config.layer_width_factor=0.0625",
              "device=cpu", "--loglevel=ERROR", "--capture=sys"]  # Sacred's "fd" capture fights pytest's
    run = ex.run_commandline([*argv, *shrink])
    assert run.status == "COMPLETED" and run.meta_info["comment"] == "readme"
    cfg = run.config
    assert cfg["sgld_config"]["epsilon"] == 2e-7 and cfg["training_config"]["momentum"] is None
    assert cfg["training_config"]["learning_rate"] == 0.005 and cfg["model_data_config"]["model_name"] == "resnet18"
    assert cfg["model_data_config"]["data_name"] == "cifar10"
    assert [c["step"] for c in run.info["checkpoints"]] == [0, 2]
    assert (tmp_path / "1" / "metrics.json").is_file()


@pytest.mark.slow
def test_resnet18_width4_on_noisy_cifar_records_every_metric(cifar_dir, observed):
    run = ex.run(config_updates={
        "device": "cpu",
        "model_data_config": {"data_dir": str(cifar_dir), "layer_width_factor": 0.0625, "label_noise_level": 0.5},
        "sgld_config": {"epsilon": 1e-5, "num_steps": 6, "batch_size": 16, "num_chains": 2},
        "training_config": {"num_steps": 5, "batch_size": 8, "momentum": 0.9, "l2_regularization": 1e-4},
        "logging_period": 2, "do_plot": True}, options=QUIET)
    assert run.status == "COMPLETED"
    run_dir = observed / "1"
    metrics = _metrics(run_dir)
    for name in METRICS:
        assert metrics[name]["steps"] == [0, 2, 4], name  # every logging_period and the last step
    assert len(metrics["train/batch_loss"]["steps"]) == 4
    assert metrics["train/temperature"]["values"][0] == pytest.approx(0.005 / 8)
    info = json.loads((run_dir / "info.json").read_text())
    assert info["model_dim"] == sum(p.numel() for p in expt_llc_curve.make_model(
        "resnet18", width_factor=0.0625).parameters())
    assert info["num_train"] == 40 and info["num_test"] == 10 and info["device"] == "cpu"
    assert {"lambdahat", "rhat", "mala_acceptance", "lambdahat_quarters", "nbeta", "checkpoints"} <= set(info)
    assert info["nbeta"] == pytest.approx(40 / math.log(40))
    assert info["num_noisy_labels"] > 0
    # λ̂ is measured on the clean labels: L_n(w*) differs from the loss on the noisy labels trained on
    assert metrics["llc/init_loss"]["values"][0] != pytest.approx(metrics["train/loss"]["values"][0], rel=1e-3)
    assert (run_dir / "llc_over_training.png").stat().st_size > 10_000


@pytest.mark.slow
def test_sgld_uses_clean_labels_and_eval_mode_batchnorm(cifar_dir):
    # One checkpoint (step 0): rebuild the run's data and initial network from its seeds and compare.
    config = {"device": "cpu", "seed": 3,
              "model_data_config": {"data_dir": str(cifar_dir), "layer_width_factor": 0.0625,
                                    "label_noise_level": 0.5},
              "sgld_config": {"epsilon": 1e-6, "num_steps": 2, "batch_size": 8, "num_chains": 2},
              "training_config": {"num_steps": 1, "batch_size": 8}, "logging_period": 1}
    run = ex.run(config_updates=config, options=QUIET)
    md = ModelDataConfig(model_name="resnet18", data_name="cifar10", data_dir=str(cifar_dir), layer_width_factor=0.0625,
                         label_noise_level=0.5)
    g_data, g_init, _, _ = generators(3, 4)
    d = data.load("cifar10", data_dir=str(cifar_dir), label_noise=0.5, seed=int_seed(g_data))
    model = expt_llc_curve.build_model(md, d, g_init).eval()
    loss = make_loss("cross_entropy")
    with torch.no_grad():
        clean, noisy = float(loss(model(d.x_train), d.y_train_clean)), float(loss(model(d.x_train), d.y_train))
    assert clean != pytest.approx(noisy, rel=1e-3)
    assert run.info["init_loss"] == pytest.approx(clean, rel=1e-5)
    assert run.info["checkpoints"][0]["train/loss"] == pytest.approx(noisy, rel=1e-5)


def test_mlp_with_output_scale_and_hinge_on_mnist_parity(cifar_dir, observed):
    alpha = 1000.0
    run = ex.run(config_updates={
        "device": "cpu",
        "model_data_config": {"model_name": "mlp", "data_name": "mnist_parity", "data_dir": str(cifar_dir),
                              "depth": 2, "width": 8, "alpha": alpha, "loss": "hinge", "activation": "gelu"},
        "sgld_config": {"epsilon": 1e-6, "num_steps": 6, "batch_size": 16},
        "training_config": {"num_steps": 4, "batch_size": 16, "learning_rate": 16.0},
        "logging_period": 3}, options=QUIET)
    assert run.status == "COMPLETED"
    metrics = _metrics(observed / "1")
    # f = α(h(w) − h(w₀)) is 0 at the initialisation: hinge max(0, 1 − y·0) = 1, divided by α²
    assert metrics["train/loss"]["values"][0] == pytest.approx(1 / alpha**2)
    assert metrics["train/loss"]["steps"] == [0, 3]
    assert metrics["train/temperature"]["values"][0] == 1.0
    assert run.info["model_dim"] == (784 + 1) * 8 + 9 * 8 + 9 * 1  # the frozen copy is not a parameter


@pytest.mark.slow
def test_linear_realisable_lambdahat_matches_the_exact_gaussian_value():
    """A linear network f = Wx + b on digits with force_realisable: the loss is quadratic, so λ̂ is known.

    L(w) = mean_i ‖(W − W_t)x_i + b − b_t‖² = Σ_c δ_cᵀ G δ_c, G = X̃ᵀX̃/n (X̃ = [X, 1]): per output the Hessian
    is 2G. SGLD on exp(−nβL − γ/2‖δ‖²) is a Gaussian (Ornstein–Uhlenbeck) chain whose stationary variance
    along an eigenvector of curvature a = nβh + γ is 1/(a(1 − εa/4)) (Euler–Maruyama), so
    E[nβL] = ½ Σ nβh / (a(1 − εa/4)) over the 10 × 65 directions. That is 76.2 here; d/2 would be 325 and
    rank(H)/2 = 310, so a λ̂ that ignores γ, the temperature or the realisable targets fails.
    """
    eps, gamma = 3e-5, 300.0
    d = data.load("digits")
    x = torch.cat([d.x_train, torch.ones(len(d.x_train), 1)], 1).double()
    h = 2 * torch.linalg.eigvalsh(x.T @ x / len(x)).clamp(min=0).numpy()
    n = len(x)
    nbeta = n / math.log(n)
    a = nbeta * h + gamma
    exact = 10 * 0.5 * float(np.sum(nbeta * h / (a * (1 - eps * a / 4))))
    assert exact == pytest.approx(76.17, abs=0.01)
    run = ex.run(config_updates={
        "device": "cpu", "force_realisable": True,
        "model_data_config": {"model_name": "mlp", "data_name": "digits", "depth": 0, "loss": "mse"},
        "training_config": {"num_steps": 21, "batch_size": 64, "learning_rate": 0.05}, "logging_period": 20,
        "sgld_config": {"epsilon": eps, "gamma": gamma, "num_steps": 2000, "num_burnin_steps": 500, "num_chains": 4,
                        "batch_size": 256}}, options=QUIET)
    # At both checkpoints (init and trained) the same λ: the realisable loss is the same quadratic.
    # Measured 74.5 and 76.8 (seed 0); the 4 chains' standard error is about 0.6.
    for row in run.info["checkpoints"]:
        assert row["llc/mean"] == pytest.approx(exact, rel=0.04), row
        assert row["llc/rhat"] < 1.1
    # Realisable: the targets are the network's own outputs, so L_n(w*) is zero up to float32 rounding
    # of O(1) outputs (≲ 1e-13 squared); the targets and this loss may be computed in batches of
    # different shapes, whose matmuls can round differently on another CPU.
    assert run.info["init_loss"] == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("updates, error, match", [
    ({"model_data_config": {"data_name": "imagenet"}}, ValueError,
     r"unknown model_data_config.data_name 'imagenet'; choose from \['cifar10', 'cifar_animal'"),
    ({"model_data_config": {"model_name": "vgg"}}, ValueError,
     r"unknown model_data_config.model_name 'vgg'; choose from \['mlp', 'mnas', 'resnet18'\]"),
    ({"model_data_config": {"data_name": "digits"}}, ValueError, r"model_name='resnet18' needs images"),
    ({"model_data_config": {"data_dir": "/nonexistent/llc"}}, FileNotFoundError,
     r"data_dir '/nonexistent/llc' does not exist.*cifar-10-batches-py/data_batch_1"),
    ({"model_data_config": {"data_name": "mnist", "data_dir": "/tmp"}}, FileNotFoundError,
     r"no file /tmp/MNIST/raw/train-images-idx3-ubyte"),
    ({"model_data_config": {"model_name": "mlp", "data_name": "digits", "loss": "l1"}}, ValueError,
     r"unknown model_data_config.loss 'l1'"),
    ({"model_data_config": {"widht": 3}}, TypeError, r"unknown config key model_data_config.widht"),
    ({"training_config": {"optim": "adam", "momentum": 0.9}}, ValueError, r"momentum=0.9 has no meaning for adam"),
    ({"model_data_config": {"model_name": "mlp", "data_name": "digits", "ptr": 100},
      "sgld_config": {"batch_size": 200}},
     ValueError, r"sgld_config.batch_size=200 exceeds the 100 training samples"),
    ({"model_data_config": {"alpha": 10.0}}, ValueError,
     r"alpha .* is for model_name='mlp' and 'mnas' without BatchNorm only"),
    ({"logging_period": 0}, ValueError, r"logging_period must be an int >= 1, got 0"),
    ({"mask_overlap_k": -1}, ValueError, r"mask_overlap_k must be an int >= 0 \(0 = off\), got -1"),
    ({"max_wall": -5}, ValueError, r"max_wall must be None \(no limit\) or a number of seconds > 0, got -5"),
    ({"max_wall": "1h"}, ValueError, r"max_wall must be None"),
    ({"ckpt_grad_stats": -2}, ValueError, r"ckpt_grad_stats must be an int >= 0 \(0 = off\), got -2"),
    ({"model_data_config": {"model_name": "mnas", "data_name": "digits"}}, ValueError,
     r"model_name='mnas' needs images"),
])
def test_bad_config_fails_naming_the_key(updates, error, match):
    with pytest.raises(error, match=match):
        ex.run(config_updates={"device": "cpu", **updates}, options=QUIET)


def test_loss_functions_against_hand_values():
    f = torch.tensor([[2.0, 0.5, -1.0]])
    y = torch.tensor([0])
    # Weston–Watkins: max(0, 1 − 2 + 0.5) + max(0, 1 − 2 − 1) = 0
    assert float(make_loss("hinge")(f, y)) == 0.0
    assert float(make_loss("hinge")(f, torch.tensor([1]))) == pytest.approx(2.5 + 0.0)  # 1−0.5+2, 1−0.5−1
    assert float(make_loss("hinge", alpha=2.0)(torch.tensor([[0.5]]), torch.tensor([-1.0]))) == pytest.approx(1.5 / 4)
    assert float(make_loss("mse")(torch.tensor([[0.5], [1.0]]), torch.tensor([1.0, -1.0]))) == pytest.approx(
        (0.25 + 4) / 2)
    assert float(expt_llc_curve.accuracy(torch.tensor([[0.3], [-2.0]]), torch.tensor([1.0, 1.0]))) == 0.5


def test_notebook_draws_llc_over_training(tmp_path, observed):
    base = {"device": "cpu", "model_data_config": {"model_name": "mlp", "data_name": "digits_parity", "depth": 1,
                                                   "width": 8, "ptr": 200, "pte": 100},
            "sgld_config": {"epsilon": 1e-5, "num_steps": 20, "batch_size": 50},
            "logging_period": 10}
    for lr in (0.04, 0.16):
        ex.run(config_updates={**base, "training_config": {"num_steps": 21, "batch_size": 16, "learning_rate": lr}},
               options=QUIET)
    execute_notebook("llc_over_training.ipynb", {"LLC_CURVE_RUNS_DIR": str(observed)}, tmp_path)


def test_top_eigs_and_mask_overlap_of_a_linear_model_match_the_dense_hessian(observed):
    # f = wᵀx + b on digits_parity (one output) with force_realisable: L(w') = mean_i (f(x_i; w') − f(x_i; w_t))²
    # has Hessian 2 X̃ᵀX̃/n (X̃ = [X, 1]) at every w_t, so the logged eigenvalues are known; the mask overlap at
    # step 0 is that of this matrix's top-k eigenvectors with the initial parameters' largest entries.
    config = {"device": "cpu", "force_realisable": True, "num_top_eigs": 4, "mask_overlap_k": 3, "logging_period": 2,
              "model_data_config": {"model_name": "mlp", "data_name": "digits_parity", "depth": 0, "loss": "mse",
                                    "ptr": 300, "pte": 50},
              "training_config": {"num_steps": 3, "batch_size": 32, "learning_rate": 0.05},
              "sgld_config": {"epsilon": 1e-5, "num_steps": 4, "batch_size": 32}}
    run = ex.run(config_updates=config, options=QUIET)
    g_data, g_init = generators(0, 4)[:2]
    md = ModelDataConfig(**run.config["model_data_config"])
    d = expt_llc_curve.load_data(md, g_data)
    x = torch.cat([d.x_train, torch.ones(len(d.x_train), 1)], 1).double()
    vals, vecs = torch.linalg.eigh(2 * x.T @ x / len(x))
    vals, vecs = vals.flip(0), vecs.flip(1)  # positive semi-definite: by magnitude = descending
    for row in run.info["checkpoints"]:
        assert [row[f"hessian/top_eig{i}"] for i in range(1, 5)] == pytest.approx(vals[:4].tolist(), rel=1e-4)
    w0 = torch.cat([p.detach().reshape(-1) for p in expt_llc_curve.build_model(md, d, g_init).parameters()])
    idx = torch.topk(w0.abs(), 3).indices
    want = float(vecs[idx, :3].square().sum() / 3)
    assert run.info["checkpoints"][0]["hessian/mask_overlap"] == pytest.approx(want, abs=1e-4)
    metrics = _metrics(observed / "1")
    assert metrics["hessian/top_eig1"]["steps"] == [0, 2] and metrics["hessian/mask_overlap"]["steps"] == [0, 2]
    with pytest.raises(ValueError, match=r"num_top_eigs must be an int in \[0, d=65\)"):
        ex.run(config_updates={**config, "num_top_eigs": 65}, options=QUIET)


# --------------------------------------------------------------------------- the SGD-noise study's knobs

LINEAR_PARITY = {"device": "cpu", "logging_period": 2,
                 "model_data_config": {"model_name": "mlp", "data_name": "digits_parity", "depth": 0, "loss": "mse",
                                       "ptr": 300, "pte": 50},
                 "training_config": {"num_steps": 5, "batch_size": 32, "learning_rate": 0.05},
                 "sgld_config": {"epsilon": 1e-5, "num_steps": 4, "batch_size": 32}}


def test_max_wall_stops_at_a_checkpoint_and_says_why(observed):
    # A budget spent before the first checkpoint ends: training stops there, at step 0 of 5.
    run = ex.run(config_updates={**LINEAR_PARITY, "max_wall": 1e-9}, options=QUIET)
    assert run.status == "COMPLETED"
    assert run.info["stop_reason"] == "max_wall" and run.info["steps_trained"] == 0
    assert [c["step"] for c in run.info["checkpoints"]] == [0]
    assert "train/batch_loss" not in _metrics(observed / "1")
    run = ex.run(config_updates={**LINEAR_PARITY, "max_wall": 3600.0}, options=QUIET)
    assert run.info["stop_reason"] == "num_steps" and run.info["steps_trained"] == 4
    assert [c["step"] for c in run.info["checkpoints"]] == [0, 2, 4]


def test_ckpt_grad_stats_match_per_sample_gradients(observed):
    # f = wᵀx + b, L = mean_i (f_i − y_i)²: per-sample gradients g_i = 2(f_i − y_i)x̃_i are exact, so ‖∇L_n‖ = ‖ḡ‖
    # and, for B of n drawn without replacement, tr Cov(∇L_B) = (n − B)/(B(n − 1)) · mean_i ‖g_i − ḡ‖².
    k = 400
    run = ex.run(config_updates={**LINEAR_PARITY, "ckpt_grad_stats": k}, options=QUIET)
    g_data, g_init = generators(0, 5)[:2]
    md = ModelDataConfig(**run.config["model_data_config"])
    d = expt_llc_curve.load_data(md, g_data)
    model = expt_llc_curve.build_model(md, d, g_init)
    x = torch.cat([d.x_train, torch.ones(len(d.x_train), 1)], 1).double()
    w = torch.cat([model.net[0].weight.detach().reshape(-1), model.net[0].bias.detach()]).double()
    g = 2 * (x @ w - d.y_train.double())[:, None] * x
    n, b = len(x), 32
    noise = (n - b) / (b * (n - 1)) * float((g - g.mean(0)).square().sum(1).mean())
    row = run.info["checkpoints"][0]
    assert row["grad/norm"] == pytest.approx(float(g.mean(0).norm()), rel=1e-4)
    # k = 400 minibatches: the estimate's relative standard error is about sqrt(2/k) ≈ 7% or less.
    assert row["grad/noise_trace"] == pytest.approx(noise, rel=0.2)
    metrics = _metrics(observed / "1")
    assert metrics["grad/norm"]["steps"] == [0, 2, 4] and len(metrics["grad/noise_trace"]["values"]) == 3


def test_mnas_on_mnist_parity_with_hinge(cifar_dir, observed):
    run = ex.run(config_updates={
        "device": "cpu",
        "model_data_config": {"model_name": "mnas", "data_name": "mnist_parity", "data_dir": str(cifar_dir),
                              "depth": 1, "width": 4, "loss": "hinge"},
        "sgld_config": {"epsilon": 1e-6, "num_steps": 4, "batch_size": 16},
        "training_config": {"num_steps": 3, "batch_size": 16, "learning_rate": 0.1},
        "logging_period": 2, "ckpt_grad_stats": 2}, options=QUIET)
    assert run.status == "COMPLETED"
    assert run.info["model_dim"] == sum(p.numel() for p in make_model("mnas", num_classes=1, in_channels=1,
                                                                        h=4).parameters())
    assert math.isfinite(run.info["checkpoints"][-1]["grad/noise_trace"])


def test_llc_restrict_logs_each_group_and_everything_equals_the_whole(observed, tmp_path):
    import plots

    config = {**LINEAR_PARITY, "model_data_config": {**LINEAR_PARITY["model_data_config"], "depth": 1, "width": 4},
              "llc_restrict": {"hidden": ["net.0.*"], "readout": "net.2.*", "all": ["*"]}, "do_plot": True}
    run = ex.run(config_updates=config, options=QUIET)
    assert run.status == "COMPLETED"
    info = run.info["llc_restrict"]
    assert info["hidden"]["sampled_parameters"] == ["net.0.weight", "net.0.bias"]
    assert info["readout"]["num_sampled"] == 5 and info["all"]["num_sampled"] == run.info["model_dim"]
    metrics = _metrics(observed / "1")
    for group in ("hidden", "readout", "all"):
        for stat in ("mean", "std", "rhat"):
            assert metrics[f"llc/{group}/{stat}"]["steps"] == [0, 2, 4]
    # The same seed on every parameter: the very same chains as the whole network's λ̂.
    assert metrics["llc/all/mean"]["values"] == metrics["llc/mean"]["values"]
    assert metrics["llc/hidden/mean"]["values"] != metrics["llc/mean"]["values"]
    assert run.info["checkpoints"][-1]["llc/readout/mean"] == metrics["llc/readout/mean"]["values"][-1]
    paths = plots.main(["llc_by_block_over_training", "--runs", str(observed), "--run-id", "1",
                        "--out", str(tmp_path / "fig")])
    assert all(p.is_file() for p in paths) and (observed / "1" / "llc_by_block_over_training.png").is_file()
    with pytest.raises(ValueError, match=r"restrict pattern 'layer9.\*' matches no trainable parameter"):
        ex.run(config_updates={**config, "llc_restrict": {"x": ["layer9.*"]}}, options=QUIET)
    with pytest.raises(ValueError, match=r"llc_restrict\['net'\] is a dict .* a group name with '.'"):
        ex.run(config_updates={**config, "llc_restrict": {"net.0": ["net.0.*"]}}, options=QUIET)
    with pytest.raises(ValueError, match="llc_restrict group names must be non-empty strings without '/'"):
        ex.run(config_updates={**config, "llc_restrict": {"a/b": ["*"]}}, options=QUIET)


def test_resnet18_blocks_cover_every_parameter_once():
    groups = create_run(ex, "run", {}, named_configs=["resnet18_blocks"]).config["llc_restrict"]
    resolved = expt_llc_curve.check_restrict(make_model("resnet18", width_factor=0.0625), groups)
    names = [n for g in resolved.values() for n in g["sampled_parameters"]]
    assert sorted(names) == sorted(n for n, _ in make_model("resnet18", width_factor=0.0625).named_parameters())
    assert set(resolved) == {"stem", "layer1", "layer2", "layer3", "layer4", "fc"}  # Sacred sorts the keys


def test_resnet18_blocks_run_logs_every_block(cifar_dir, observed):
    run = ex.run(named_configs=["resnet18_blocks"], config_updates={
        "device": "cpu", "model_data_config": {"data_dir": str(cifar_dir), "layer_width_factor": 0.0625},
        "sgld_config": {"epsilon": 1e-5, "num_steps": 4, "batch_size": 16, "num_chains": 2},
        "training_config": {"num_steps": 2, "batch_size": 8}, "logging_period": 1}, options=QUIET)
    assert run.status == "COMPLETED"
    metrics = _metrics(observed / "1")
    for group in ("stem", "layer1", "layer2", "layer3", "layer4", "fc"):
        assert metrics[f"llc/{group}/mean"]["steps"] == [0, 1]
    assert sum(g["num_sampled"] for g in run.info["llc_restrict"].values()) == run.info["model_dim"]
