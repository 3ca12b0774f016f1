r"""λ̂ over saddle-to-saddle training of a deep linear network (Jacot et al. 2021), as a Sacred experiment.

A DLN trained by SGD from a small initialisation learns its teacher one singular value at a time:
the loss sits on a plateau near a saddle where the product W = W_N ⋯ W₁ has rank r, then drops as
the next singular value is learned (Jacot et al. 2021). Along the way the local learning
coefficient at the current parameters w_t should step up with the rank, following Aoyagi's λ of a
rank-r product (``models.dln.true_lambda``); Furman & Lau (2024, §4.2) track it with SGLD.

Setting (the reference experiment's): inputs x ~ N(0, I_D), D = ``in_out_dim``, teacher
W* = 10·diag(1, …, D), y = W* x; the student has ``num_hidden_layers`` hidden layers of ``width``
units (N = num_hidden_layers + 1 weight matrices), entries drawn iid N(0, σ²) with
σ = width^(−initialisation_exponent/2). At every logging step, λ̂(w_t) is estimated against the
network's *own* outputs, y = f(x; w_t), so w_t is a true parameter (realisable) whatever the
training loss, and its λ is Aoyagi's λ at r = rank W(w_t).

    python expt_dln_saddle_dynamics.py -F outputs/saddle with do_plot=True
    python expt_dln_saddle_dynamics.py with study   # stored in outputs/saddle_study/

and the reference README's command (MongoDB observer; its network needs a GPU)::

    python expt_dln_saddle_dynamics.py -m HOST:27017:DB with expt_name=NAME width=500 seed=42 \
        training_config.num_steps=50000 logging_period=100

Logged as Sacred metrics at each logging step t (``logging_period`` apart, ``num_logging_points``
log-spaced steps with ``log_spaced=True``, or the list ``log_at_steps``): ``llc/*`` (λ̂, its spread
over chains and its diagnostics, see ``experiment.record_llc``), ``train/loss`` (L_n(w_t) against
the teacher), ``test/loss``, ``rank/product`` (singular values above ``rank_threshold``),
``true/lambda`` and ``true/multiplicity`` (Aoyagi at that rank), ``product/sv<i>`` (the singular
values of W), ``layer<k>/rank`` (threshold ``rank_threshold^(1/N)``, a balanced layer's share) and
``layer<k>/nuclear_norm``. The run's info holds ``plateaus`` (``plateau_summary``: per stretch of
constant rank, λ and the mean λ̂ over the points where the rank is settled, every singular value a
factor ``plateau_margin`` away from ``rank_threshold``) and ``rank_threshold``; ``do_plot`` stores
``saddle_to_saddle.png`` (``plots.saddle_to_saddle``).

Aoyagi's λ depends on the widths: once every hidden width is at least about 2D it is D²/2 at every
rank (e.g. the reference's D = 5, width 10: λ = 12.5 from rank 0 to 5), so a staircase needs
hidden layers narrower than that (the default: D = 5, width 3, λ = 4.5, 6.5, 8.5, 10.5 for r = 0…3).

References:
    A. Jacot, F. Ged, B. Şimşek, C. Hongler, F. Gabriel (2021). Saddle-to-saddle dynamics in deep
    linear networks: small initialization training, symmetry, and sparsity. arXiv:2106.15933.
    M. Aoyagi (2024). Consideration on the learning efficiency of multiple-layered neural networks
    with linear units. Neural Networks 172, 106132.
    Z. Furman, E. Lau (2024). Estimating the local learning coefficient at scale. arXiv:2402.03698.
"""

import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

# Sacred's Experiment comes through experiment.py, which first silences Sacred's pkg_resources warning.
from experiment import (
    Experiment,
    SGLDConfig,
    TrainingConfig,
    check_common,
    default_observer,
    device_info,
    generators,
    int_seed,
    is_int,
    is_number,
    model_dim,
    mse_loss,
    parse,
    progress,
    record_llc,
    require,
    resolve_device,
    save_artifacts,
    sgld_kwargs,
    train_sgd,
)
from models.dln import DLN, true_lambda
from sgld import LLCResult, estimate_llc

__all__ = ["CurvatureScaledDLN", "align_hidden_bases", "curvature_scaled", "ex", "logging_steps",
           "plateau_summary", "teacher_matrix"]

ex = Experiment("dln_saddle_dynamics")


@ex.config
def config():
    """Small-initialisation SGD on a DLN with a diagonal teacher; λ̂(w_t) at logging steps."""
    expt_name = None  # run name; the default observer stores runs in outputs/<expt_name or 'dln_saddle_dynamics'>/
    in_out_dim = 5  # D, input and output dimension; teacher W* = 10·diag(1, …, D)
    width = 3  # hidden width of every hidden layer
    num_hidden_layers = 2  # hidden layers; the DLN has num_hidden_layers + 1 weight matrices
    initialisation_exponent = 3.0  # init entries N(0, σ²), σ = width^(−exponent/2)
    num_training_data = 10_000  # n, Gaussian inputs x ~ N(0, I_D)
    num_test_data = 1000  # inputs for the test loss
    itemp = 1 / math.log(num_training_data)  # β, inverse temperature; nβ = n · itemp
    sgld_config = {
        "epsilon": "auto",  # ε, SGLD step size, or "auto" (sgld.calibrate_epsilon at every logging step)
        "gamma": 1.0,  # γ, strength of the localizing Gaussian around w_t
        "num_steps": 2000,  # SGLD steps per chain, burn-in included
        "num_chains": 4,  # independent chains, all started at w_t
        "batch_size": 128,  # m, SGLD minibatch size
        "num_burnin_steps": 1000,  # leading steps left out of λ̂
    }
    loss_trace_minibatch = True  # True: trace minibatch losses L_m; False: full-data L_n
    training_config = {
        "optim": "sgd",  # sgd | adam
        "learning_rate": 3e-4,  # optimiser step size
        "momentum": None,  # sgd momentum (None: plain SGD, as the reference)
        "batch_size": 128,  # training minibatch size
        "num_steps": 4000,  # SGD steps
    }
    logging_period = 200  # estimate λ̂ every this many SGD steps (step 0 included)
    log_spaced = False  # True: num_logging_points log-spaced steps in [1, num_steps] instead
    num_logging_points = 30  # with log_spaced: steps geomspace(1, num_steps), rounded, duplicates dropped
    log_at_steps = None  # a list of SGD steps in [0, num_steps]: estimate λ̂ there instead (the last step too)
    rank_threshold = 1.0  # a singular value of W counts toward its rank above this (teacher's smallest: 10)
    plateau_margin = 10.0  # plateau means use points whose singular values are this factor from rank_threshold
    curvature_scaling = True  # SGLD in SVD-aligned, curvature-scaled coordinates (curvature_scaled); False: raw weights
    max_curvature = 300.0  # h₀: with curvature_scaling, entries stiffer than this (diagonal of ∇²nβL) are scaled to h₀
    max_epsilon = 3e-4  # with epsilon "auto": rerun at this ε when the calibration picks a larger one (see estimate)
    seed = 42  # root of all randomness (data, init, training, chains)
    device = "auto"  # "auto" (cuda when available), "cpu", "cuda" or "cuda:<index>"
    verbose = False  # print each logging step and show progress bars off a terminal too
    do_plot = False  # store the figure saddle_to_saddle.png as an artifact


@ex.named_config
def reference():
    """The reference code's defaults: D = 5, width 10, 5 matrices; Aoyagi's λ is 12.5 at every rank."""
    width = 10  # hidden width
    num_hidden_layers = 4  # 5 weight matrices
    initialisation_exponent = 1.5  # σ = width^(−0.75)
    sgld_config = {"epsilon": 1e-6, "gamma": 1.0, "num_steps": 100, "num_chains": 1, "batch_size": 128,
                   "num_burnin_steps": 0}  # the reference's short chains
    training_config = {"learning_rate": 1e-4, "num_steps": 20_000}  # the reference's SGD
    logging_period = 50  # λ̂ every 50 SGD steps
    log_at_steps = None  # as logging_period says


@ex.named_config
def study():
    """The README's figure: the default network over its rank-0 to rank-3 plateaus, λ̂ at 70 steps."""
    expt_name = "saddle_study"  # stored in outputs/saddle_study/
    training_config = {"num_steps": 6000}  # SGD steps: ranks 0 to 3
    log_at_steps = list(range(0, 100, 10)) + list(range(100, 6001, 100))  # the rank-0 plateau ends near step 100
    do_plot = True  # store saddle_to_saddle.png


# --------------------------------------------------------------------------- pure helpers



def teacher_matrix(in_out_dim: int) -> torch.Tensor:
    """W* = 10·diag(1, …, D), the reference's teacher (distinct singular values 10, 20, …, 10D).

    Returns:
        The (D, D) float32 matrix W*.

    Example:
        >>> teacher_matrix(3).diagonal().tolist()
        [10.0, 20.0, 30.0]
    """
    return 10.0 * torch.diag(torch.arange(1, in_out_dim + 1, dtype=torch.float32))


def logging_steps(num_steps: int, logging_period: int, log_spaced: bool = False,
                  num_logging_points: int = 30) -> list[int]:
    """The SGD steps (updates done so far) at which λ̂ is estimated; the last step is always among them.

    Args:
        num_steps: T, the number of SGD steps.
        logging_period: k; without ``log_spaced``: 0, k, 2k, … ≤ T.
        log_spaced: Use ``num_logging_points`` steps geomspace(1, T), rounded, duplicates dropped.
        num_logging_points: The number of log-spaced points asked for.

    Returns:
        Sorted distinct steps in [0, T].

    Example:
        >>> logging_steps(10, 4)
        [0, 4, 8, 10]
        >>> logging_steps(1000, 1, log_spaced=True, num_logging_points=4)
        [1, 10, 100, 1000]
    """
    if log_spaced:
        steps = np.unique(np.rint(np.geomspace(1, num_steps, num_logging_points)).astype(int))
    else:
        steps = np.arange(0, num_steps + 1, logging_period)
    return sorted({int(s) for s in steps} | {num_steps})


def plateau_summary(curve: pd.DataFrame, min_points: int = 3, rank_threshold: float | None = None,
                    margin: float = 10.0) -> list[dict]:
    """Per stretch of constant rank: Aoyagi's λ, the mean λ̂ over its settled points, the relative error.

    A plateau is a maximal run of consecutive logging steps with the same ``rank`` r. Only its
    *settled* points count, those where the rank is unambiguous: the r-th singular value of the
    product (the last one learned, when r ≥ 1) is at least ``margin``·threshold and the (r+1)-th
    (the next one) at most threshold/``margin``. A point outside that band is mid-transition: a
    singular value the rank still counts as zero, e.g. 0.5 against the threshold 1.0, is already
    large against the posterior's spread in the product (~√(D/nβ) ≈ 0.07 for the default), so SGLD
    sees a rank between r and r+1 and λ̂ lies between their λ (for the default network λ̂ is
    already +20% above Aoyagi's λ once the next singular value passes ~0.15). Without the singular-value columns
    (``sv_last``, ``sv_next``) or ``rank_threshold``, the first and last point of a plateau that
    borders another rank are dropped instead. A plateau counts as long enough to sample when
    ``min_points`` λ̂ values remain.

    Args:
        curve: One row per logging step, sorted or not, with columns ``step``, ``rank``,
            ``true_lambda`` and ``lambdahat``; optional ``sv_last`` (the rank-th singular value, NaN at
            rank 0) and ``sv_next`` (the next one, NaN at full rank).
        min_points: Fewest settled points for a plateau to be reported.
        rank_threshold: The threshold that defined ``rank``; None: trim plateau borders instead.
        margin: The factor > 1 a settled point's singular values keep from the threshold.

    Returns:
        In step order, ``{"rank", "true_lambda", "first_step", "last_step", "num_points",
        "lambdahat_mean", "lambdahat_sem", "rel_error"}`` for each plateau long enough.

    Raises:
        ValueError: If ``margin`` is not above 1.

    Example:
        >>> c = pd.DataFrame({"step": range(8), "rank": [0] * 4 + [1] * 4,
        ...                   "true_lambda": [1.0] * 4 + [2.0] * 4, "lambdahat": [1.0, 1.1, 0.9, 1.5, 3, 2, 2, 2]})
        >>> [(p["rank"], p["num_points"], p["lambdahat_mean"]) for p in plateau_summary(c, min_points=2)]
        [(0, 3, 1.0), (1, 3, 2.0)]
        >>> c["sv_last"] = [np.nan] * 4 + [2.0, 50, 90, 90]
        >>> c["sv_next"] = [0.01, 0.01, 0.02, 0.5, 0.01, 0.01, 0.01, 0.01]
        >>> [(p["rank"], p["num_points"], p["lambdahat_mean"]) for p in plateau_summary(c, 2, rank_threshold=1.0)]
        [(0, 3, 1.0), (1, 3, 2.0)]
    """
    if not margin > 1:
        raise ValueError(f"margin must be > 1 (a factor away from the threshold), got {margin!r}")
    curve = curve.dropna(subset=["lambdahat"]).sort_values("step").reset_index(drop=True)
    by_sv = rank_threshold is not None and {"sv_last", "sv_next"} <= set(curve)
    if by_sv:  # NaN (no such singular value) passes: a rank-0 point has no learned one, a full-rank one no next
        settled = ~(curve["sv_last"] < margin * rank_threshold) & ~(curve["sv_next"] > rank_threshold / margin)
    run_id = (curve["rank"] != curve["rank"].shift()).cumsum()
    out = []
    for _, run in curve.groupby(run_id, sort=True):
        if by_sv:
            inner = run[settled[run.index]]
        else:
            lo = 1 if run.index[0] > 0 else 0
            hi = len(run) - 1 if run.index[-1] < len(curve) - 1 else len(run)
            inner = run.iloc[lo:hi]
        if len(inner) < min_points:
            continue
        lam, mean = float(inner["true_lambda"].iloc[0]), float(inner["lambdahat"].mean())
        out.append(dict(rank=int(inner["rank"].iloc[0]), true_lambda=lam, first_step=int(inner["step"].iloc[0]),
                        last_step=int(inner["step"].iloc[-1]), num_points=len(inner), lambdahat_mean=mean,
                        lambdahat_sem=float(inner["lambdahat"].std(ddof=1) / math.sqrt(len(inner))),
                        rel_error=(mean - lam) / lam if lam else float("nan")))
    return out


def align_hidden_bases(matrices: list[torch.Tensor]) -> list[torch.Tensor]:
    """The same product in hidden bases aligned with each layer's singular vectors (float64 copies).

    For every hidden layer k, W_k → U_kᵀ W_k and W_{k+1} → W_{k+1} U_k with W_k = U_k S_k V_kᵀ: an
    orthogonal change of hidden basis, which changes neither the function, nor the loss landscape
    up to that rotation, nor λ. After it, the learned directions of a (near-balanced) DLN sit on
    coordinates, so a per-entry step-size scaling can tell stiff entries from flat ones.

    Returns:
        The rotated [W₁, …, W_N], float64 copies on the CPU.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> ws = [torch.randn(shape, generator=g, dtype=torch.float64) for shape in ((3, 5), (3, 3), (5, 3))]
        >>> aligned = align_hidden_bases(ws)
        >>> torch.allclose(aligned[2] @ aligned[1] @ aligned[0], (ws[2] @ ws[1] @ ws[0]).double(), atol=1e-9)
        True
    """
    mats = [w.detach().double().cpu().clone() for w in matrices]
    for k in range(len(mats) - 1):
        u = torch.linalg.svd(mats[k], full_matrices=True)[0]
        mats[k], mats[k + 1] = u.T @ mats[k], mats[k + 1] @ u
    return mats


class CurvatureScaledDLN(torch.nn.Module):
    r"""A DLN in scaled coordinates θ: W_k = S_k ⊙ θ_k (entry-wise), x ↦ W_N ⋯ W₁ x.

    SGLD on θ with step ε is SGLD on the weights with the per-entry step size ε·S² (a diagonal
    preconditioner, Li et al. 2016), and the localising term γ‖θ − θ*‖²/2 becomes a Gaussian of
    standard deviation S/√γ around w*. A linear change of coordinates leaves λ unchanged (λ is a
    birational invariant; Watanabe 2009, §2.4), so λ̂ on this module estimates the DLN's λ.

    Args:
        matrices: [W₁, …, W_N], W_k of shape ``(H_{k+1}, H_k)``.
        scales: S_k, same shapes, entries in (0, 1].
    """

    def __init__(self, matrices: list[torch.Tensor], scales: list[torch.Tensor]) -> None:
        super().__init__()
        self.theta = torch.nn.ParameterList(torch.nn.Parameter((w / s).float()) for w, s in zip(matrices, scales,
                                                                                                   strict=True))
        for k, s in enumerate(scales):
            self.register_buffer(f"scale{k}", s.float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = W_N ⋯ W₁ x for a batch of rows x.

        Returns:
            The outputs, one row per row of x.
        """
        for k, theta in enumerate(self.theta):
            x = x @ (getattr(self, f"scale{k}") * theta).T
        return x


def curvature_scaled(model: DLN, x: torch.Tensor, nbeta: float, max_curvature: float) -> CurvatureScaledDLN:
    r"""The model in SVD-aligned, curvature-scaled coordinates, so SGLD mixes on every plateau.

    Why: on a plateau of rank r ≥ 1 the learned directions are stiff (for the default teacher the
    diagonal of ∇²(nβL) reaches ~10⁵ on their entries) while the unlearned ones form a flat,
    singular valley of width ~(nβ)^{-1/6} in weight units. Plain SGLD needs ε ≲ 1/10⁵ for the stiff
    directions and then moves ~√(ε·steps) ≪ the valley's width along the flat ones, so the
    valley's share of λ (2 of Aoyagi's 6.5 at rank 1 for 5 → 3 → 3 → 5) goes unseen: λ̂ ≈ 4.6.

    How: after ``align_hidden_bases``, the diagonal of the Hessian of nβL (L = mean over samples and
    D outputs of the squared error) at entry (i, j) of W_k is
    h_ij = nβ (2/D) (AᵀA)_ii (B Σ Bᵀ)_jj with A = W_N ⋯ W_{k+1}, B = W_{k−1} ⋯ W₁ and Σ = xᵀx/n; each
    entry is scaled by S_ij = min(1, √(h₀/h_ij)), so no coordinate is much stiffer than h₀ and the
    flat ones (h_ij ≤ h₀) keep their scale (and their localisation γ).

    Args:
        model: The DLN at w*.
        x: The n training inputs (for Σ).
        nbeta: nβ.
        max_curvature: h₀ > 0.

    Returns:
        A ``CurvatureScaledDLN`` computing the same function as ``model``, on the inputs' device.
    """
    mats = align_hidden_bases(model.matrices())
    sigma = (x.T.double() @ x.double()).cpu() / len(x)
    out_dim = mats[-1].shape[0]
    scales = []
    for k in range(len(mats)):
        a = torch.eye(mats[k].shape[0], dtype=torch.float64)
        for w in mats[k + 1:]:
            a = w @ a
        b = torch.eye(mats[0].shape[1], dtype=torch.float64)
        for w in mats[:k]:
            b = w @ b
        h = nbeta * 2 / out_dim * torch.outer((a.T @ a).diagonal(), (b @ sigma @ b.T).diagonal())
        scales.append(torch.sqrt(max_curvature / h.clamp_min(1e-300)).clamp(max=1.0))
    return CurvatureScaledDLN(mats, scales).to(x.device)


# --------------------------------------------------------------------------- captured helpers


@ex.capture
def check_setup(sgld: SGLDConfig, training: TrainingConfig, expt_name, in_out_dim, width, num_hidden_layers,
                initialisation_exponent, num_training_data, num_test_data, itemp, logging_period, log_spaced,
                num_logging_points, log_at_steps, rank_threshold, plateau_margin, curvature_scaling, max_curvature,
                max_epsilon) -> None:
    """Validate the top-level config before any work, so a bad value fails in seconds.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    check_common(expt_name, itemp=itemp, num_train=num_training_data,
                 batch_sizes={"sgld_config": sgld.batch_size, "training_config": training.batch_size})
    for key, value, low in (("in_out_dim", in_out_dim, 1), ("width", width, 1),
                            ("num_hidden_layers", num_hidden_layers, 0), ("num_training_data", num_training_data, 2),
                            ("num_test_data", num_test_data, 1), ("logging_period", logging_period, 1),
                            ("num_logging_points", num_logging_points, 1)):
        require(is_int(value) and value >= low, f"{key} must be an int >= {low}, got {value!r}")
    require(is_number(initialisation_exponent),
            f"initialisation_exponent must be a number, got {initialisation_exponent!r}")
    require(isinstance(log_spaced, bool), f"log_spaced must be True or False, got {log_spaced!r}")
    require(log_at_steps is None or (isinstance(log_at_steps, (list, tuple)) and len(log_at_steps) > 0 and all(
        is_int(t) and 0 <= t <= training.num_steps for t in log_at_steps)),
        f"log_at_steps must be None or a non-empty list of ints in [0, training_config.num_steps="
        f"{training.num_steps}], got {log_at_steps!r}")
    require(is_number(rank_threshold) and rank_threshold > 0, f"rank_threshold must be > 0, got {rank_threshold!r}")
    require(is_number(plateau_margin) and plateau_margin > 1,
            f"plateau_margin must be a number > 1, got {plateau_margin!r}")
    require(isinstance(curvature_scaling, bool), f"curvature_scaling must be True or False, got {curvature_scaling!r}")
    require(is_number(max_curvature) and max_curvature > 0, f"max_curvature must be > 0, got {max_curvature!r}")
    require(is_number(max_epsilon) and max_epsilon > 0, f"max_epsilon must be > 0, got {max_epsilon!r}")


@ex.capture
def make_student(generator: torch.Generator, in_out_dim, width, num_hidden_layers, initialisation_exponent) -> DLN:
    """The DLN D → width → … → width → D with entries N(0, σ²), σ = width^(−exponent/2).

    Returns:
        The untrained network (on the CPU).
    """
    model = DLN(in_out_dim, [width] * num_hidden_layers + [in_out_dim])
    sigma = width ** (-initialisation_exponent / 2)
    with torch.no_grad():
        for layer in model.layers:
            layer.weight.copy_(sigma * torch.randn(layer.weight.shape, generator=generator))
    return model


@ex.capture
def describe(model: DLN, x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
             rank_threshold) -> dict[str, float]:
    """Losses, the product's rank and singular values, Aoyagi's λ at that rank, per-layer ranks and norms.

    Returns:
        Metric name → value at the model's current parameters.
    """
    with torch.no_grad():
        values = {"train/loss": mse_loss(model(x_train), y_train).item(),
                  "test/loss": mse_loss(model(x_test), y_test).item()}
    sv = torch.linalg.svdvals(model.product().double().cpu())
    rank = int((sv > rank_threshold).sum())
    lam, mult = true_lambda(rank, model.input_dim, model.layer_widths)
    values.update({"rank/product": rank, "true/lambda": lam, "true/multiplicity": mult})
    values.update({f"product/sv{i}": float(s) for i, s in enumerate(sv)})
    layer_threshold = rank_threshold ** (1 / len(model.layers))
    for k, w in enumerate(model.matrices()):
        s = torch.linalg.svdvals(w.double().cpu())
        values[f"layer{k}/rank"] = int((s > layer_threshold).sum())
        values[f"layer{k}/nuclear_norm"] = float(s.sum())
    return values


@ex.capture
def estimate(model: DLN, x_train: torch.Tensor, sgld: SGLDConfig, seed: int, num_training_data, itemp,
             loss_trace_minibatch, curvature_scaling, max_curvature, max_epsilon) -> LLCResult:
    """λ̂ at the current parameters against the network's own outputs (realisable), nβ = n · itemp.

    With ``curvature_scaling``, SGLD runs on ``curvature_scaled(model)`` (same function, same λ). With
    ``epsilon="auto"``, a calibrated ε above ``max_epsilon`` is replaced by it (the chains are rerun):
    near the rank-0 saddle the loss is of degree 2N in the weights, so its Hessian at w* is ~0 and
    ``sgld.calibrate_epsilon`` takes a large step (~2e-3 here), yet the sampled region is curved;
    there λ̂ grows with ε (for Aoyagi's 4.5: 6.4 at the calibrated ε; over steps 0-60 of the default
    run, 5.1-5.2 at 3e-4 with 2000- or 5000-step chains, 4.7 with 800, and 4.8 at 1e-4 with 6000).

    Returns:
        The estimator's ``LLCResult``.
    """
    nbeta = num_training_data * itemp
    if curvature_scaling:
        model = curvature_scaled(model, x_train, nbeta, max_curvature)
    with torch.no_grad():
        y_own = model(x_train)
    kwargs = dict(sgld_kwargs(sgld), nbeta=nbeta, seed=seed, loss_trace_minibatch=loss_trace_minibatch)
    result = estimate_llc(model, mse_loss, (x_train, y_own), **kwargs)
    if sgld.epsilon == "auto" and result.epsilon > max_epsilon:
        result = estimate_llc(model, mse_loss, (x_train, y_own), **{**kwargs, "epsilon": max_epsilon})
    return result


@ex.capture
def train_and_track(model: DLN, data: tuple, training: TrainingConfig, sgld: SGLDConfig, g_train: torch.Generator,
                    g_sgld: torch.Generator, logging_period, log_spaced, num_logging_points, log_at_steps, verbose,
                    _run) -> pd.DataFrame:
    """SGD on the teacher's data; at each logging step, every metric of ``describe`` and λ̂(w_t).

    Returns:
        One row per logging step: ``step``, ``lambdahat``, ``lambdahat_std``, ``rank``,
        ``true_lambda``, ``train_loss``, ``test_loss``, ``sv_last`` and ``sv_next`` (the rank-th and
        next singular values of the product, NaN where there is none).

    Raises:
        FloatingPointError: If the training loss becomes NaN or infinite.
    """
    x_train, y_train, x_test, y_test = data
    if log_at_steps is None:
        todo = logging_steps(training.num_steps, logging_period, log_spaced, num_logging_points)
    else:
        todo = sorted({int(t) for t in log_at_steps} | {training.num_steps})
    rows, device = [], x_train.device

    def batch(t: int) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(len(x_train), (training.batch_size,), generator=g_train).to(device)
        return x_train[idx], y_train[idx]

    def measure(t: int) -> None:
        values = describe(model, x_train, y_train, x_test, y_test)
        result = estimate(model, x_train, sgld, int_seed(g_sgld))
        for key, value in values.items():
            _run.log_scalar(key, value, t)
        record_llc(_run, result, t)
        rank = values["rank/product"]
        rows.append(dict(step=t, lambdahat=result.lambdahat, lambdahat_std=result.lambdahat_std,
                         rank=rank, true_lambda=values["true/lambda"], train_loss=values["train/loss"],
                         test_loss=values["test/loss"], sv_last=values.get(f"product/sv{rank - 1}", math.nan),
                         sv_next=values.get(f"product/sv{rank}", math.nan)))
        if verbose:
            tqdm.write(f"step {t}: loss {values['train/loss']:.4g}, rank {values['rank/product']}, "
                       f"λ = {values['true/lambda']:g}, λ̂ = {result.lambdahat:.3f} ± {result.lambdahat_std:.2f}")

    train_sgd(model, mse_loss, batch, training, measure_at=todo, measure=measure, show_progress=progress(verbose))
    return pd.DataFrame(rows)


@ex.capture
def make_figure(curve: pd.DataFrame, in_out_dim, width, num_hidden_layers, seed):
    """``plots.saddle_to_saddle`` of this run, titled with its architecture.

    Returns:
        The matplotlib Figure.
    """
    import plots  # matplotlib only when a figure is asked for

    fig = plots.saddle_to_saddle(curve)
    fig.suptitle(f"DLN D={in_out_dim}, width {width}, {num_hidden_layers + 1} layers, seed {seed}")
    return fig


# --------------------------------------------------------------------------- the run


@ex.main
def run(_run, sgld_config, training_config, in_out_dim, num_training_data, num_test_data, rank_threshold,
        plateau_margin, device, do_plot, seed) -> dict:
    """Data → small-init student → SGD with λ̂(w_t) at logging steps → plateaus → records.

    Returns:
        The final training loss, rank, λ̂ and true λ of the last logged step, and the number of plateaus.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    training = parse(TrainingConfig, "training_config", training_config)
    check_setup(sgld, training)
    dev = resolve_device(device)
    g_data, g_init, g_train, g_sgld = generators(seed, 4)
    teacher = teacher_matrix(in_out_dim)
    x_train = torch.randn(num_training_data, in_out_dim, generator=g_data)
    x_test = torch.randn(num_test_data, in_out_dim, generator=g_data)
    data = tuple(t.to(dev) for t in (x_train, x_train @ teacher.T, x_test, x_test @ teacher.T))
    model = make_student(g_init).to(dev)
    _run.info.update(device_info(dev), rank_threshold=rank_threshold,
                     model_dim=model_dim(model))
    curve = train_and_track(model, data, training, sgld, g_train, g_sgld)
    plateaus = plateau_summary(curve, rank_threshold=rank_threshold, margin=plateau_margin)
    _run.info["plateaus"] = plateaus
    for p in plateaus:
        print(f"rank {p['rank']} (steps {p['first_step']}-{p['last_step']}, {p['num_points']} points): "
              f"λ = {p['true_lambda']:g}, mean λ̂ = {p['lambdahat_mean']:.3f} ± {p['lambdahat_sem']:.2f}, "
              f"relative error {p['rel_error']:+.1%}")
    if do_plot:
        save_artifacts(_run, figures={"saddle_to_saddle.png": make_figure(curve)})
    for obs in _run.observers:
        print(f"run stored in {Path(obs.dir).resolve() if hasattr(obs, 'dir') else obs}")
    last = curve.iloc[-1]
    return dict(final_train_loss=float(last["train_loss"]), final_rank=int(last["rank"]),
                final_lambdahat=float(last["lambdahat"]), final_true_lambda=float(last["true_lambda"]),
                num_plateaus=len(plateaus))


observe_by_default = default_observer(ex, "dln_saddle_dynamics")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
