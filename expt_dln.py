r"""λ̂ versus the true λ of deep linear networks (Furman & Lau 2024, §4), as a Sacred experiment.

A teacher DLN w* is drawn (``true_param_config.method``), realisable data y = W* x are generated on
the fly, and the LLC is estimated at w* with SGLD and compared with Aoyagi's λ for rank W*
(``models.dln.true_lambda``). Optionally a student is trained from a random init and its LLC is
estimated too (``do_training``), and the output Jacobian's rank (``do_functional_rank``) and the
Hessian trace (``do_hessian_trace``) at w* are recorded, and, where λ̂ is measured, the top-k
eigenvalues of the full-data Hessian (``num_top_eigs=k``) and the overlap of its top-k eigenspace
with the k largest-magnitude parameters (``mask_overlap_k=k``), both from ``curvature.py``.

    python expt_dln.py -F outputs/dln with sgld_config.epsilon=1e-5 true_param_config.rank=2
    python expt_dln.py with demo
    python expt_dln.py with device=cuda:1 demo

Without ``-F``/``-m`` (or another observer flag) the run is stored under ``outputs/<expt_name>/``
(``outputs/dln/`` when ``expt_name`` is None). Every key of the reference experiment is accepted,
e.g. the reference README's command::

    python expt_dln.py -F outputs/readme with expt_name=x num_training_data=1000000 \
        layer_widths='[259, 286, 885, 235, 204, 274, 252]' input_dim=185 \
        true_param_config.method='rand_rank' true_param_config.prop_rank_reduce=0.5 \
        sgld_config.epsilon=2e-07 sgld_config.num_steps=20000 sgld_config.gamma=1.0 \
        sgld_config.batch_size=500 do_training=True training_config.optim='sgd' \
        training_config.learning_rate=0.01 training_config.batch_size=500 \
        training_config.num_steps=50000 do_functional_rank=False do_hessian_trace=False seed=1

Recorded in the run's info: every field of ``LLCResult.to_dict()`` (λ̂, its spread, per-chain and
per-quarter values, R̂, ESS, MALA acceptance, divergence, ε and its calibration), the truth
(``true_lambda``, ``true_multiplicity``, ``true_rank``, ``true_layer_ranks``, ``true_matrix_shape``,
``model_dim``), where it ran (``device``, ``device_name``), and ``trained_param_info``,
``functional_rank_info``, ``hessian_trace_estimate`` and ``curvature_info`` (also inside
``trained_param_info``) when asked for. Loss traces go to Sacred metrics (``sgld/loss/chain<c>``, at
most 1000 points per chain) and, complete, to the artifact ``loss_traces.npz``.

Everything (teacher, data, training, SGLD, Jacobian rank, Hessian trace) runs on ``device``; the
seeds' streams start on the CPU, so a seed gives the same teacher and data inputs on every device.
The hot loops read nothing back to the host but once every ``CHECK_EVERY`` steps.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import curvature

# Sacred's Experiment comes through experiment.py, which first silences Sacred's pkg_resources warning.
from experiment import (
    Experiment,
    SGLDConfig,
    TrainingConfig,
    check_common,
    check_curvature_ks,
    default_observer,
    device_info,
    generators,
    int_seed,
    is_int,
    is_number,
    log_traces,
    model_dim,
    mse_loss,
    parse,
    progress,
    require,
    resolve_device,
    save_artifacts,
    sgld_kwargs,
    thin,
    train_sgd,
)
from models.dln import (
    DLN,
    INPUT_DISTS,
    TRUE_PARAM_METHODS,
    SyntheticDLNData,
    dln_ranks,
    make_true_params,
    true_lambda,
)
from sgld import SGLD, LLCResult, estimate_llc

__all__ = ["TrueParamConfig", "ex", "hessian_trace"]

ex = Experiment("dln_lambdahat")

MAX_JACOBIAN_ENTRIES = 50_000_000  # do_functional_rank materialises the Jacobian (float32)
HUTCHINSON_PROBES = 100  # Rademacher probes for do_hessian_trace
CHECK_EVERY = 100  # steps between finiteness checks in training (the loop's only reads from the device)


@ex.config
def config():
    """Deep linear network teacher, realisable data, λ̂ at w* (and optionally at a trained student)."""
    expt_name = None  # run name; the default observer stores runs in outputs/<expt_name or 'dln'>/
    sgld_config = {
        "epsilon": "auto",  # ε, SGLD step size: "auto" (sgld.calibrate_epsilon, kept valid along the run) or a number
        "gamma": 1.0,  # γ, strength of the localizing Gaussian around w*
        "num_steps": "auto",  # SGLD steps per chain, burn-in included: "auto" (until settled) or a number
        "max_steps": 64_000,  # step budget per chain of num_steps="auto"
        "num_chains": 4,  # independent chains, all started at w*
        "batch_size": 500,  # m, SGLD minibatch size
        "num_burnin_steps": 0,  # leading steps left out of λ̂ (with num_steps="auto", the smallest burn-in)
    }
    loss_trace_minibatch = True  # True: trace minibatch losses L_m; False: full-data L_n (n forward passes a step)
    do_compute_distance = False  # also run one extra chain logging ‖w_t − w*‖ (metric sgld/distance)
    layer_widths = [4, 8, 8]  # (H₂, …, H_{N+1}), the last is the output dimension
    input_dim = 4  # H₁
    input_dist = "uniform"  # x distribution: "uniform" on [-10, 10]^H₁ or "unit_ball"
    true_param_config = {
        "method": "low_rank",  # teacher w*: random | zero | rand_rank | rand_rank_sv | low_rank
        "prop_rank_reduce": 0.5,  # rand_rank, rand_rank_sv: probability a layer's rank is reduced
        "mean": 0.0,  # rand_rank_sv: mean of the singular-value Gaussian
        "std": 5.0,  # rand_rank_sv: standard deviation of the singular-value Gaussian
        "rank": 1,  # low_rank: r = rank of every layer and of W*; None draws it at random
    }
    num_training_data = 10_000  # n, training set size
    itemp = 1 / math.log(num_training_data)  # β, inverse temperature; nβ = n · itemp
    num_test_data = 100  # test inputs for do_functional_rank and do_hessian_trace
    training_config = {
        "optim": "sgd",  # sgd | adam
        "learning_rate": 0.01,  # optimiser step size
        "momentum": 0.9,  # sgd momentum (ignored by adam)
        "batch_size": 200,  # training minibatch size
        "num_steps": 5000,  # training steps from a random init
    }
    do_training = False  # train a student from a random init and estimate λ̂ there too
    do_functional_rank = False  # rank and singular values of the output Jacobian at w* on test inputs
    do_hessian_trace = False  # Hutchinson estimate of tr ∇²L_test(w*)
    num_top_eigs = 0  # k > 0: the k largest-magnitude eigenvalues of ∇²L_n where λ̂ is measured (Lanczos)
    mask_overlap_k = 0  # k > 0: overlap of ∇²L_n's top-k eigenspace with the k largest-|w_i| mask, there
    seed = 0  # root of all randomness (teacher, data, training, chains)
    save_true_param = False  # store w* as the artifact true_param.pt
    verbose = False  # print the teacher's ranks and show progress bars off a terminal too
    device = "auto"  # where everything runs: "auto" (cuda if available, else cpu), "cpu", "cuda", "cuda:1"


@ex.named_config
def demo():
    """About a minute on a laptop: 4→4→8→8 DLN at rank 1, λ = 10 among d = 112 parameters, auto ε and steps."""
    expt_name = "demo"  # stored in outputs/demo/
    sgld_config = {"num_chains": 8}  # 8 chains cost about 4 (vectorised)


@ex.named_config
def paper():
    """The reference sweep's settings (Furman & Lau 2024); set layer_widths and input_dim too."""
    num_training_data = 1_000_000  # n
    true_param_config = {"method": "rand_rank", "prop_rank_reduce": 0.5}  # the paper's teachers
    sgld_config = {"epsilon": 5e-9, "gamma": 1.0, "num_steps": 200_000, "batch_size": 500, "num_burnin_steps": 0}
    training_config = {"optim": "adam", "learning_rate": 0.01, "batch_size": 500, "num_steps": 50_000}
    do_training = True  # λ̂ also at an SGD/Adam-trained parameter


# --------------------------------------------------------------------------- validated configs


@dataclass(frozen=True)
class TrueParamConfig:
    """``true_param_config``: how the teacher w* is drawn (see ``models.dln.make_true_params``)."""

    method: str
    prop_rank_reduce: float = 0.5
    mean: float = 0.0
    std: float = 5.0
    rank: int | None = None

    def __post_init__(self) -> None:
        require(self.method in TRUE_PARAM_METHODS,
                f"unknown true_param_config.method {self.method!r}; choose from {list(TRUE_PARAM_METHODS)}")
        require(is_number(self.prop_rank_reduce) and 0 <= self.prop_rank_reduce <= 1,
                f"true_param_config.prop_rank_reduce must be in [0, 1], got {self.prop_rank_reduce!r}")
        require(is_number(self.mean), f"true_param_config.mean must be a number, got {self.mean!r}")
        require(is_number(self.std) and self.std >= 0, f"true_param_config.std must be >= 0, got {self.std!r}")
        require(self.rank is None or (is_int(self.rank) and self.rank >= 0),
                f"true_param_config.rank must be None or an int >= 0, got {self.rank!r}")


# --------------------------------------------------------------------------- captured helpers



@ex.capture
def check_setup(
    sgld: SGLDConfig, training: TrainingConfig, expt_name, layer_widths, input_dim, input_dist,
    num_training_data, itemp, num_test_data, do_functional_rank,
) -> None:
    """Validate the top-level config before any work, so a bad value fails in seconds.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    check_common(expt_name, itemp=itemp, num_train=num_training_data,
                 batch_sizes={"sgld_config": sgld.batch_size, "training_config": training.batch_size})
    require(isinstance(layer_widths, list) and len(layer_widths) > 0
            and all(is_int(h) and h >= 1 for h in layer_widths),
            f"layer_widths must be a non-empty list of ints >= 1, e.g. '[10, 10]', got {layer_widths!r}")
    require(is_int(input_dim) and input_dim >= 1, f"input_dim must be an int >= 1, got {input_dim!r}")
    require(input_dist in INPUT_DISTS, f"unknown input_dist {input_dist!r}; choose from {list(INPUT_DISTS)}")
    require(is_int(num_training_data) and num_training_data >= 2,
            f"num_training_data must be an int >= 2, got {num_training_data!r}")
    require(is_int(num_test_data) and num_test_data >= 1, f"num_test_data must be an int >= 1, got {num_test_data!r}")
    dims = [input_dim, *layer_widths]
    entries = num_test_data * layer_widths[-1] * sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    require(not do_functional_rank or entries <= MAX_JACOBIAN_ENTRIES,
            f"do_functional_rank needs a {num_test_data * layer_widths[-1]} x d Jacobian ({entries:.3g} entries > "
            f"{MAX_JACOBIAN_ENTRIES:.0e}); lower num_test_data or set do_functional_rank=False")


@ex.capture
def make_teacher(teacher_cfg: TrueParamConfig, generator: torch.Generator, device: torch.device, input_dim,
                 layer_widths) -> DLN:
    """The DLN at w* drawn by ``models.dln.make_true_params`` from ``generator``, on ``device``.

    Returns:
        The teacher network.
    """
    matrices = make_true_params(
        input_dim, layer_widths, teacher_cfg.method, prop_rank_reduce=teacher_cfg.prop_rank_reduce,
        mean=teacher_cfg.mean, std=teacher_cfg.std, rank=teacher_cfg.rank, generator=generator, device=device,
    )
    return DLN(input_dim, layer_widths).to(device).set_matrices(matrices)


@ex.capture
def describe_truth(model: DLN, input_dim, layer_widths, verbose) -> dict:
    """Aoyagi's λ at the teacher's rank, with the ranks and sizes it depends on.

    Returns:
        ``true_lambda``, ``true_multiplicity``, ``true_rank``, ``true_layer_ranks``,
        ``true_matrix_shape`` and ``model_dim``.
    """
    rank, layer_ranks = dln_ranks(model.matrices())
    lam, mult = true_lambda(rank, input_dim, layer_widths)
    if verbose:
        print(f"teacher: rank W* = {rank}, layer ranks {layer_ranks}")
    return dict(
        true_lambda=lam, true_multiplicity=mult, true_rank=rank, true_layer_ranks=layer_ranks,
        true_matrix_shape=[layer_widths[-1], input_dim], model_dim=model_dim(model),
    )


@ex.capture
def estimate(model: DLN, data: SyntheticDLNData, sgld: SGLDConfig, seed: int, num_training_data, itemp,
             loss_trace_minibatch, verbose) -> LLCResult:
    """λ̂ at the model's current parameters with nβ = n · itemp (the one estimator call).

    Returns:
        The estimator's ``LLCResult``.
    """
    return estimate_llc(model, mse_loss, data, **sgld_kwargs(sgld), nbeta=num_training_data * itemp, seed=seed,
                        loss_trace_minibatch=loss_trace_minibatch, progress=progress(verbose), device=data.device)


@ex.capture
def train(data: SyntheticDLNData, training: TrainingConfig, generator: torch.Generator, input_dim, layer_widths,
          verbose, _run) -> tuple[DLN, list[list[float]]]:
    """Train a student from a random init (entries N(0, 1/H_k)) on minibatches of the training data.

    Runs on the data's device. Losses stay there until the end; their finiteness is checked every
    ``CHECK_EVERY`` steps (a read-back stalls a GPU's queue, so not every step), and a non-finite
    loss stops training with the first bad step named.

    Returns:
        The trained DLN and [[step, minibatch loss], …] at ≤ 100 evenly spaced steps (all ≤ 1000
        thinned points go to the metric ``train/loss``).

    Raises:
        FloatingPointError: If the training loss becomes NaN or infinite.
    """
    device, num_steps = data.device, training.num_steps
    model = DLN(input_dim, layer_widths).to(device).set_matrices(
        make_true_params(input_dim, layer_widths, "random", generator=generator, device=device))
    batches = torch.Generator(device=device).manual_seed(int_seed(generator))  # indices drawn where they are used

    def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        return data.get_batch(torch.randint(len(data), (training.batch_size,), generator=batches, device=device))

    trace = train_sgd(model, mse_loss, batch, training, check_every=CHECK_EVERY, show_progress=progress(verbose))
    losses = trace.cpu().tolist()
    for t in thin(num_steps):
        _run.log_scalar("train/loss", losses[t], t)
    summary_every = max(1, math.ceil(num_steps / 100))
    return model, [[t, losses[t]] for t in range(num_steps) if t % summary_every == 0 or t == num_steps - 1]




def hessian_trace(model: DLN, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                  num_probes: int = HUTCHINSON_PROBES) -> dict:
    """Hutchinson's estimate of tr ∇²L(w) on (x, y) (``curvature.hutchinson_trace``, exact HVPs).

    Args:
        model: The model at w.
        x: Inputs.
        y: Targets.
        generator: Source of the Rademacher probes.
        num_probes: Number of probes K.

    Returns:
        ``{"estimate", "std_error", "num_probes"}``.
    """
    H = curvature.hessian_operator(model, mse_loss, (x, y))
    return curvature.hutchinson_trace(H, num_probes, generator).to_dict()


@ex.capture
def sgld_distances(model: DLN, data: SyntheticDLNData, sgld: SGLDConfig, epsilon: float, num_steps: int,
                   generator: torch.Generator, num_training_data, itemp) -> np.ndarray:
    """‖w_t − w*‖ along one extra SGLD chain (``sgld.SGLD``) with the estimate's ε, γ, nβ, m.

    Runs on the data's device, with the distances kept there until the end.

    Returns:
        The (num_steps,) distances, num_steps the estimate's trace length.
    """
    device = data.device
    student = DLN(model.input_dim, model.layer_widths).to(device).set_matrices(model.matrices())
    g = torch.Generator(device=device).manual_seed(int_seed(generator))
    opt = SGLD(student.parameters(), epsilon=epsilon, nbeta=num_training_data * itemp, gamma=sgld.gamma, generator=g)
    w_star = torch.cat([m.reshape(-1) for m in model.matrices()])
    out = torch.empty(num_steps, device=device, dtype=torch.float64)
    for t in range(num_steps):
        x, y = data.get_batch(torch.randint(len(data), (sgld.batch_size,), generator=g, device=device))
        opt.zero_grad()
        mse_loss(student(x), y).backward()
        opt.step()
        out[t] = torch.cat([m.reshape(-1) for m in student.matrices()]).sub(w_star).norm()
    return out.cpu().numpy()


@ex.capture
def curvature_at(model: DLN, data: SyntheticDLNData, seed: int, num_training_data, num_top_eigs,
                 mask_overlap_k) -> dict:
    """Top eigenvalues and mask overlap of the full-data Hessian ∇²L_n at the model (``curvature.curvature_summary``).

    Returns:
        ``top_eigenvalues`` and/or ``mask_overlap`` (see ``curvature.curvature_summary``).
    """
    xy = data.get_batch(torch.arange(num_training_data))
    return curvature.curvature_summary(model, mse_loss, xy, top_eigs=num_top_eigs, mask_overlap_k=mask_overlap_k,
                                       seed=seed)


def _print_summary(result: LLCResult, truth: dict, label: str = "w*") -> None:
    rel = (result.lambdahat - truth["true_lambda"]) / truth["true_lambda"] if truth["true_lambda"] else float("nan")
    print(f"λ̂({label}) = {result.lambdahat:.4g} ± {result.lambdahat_std:.2g}   true λ = {truth['true_lambda']:g} "
          f"(m = {truth['true_multiplicity']}, rank {truth['true_rank']}, d = {truth['model_dim']})   "
          f"relative error {rel:+.1%}   R̂ = {result.rhat:.3f}, quarters "
          f"{[round(q, 3) for q in result.lambdahat_quarters]}, ε = {result.epsilon:.3g}")


# --------------------------------------------------------------------------- the run


@ex.main
def run(_run, sgld_config, true_param_config, training_config, num_training_data, num_test_data, input_dist,
        do_training, do_compute_distance, do_functional_rank, do_hessian_trace, num_top_eigs, mask_overlap_k,
        save_true_param, seed, device) -> dict:
    """Device → teacher → data → λ̂(w*) [→ trained student → λ̂] → diagnostics → records.

    Returns:
        ``{"lambdahat", "lambdahat_std", "true_lambda"}`` at the teacher w*.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    teacher_cfg = parse(TrueParamConfig, "true_param_config", true_param_config)
    training = parse(TrainingConfig, "training_config", training_config)
    dev = resolve_device(device)
    check_setup(sgld, training)
    g_teacher, g_data, g_test, g_train, g_sgld, g_extra = generators(seed, 6)
    teacher = make_teacher(teacher_cfg, g_teacher, dev)
    check_curvature_ks(teacher, num_top_eigs=num_top_eigs, mask_overlap_k=mask_overlap_k)
    truth = describe_truth(teacher)
    data = SyntheticDLNData(teacher.product(), num_training_data, input_dist=input_dist, seed=int_seed(g_data))
    _run.info.update({**device_info(dev), **truth})
    result = estimate(teacher, data, sgld, int_seed(g_sgld))
    _run.info.update(result.to_dict())
    log_traces(_run, result, "")
    arrays = {"loss_trace": result.loss_trace}
    _print_summary(result, truth)
    curvature_wanted = bool(num_top_eigs or mask_overlap_k)
    if curvature_wanted:
        _run.info["curvature_info"] = curvature_at(teacher, data, seed)
    if do_compute_distance:
        steps = result.loss_trace.shape[1]  # the estimate's own length, also with num_steps="auto"
        arrays["sgld_distance"] = sgld_distances(teacher, data, sgld, result.epsilon, steps, g_extra)
        for t in thin(steps):
            _run.log_scalar("sgld/distance", float(arrays["sgld_distance"][t]), t)
    test = SyntheticDLNData(teacher.product(), num_test_data, input_dist=input_dist, seed=int_seed(g_test))
    x_test, y_test = test.get_batch(torch.arange(num_test_data))
    if do_functional_rank:
        _run.info["functional_rank_info"], arrays["jacobian_singular_values"] = curvature.functional_rank(teacher,
                                                                                                     x_test)
    if do_hessian_trace:
        probes = torch.Generator(device=dev).manual_seed(int_seed(g_extra))  # z drawn where H z is computed
        _run.info["hessian_trace_estimate"] = hessian_trace(teacher, x_test, y_test, probes)
    if do_training:
        student, losses = train(data, training, g_train)
        trained = estimate(student, data, sgld, int_seed(g_sgld))
        _run.info["trained_param_info"] = {**trained.to_dict(), "training_losses": losses,
                                           "final_training_loss": losses[-1][1]}
        if curvature_wanted:
            _run.info["trained_param_info"]["curvature_info"] = curvature_at(student, data, seed)
        log_traces(_run, trained, "trained/")
        arrays["trained_loss_trace"] = trained.loss_trace
        _print_summary(trained, truth, label="trained")
    save_artifacts(_run, arrays={"loss_traces.npz": arrays},
                   tensors={"true_param.pt": [w.cpu() for w in teacher.matrices()]} if save_true_param else None)
    for obs in _run.observers:
        print(f"run stored in {Path(obs.dir).resolve() if hasattr(obs, 'dir') else obs}")
    return dict(lambdahat=result.lambdahat, lambdahat_std=result.lambdahat_std, true_lambda=truth["true_lambda"])


observe_by_default = default_observer(ex, "dln")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
