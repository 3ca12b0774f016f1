"""Top-k Hessian eigenspaces against top-k magnitude masks along SGD training (the masks study, small scale).

A small MLP (64 → 93 → 10 on sklearn's 8×8 digits, 6,985 parameters, as the study's ``mnist_mini``)
is trained with SGD. At each step of ``log_at_steps`` the full-data Hessian of the training
cross-entropy is formed (d Hessian-vector products) and its top-k eigenpairs computed by a direct
solver (``curvature.top_eigs_exact``: exact top-k eigenspace Q), a sketched top-k eigenspace
Q̃ is computed from ``num_measurements`` random products (``curvature.top_eigs_sketched``, skerch),
and for each k in ``ks`` the overlap ‖M Q‖²_F / k with the mask M of the k largest-|w_i|
parameters is logged, for Q and Q̃, with the Grassmann distances; also the sketch's errors
(eigenvalues, relative; subspace, geodesic distance between Q and Q̃). At the default size one
evaluation step takes about 2 minutes on one busy CPU core (forming H about 1, the partial
eigensolver about 1), so the default four steps and the training take about 10 minutes.

    python expt_hessian_masks.py -F outputs/hessian_masks
    python expt_hessian_masks.py -F outputs/hessian_masks with hidden_width=20 'log_at_steps=[0, 50, 200]'

Metrics at each evaluated step: ``train/loss``, ``overlap/exact/k<k>``, ``overlap/sketch/k<k>``,
``geodesic/exact/k<k>``, ``geodesic/sketch/k<k>``, ``overlap/random/k<k>`` (k/d, a random
subspace's expectation), ``sketch/eig_rel_error/k<k>`` (max_i |λ̃_i − λ_i|/|λ_i| over the top k),
``sketch/subspace_geodesic/k<k>``, ``top_eigenvalue`` and ``sketch/top_eigenvalue``
(``curvature.mask_metrics``).
"""

import time

import torch
from sklearn.datasets import load_digits
from torch import nn

import curvature

# Sacred's Experiment comes through experiment.py, which first silences Sacred's pkg_resources warning.
from experiment import (
    Experiment,
    TrainingConfig,
    check_common,
    default_observer,
    device_info,
    generators,
    int_seed,
    is_int,
    model_dim,
    parse,
    require,
    resolve_device,
    train_sgd,
)
from models.mlp import MLP

__all__ = ["ex"]

ex = Experiment("hessian_masks")


@ex.config
def config():
    """MLP 64 → 93 → 10 (6,985 parameters) on digits, SGD, four evaluation steps, k from 5 to 100."""
    expt_name = None  # run name; runs go to outputs/<expt_name or 'hessian_masks'>/
    hidden_width = 93  # hidden units: d = 75·hidden_width + 10
    training_config = {
        "optim": "sgd",  # sgd | adam
        "learning_rate": 0.05,  # step size
        "momentum": 0.0,  # plain SGD
        "batch_size": 64,  # minibatch
        "num_steps": 2000,  # training steps
    }
    log_at_steps = [0, 100, 500, 2000]  # training steps at which the Hessian is analysed (~2 min each on a CPU core)
    ks = [5, 20, 50, 100]  # sizes k of the eigenspace and of the mask
    num_measurements = 300  # sketch size s (≥ max k): products H Ω for the sketched eigenspace
    device = "auto"  # auto | cpu | cuda | cuda:<i>
    seed = 0  # root of all randomness


def digits(dev: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Load sklearn's 1,797 8×8 digits, pixels scaled to [0, 1].

    Returns:
        (x, labels): float32 pixels of shape (n, 64) and integer labels of shape (n,).
    """
    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32, device=dev), torch.tensor(y, device=dev)


@ex.capture
def check_setup(training: TrainingConfig, expt_name, hidden_width, log_at_steps, ks, num_measurements) -> None:
    """Validate the top-level config.

    Raises:
        ValueError: Naming the bad key and value.
    """
    check_common(expt_name)
    require(is_int(hidden_width) and hidden_width >= 1, f"hidden_width must be an int >= 1, got {hidden_width!r}")
    d = model_dim(MLP(64, [hidden_width], 10))
    require(isinstance(log_at_steps, list) and log_at_steps and all(is_int(t) and 0 <= t <= training.num_steps
                                                                  for t in log_at_steps),
            f"log_at_steps must be a list of ints in [0, training_config.num_steps={training.num_steps}], "
            f"got {log_at_steps!r}")
    require(isinstance(ks, list) and ks and all(is_int(k) and 1 <= k < d for k in ks),
            f"ks must be a list of ints in [1, d={d}), got {ks!r}")
    require(is_int(num_measurements) and max(ks) <= num_measurements <= d,
            f"num_measurements must be an int in [max(ks)={max(ks)}, d={d}], got {num_measurements!r}")


@ex.capture
def analyse(_run, model: nn.Module, data, step: int, seed: int, ks, num_measurements) -> dict:
    """Exact and sketched top-k eigenspaces at the current parameters, their mask overlaps and the sketch's errors.

    Returns:
        The record of this step.
    """
    H = curvature.hessian_operator(model, nn.functional.cross_entropy, data)
    t0 = time.perf_counter()
    vals, vecs = curvature.top_eigs_exact(curvature.full_hessian(H), max(ks))
    t_exact = time.perf_counter() - t0
    t0 = time.perf_counter()
    svals, svecs = curvature.top_eigs_sketched(H, max(ks), num_measurements=num_measurements, seed=seed)
    t_sketch = time.perf_counter() - t0
    metrics, per_k = curvature.mask_metrics(curvature.flat_params(model), ks, (svals, svecs), (vals, vecs))
    for key, value in metrics.items():
        _run.log_scalar(key, value, step)
    rec = {"step": step, "top_eigenvalue": metrics["top_eigenvalue"], "exact_time_s": t_exact,
           "sketch_time_s": t_sketch, "k": per_k}
    return rec


@ex.main
def run(_run, training_config, hidden_width, log_at_steps, device, seed) -> dict:
    """Train with SGD; at each evaluation step analyse the Hessian; record.

    Returns:
        ``{"model_dim", "log_at_steps"}``; the per-step analyses are in the run's info (``per_step``).
    """
    training = parse(TrainingConfig, "training_config", training_config)
    check_setup(training)
    dev = resolve_device(device)
    _run.info.update(device_info(dev))
    g_init, g_batch, g_sketch = generators(seed, 3)
    x, y = digits(dev)
    model = MLP(64, [hidden_width], 10)
    with torch.no_grad():  # PyTorch's default init, U(±1/√fan_in), drawn from Sacred's root seed
        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            bound = layer.in_features ** -0.5
            for p in layer.parameters():
                p.copy_(torch.rand(p.shape, generator=g_init) * 2 * bound - bound)
    model = model.to(dev)
    records = []

    def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x), (training.batch_size,), generator=g_batch).to(dev)
        return x[idx], y[idx]

    def measure(t: int) -> None:
        records.append(analyse(_run, model, (x, y), t, int_seed(g_sketch) % 2**31))
        _run.info["per_step"] = records

    losses = train_sgd(model, nn.functional.cross_entropy, batch, training, measure_at=log_at_steps, measure=measure)
    for t in range(0, training.num_steps, 10):
        _run.log_scalar("train/loss", float(losses[t]), t)
    _run.info["model_dim"] = model_dim(model)
    return {"model_dim": _run.info["model_dim"], "log_at_steps": log_at_steps}


observe_by_default = default_observer(ex, "hessian_masks")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
