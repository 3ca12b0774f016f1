r"""λ̂ over SGD training on real data (Furman & Lau 2024, §5; the SGD-noise study), as a Sacred experiment.

A ResNet18, an MLP or a MnasNet-style CNN (``models.mnas``) is trained with SGD or Adam on a real
data set (``data.py``); every ``logging_period`` steps and at the last step the LLC is estimated at
the current parameters w_t with SGLD (``sgld.estimate_llc``), and the training and test loss and accuracy are recorded.

    python expt_llc_curve.py -F outputs/llc_curve with model_data_config.data_dir=~/data
    python expt_llc_curve.py -F outputs/mnist1d with mnist1d_mlp

Without ``-F``/``-m`` the run is stored under ``outputs/<expt_name>/`` (``outputs/llc_curve/``
when ``expt_name`` is None). Every key of the reference experiment is accepted, e.g. the reference
README's command (given CIFAR-10 in ``$LLC_DATA_DIR`` or ``./data``, see ``data.py``)::

    python expt_llc_curve.py --comment "readme" -F outputs/readme with expt_name='readme' \
        sgld_config.epsilon=2e-07 sgld_config.gamma=1.0 sgld_config.num_steps=5000 \
        sgld_config.batch_size=2048 loss_trace_minibatch=True training_config.optim=sgd \
        training_config.momentum=None training_config.num_steps=30001 training_config.learning_rate=0.005 \
        training_config.batch_size=512 training_config.l2_regularization=None force_realisable=False \
        logging_period=1000 do_plot=False verbose=False seed=0

What is measured. Training runs for t = 0 … T − 1 (T = ``training_config.num_steps``); the
checkpoints are the steps t with t % ``logging_period`` == 0 and t = T − 1, where w_t is the
parameter after t updates (the last checkpoint is the final parameter; no update follows it).
At a checkpoint:

* λ̂(w_t) = nβ(E[L_n(w)] − L_n(w_t)) with nβ = n/log n (n = ``ptr``), on the *clean* training
  labels when training on noisy ones. With ``force_realisable=True`` the targets are instead the
  network's own outputs at w_t and the loss is the logit-to-logit square loss
  L(w) = mean_i ‖f(x_i; w) − f(x_i; w_t)‖², so w_t is a global minimum with L_n(w_t) = 0.
  BatchNorm networks are sampled in eval mode (running statistics), so that the loss is a
  function of the parameters alone.
* Sacred metrics at step t: ``train/loss`` and ``train/accuracy`` (full training set, noisy
  labels as trained on, eval mode), ``test/loss``, ``test/accuracy``, ``train/temperature``
  (the SGD temperature T = learning_rate / batch_size of Sclocchi et al. 2023) and, through
  ``experiment.record_llc``, ``llc/mean``, ``llc/std``, ``llc/init_loss``, ``llc/rhat``,
  ``llc/mala_acceptance``, ``llc/num_diverged``, ``llc/epsilon``. The minibatch training loss
  goes to ``train/batch_loss`` (≤ 1000 points).

The run's info holds the last checkpoint's ``LLCResult.to_dict()`` (λ̂ and every diagnostic),
``sgd_temperature``, ``model_dim``, ``num_train``, ``num_test``, the data's ``normalisation``,
the device, and ``checkpoints``: one dict per checkpoint (step, λ̂, its std, R̂, losses, accuracies).
With ``num_top_eigs=k`` (0 = off) the k largest-magnitude eigenvalues of the Hessian of the loss
λ̂ is measured on (same data and targets, eval mode) are logged at each checkpoint as
``hessian/top_eig1`` … ``hessian/top_eig<k>`` (Lanczos, ``curvature.curvature_summary``); with
``mask_overlap_k=k`` the overlap ‖M Q‖²_F/k of its top-k eigenspace Q with the mask M of the k
largest-|w_i| parameters as ``hessian/mask_overlap`` (≈ k/d for unrelated subspaces) and the
Grassmann distance between the two as ``hessian/mask_geodesic``. Both also go into the checkpoint rows.
``do_plot=True`` stores ``llc_over_training.png`` (``plots.llc_over_training``) as an artifact, and
``llc_by_block_over_training.png`` with ``llc_restrict``.

Per-block λ̂. ``llc_restrict`` names groups of parameters (group names without dots) by ``fnmatch``
patterns on ``model.named_parameters()``, e.g. ``{"layer1": ["stages.0.*", "stages.1.*"], "fc": ["head.*"]}``; at
each checkpoint, beside the whole network's λ̂, the restricted λ̂ of each group alone (the other
parameters held at w_t; ``estimate_llc(restrict=...)``, same SGLD settings and seed) is logged as
``llc/<group>/mean``, ``llc/<group>/std``, ``llc/<group>/rhat`` (and the other ``record_llc`` keys),
and goes into the checkpoint rows; ``info["llc_restrict"]`` lists each group's sampled tensors and
size. ``plots.llc_by_block_over_training`` draws them.

The SGD-noise study's knobs (Sclocchi et al. 2023, its reference README):

* ``max_wall`` (seconds, None = no limit): a wall-clock budget for training and its checkpoints;
  training stops at the first checkpoint reached after the budget is spent. ``info["stop_reason"]``
  is ``"max_wall"`` or ``"num_steps"``, and ``info["steps_trained"]`` the step of the last checkpoint.
* ``ckpt_grad_stats`` (k samples, 0 = off): at each checkpoint, on the training set as trained on
  (noisy labels) and in eval mode, the full-batch gradient norm ‖∇L_n(w_t)‖ as ``grad/norm`` and
  the minibatch gradient noise tr Cov(∇L_B) = E‖∇L_B − ∇L_n‖² at the run's batch size B
  (``training_config.batch_size``, B samples drawn without replacement), estimated from k
  minibatches as (1/k) Σ_i ‖∇L_{B_i} − ∇L_n‖², as ``grad/noise_trace``. Weight decay is not included.

Losses (``model_data_config.loss``): ``cross_entropy`` (class-index targets, one output per
class), ``hinge`` (binary tasks: one output, ±1 targets, mean max(0, 1 − y f); multi-class:
Weston–Watkins mean Σ_{k≠y} max(0, 1 − f_y + f_k)), ``mse`` (binary: one output, ±1 targets;
multi-class: one-hot targets; mean over samples and outputs of (f − y)²). With an output scale
``alpha`` (MLP, and MNAS without BatchNorm; Geiger et al. 2020, "Disentangling feature and lazy
training") the network is
f(x; w) = α(h(x; w) − h(x; w_0)) with w_0 the initialisation, and the loss is ℓ(f, y)/α².
"""

import copy
import math
import time
from dataclasses import dataclass

import pandas as pd
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import curvature
import data as datasets
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
    model_dim,
    parse,
    progress,
    record_llc,
    require,
    resolve_device,
    save_artifacts,
    sgld_kwargs,
    thin,
    train_sgd,
)
from models import make_model
from sgld import LLCResult, estimate_llc
from sgld.restrict import select_parameters

__all__ = ["LOSSES", "CurveTrainingConfig", "ModelDataConfig", "OutputScaled", "ex", "make_loss", "realisable_loss"]

ex = Experiment("llc_curve")

LOSSES = ("cross_entropy", "hinge", "mse")
MODEL_NAMES = ("mlp", "mnas", "resnet18")
IMAGE_SETS = ("cifar10", "cifar_animal", "mnist", "mnist_parity", "digits_images")
EVAL_BATCH = 1024  # samples per forward pass when evaluating losses on a whole set
# metric -> column of the frame plots.llc_over_training reads
CURVE_METRICS = {"llc/mean": "lambdahat", "llc/std": "lambdahat_std", "train/loss": "train_loss",
                 "test/loss": "test_loss"}


@ex.config
def config():
    """The reference README's settings: ResNet18 on CIFAR-10, SGD at 0.005, batch 512, λ̂ every 1000 steps."""
    expt_name = None  # observer folder outputs/<expt_name>/ when no -F/-m is given
    device = "auto"  # "auto" (cuda if available), "cpu", "cuda", "cuda:<i>"
    seed = 0  # root of every random draw (data subsample, label noise, init, minibatches, SGLD)
    sgld_config = {
        "epsilon": 2e-7,  # ε, SGLD step size
        "gamma": 1.0,  # γ, localization strength
        "num_steps": 5000,  # SGLD steps per chain, burn-in included
        "num_chains": 2,  # chains (≥ 2 for R̂)
        "batch_size": 2048,  # m, SGLD minibatch
        "num_burnin_steps": 0,  # leading steps left out of λ̂
    }
    loss_trace_minibatch = True  # λ̂ from minibatch losses (False: full-data loss each step)
    model_data_config = {
        "model_name": "resnet18",  # resnet18 | mlp | mnas
        "data_name": "cifar10",  # see data.DATASETS
        "label_noise_level": 0.0,  # p, fraction of training labels replaced by another class
        "layer_width_factor": 1.0,  # multiplies every width (ResNet18 base 64·factor; MLP width·factor)
        "data_dir": None,  # CIFAR-10/MNIST folder; None: $LLC_DATA_DIR, else ./data
        "download": False,  # download CIFAR-10/MNIST into data_dir if missing
        "ptr": None,  # training samples n (None: all)
        "pte": None,  # test samples (None: all)
        "depth": 5,  # MLP hidden layers L; MNAS inverted-residual blocks per stage
        "width": 128,  # MLP hidden width h; MNAS width h (stem channels)
        "activation": "relu",  # MLP and MNAS activation
        "alpha": None,  # α, MLP/MNAS output scale f = α(h(w) − h(w_0)), loss ℓ/α²; None: plain network
        "loss": "cross_entropy",  # cross_entropy | hinge | mse
        "batch_norm": True,  # ResNet18 and MNAS BatchNorm
    }
    training_config = {
        "optim": "sgd",  # sgd | adam
        "learning_rate": 0.005,  # η
        "momentum": None,  # SGD momentum (None: plain SGD)
        "batch_size": 512,  # B, training minibatch
        "num_steps": 30001,  # T, training steps
        "l2_regularization": None,  # weight decay coefficient (None: 0)
    }
    force_realisable = False  # λ̂ against the network's own outputs at w_t (logit square loss)
    logging_period = 1000  # steps between checkpoints (λ̂, losses, accuracies)
    verbose = False  # progress bars and per-checkpoint lines even without a terminal
    do_plot = False  # store the λ̂-over-training figure as an artifact
    num_top_eigs = 0  # k > 0: log the k largest-magnitude Hessian eigenvalues where λ̂ is measured (Lanczos)
    mask_overlap_k = 0  # k > 0: log the overlap of the Hessian's top-k eigenspace with the k largest-|w_i| mask
    llc_restrict = {}  # {group: [name patterns]}: λ̂ of each group of parameters alone, the rest at w_t
    max_wall = None  # seconds of training (checkpoints included), then stop at the next checkpoint; None: no limit
    ckpt_grad_stats = 0  # k > 0: log ‖∇L_n‖ and tr Cov(∇L_B) at batch size B from k minibatches at each checkpoint


@ex.named_config
def mnist1d_mlp():
    """λ̂ rising as the test loss falls: an MLP on MNIST-1D, a few minutes on one CPU core."""
    expt_name = "mnist1d_mlp"
    device = "cpu"
    model_data_config = {"model_name": "mlp", "data_name": "mnist1d", "depth": 2, "width": 64, "ptr": 16000,
                         "pte": 4000}
    training_config = {"optim": "sgd", "learning_rate": 0.02, "momentum": 0.9, "batch_size": 64, "num_steps": 3001}
    sgld_config = {"epsilon": 1e-4, "gamma": 100.0, "num_steps": 400, "num_chains": 2, "batch_size": 256,
                   "num_burnin_steps": 100}
    logging_period = 150
    do_plot = True


@ex.named_config
def resnet18_blocks():
    """Per-block λ̂ of ResNet18: its stem, the four stages (two basic blocks each) and the classifier."""
    llc_restrict = {"stem": ["stem.*"], "layer1": ["stages.0.*", "stages.1.*"], "layer2": ["stages.2.*", "stages.3.*"],
                    "layer3": ["stages.4.*", "stages.5.*"], "layer4": ["stages.6.*", "stages.7.*"], "fc": ["head.*"]}


@ex.named_config
def sgd_noise():
    """The SGD-noise study's MLP (Sclocchi et al. 2023): 5×128 ReLU, α = 32768, hinge, B = 16, mnist_parity."""
    model_data_config = {"model_name": "mlp", "data_name": "mnist_parity", "depth": 5, "width": 128,
                         "activation": "relu", "alpha": 32768.0, "loss": "hinge", "ptr": 1024, "pte": 32768}
    training_config = {"optim": "sgd", "batch_size": 16, "learning_rate": 0.016, "num_steps": 100_001}
    sgld_config = {"batch_size": 256}


# --------------------------------------------------------------------------- validated configs


@dataclass(frozen=True)
class CurveTrainingConfig(TrainingConfig):
    """``training_config``: the shared optimiser settings plus ``l2_regularization`` (None or ≥ 0)."""

    l2_regularization: float | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        l2 = self.l2_regularization
        require(l2 is None or (is_number(l2) and l2 >= 0),
                f"training_config.l2_regularization must be None or a number >= 0, got {l2!r}")
        require(not (self.optim == "adam" and self.momentum is not None),
                f"training_config.momentum={self.momentum!r} has no meaning for adam; set it to None")


@dataclass(frozen=True)
class ModelDataConfig:
    """``model_data_config``: network, data set, loss and their sizes."""

    model_name: str
    data_name: str
    label_noise_level: float = 0.0
    layer_width_factor: float = 1.0
    data_dir: str | None = None
    download: bool = False
    ptr: int | None = None
    pte: int | None = None
    depth: int = 5
    width: int = 128
    activation: str = "relu"
    alpha: float | None = None
    loss: str = "cross_entropy"
    batch_norm: bool = True

    def __post_init__(self) -> None:
        from models.mlp import ACTIVATIONS

        require(self.model_name in MODEL_NAMES,
                f"unknown model_data_config.model_name {self.model_name!r}; choose from {list(MODEL_NAMES)}")
        require(self.data_name in datasets.DATASETS,
                f"unknown model_data_config.data_name {self.data_name!r}; choose from {sorted(datasets.DATASETS)}")
        require(self.model_name == "mlp" or self.data_name in IMAGE_SETS,
                f"model_name={self.model_name!r} needs images ({list(IMAGE_SETS)}); data_name={self.data_name!r} "
                "gives vectors: use model_name='mlp'")
        require(is_number(self.label_noise_level) and 0 <= self.label_noise_level <= 1,
                f"model_data_config.label_noise_level must be in [0, 1], got {self.label_noise_level!r}")
        require(is_number(self.layer_width_factor) and self.layer_width_factor > 0,
                f"model_data_config.layer_width_factor must be > 0, got {self.layer_width_factor!r}")
        require(self.data_dir is None or isinstance(self.data_dir, str),
                f"model_data_config.data_dir must be None or a path, got {self.data_dir!r}")
        require(isinstance(self.download, bool),
                f"model_data_config.download must be True/False, got {self.download!r}")
        for key in ("ptr", "pte"):
            v = getattr(self, key)
            require(v is None or (is_int(v) and v >= 2),
                    f"model_data_config.{key} must be None or an int >= 2, got {v!r}")
        require(is_int(self.depth) and self.depth >= 0,
                f"model_data_config.depth must be an int >= 0, got {self.depth!r}")
        require(is_int(self.width) and self.width >= 1,
                f"model_data_config.width must be an int >= 1, got {self.width!r}")
        require(self.activation in ACTIVATIONS,
                f"unknown model_data_config.activation {self.activation!r}; choose from {sorted(ACTIVATIONS)}")
        require(self.alpha is None or (is_number(self.alpha) and self.alpha > 0),
                f"model_data_config.alpha must be None or a number > 0, got {self.alpha!r}")
        require(self.alpha is None or self.model_name == "mlp" or (self.model_name == "mnas" and not self.batch_norm),
                "model_data_config.alpha (output scale, centred at the initialisation) is for model_name='mlp' "
                f"and 'mnas' without BatchNorm only (the centring needs h(x; w_0) independent of the batch), got "
                f"model_name={self.model_name!r}, batch_norm={self.batch_norm!r}; set alpha=None")
        require(self.loss in LOSSES, f"unknown model_data_config.loss {self.loss!r}; choose from {list(LOSSES)}")
        require(isinstance(self.batch_norm, bool),
                f"model_data_config.batch_norm must be True/False, got {self.batch_norm!r}")

    @property
    def targets(self) -> str:
        """The target encoding the loss needs (see ``data.load``)."""
        binary = self.data_name in ("mnist_parity", "cifar_animal") or self.data_name.endswith("_parity")
        if self.loss == "cross_entropy":
            return "index"
        if self.loss == "hinge":
            return "signed" if binary else "index"
        return "signed" if binary else "onehot"


# --------------------------------------------------------------------------- losses and model


def make_loss(loss: str, alpha: float | None = None):
    """The mean loss ℓ(f, y) of ``model_data_config.loss``, divided by α² when α is set.

    Args:
        loss: "cross_entropy", "hinge" or "mse".
        alpha: Output scale α, or None.

    Returns:
        ``loss_fn(output, target) -> scalar``, usable under ``torch.func.vmap``.
    """
    scale = 1.0 if alpha is None else 1.0 / alpha**2

    def cross_entropy(f: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(f, y) * scale

    def hinge(f: Tensor, y: Tensor) -> Tensor:
        if y.is_floating_point():  # ±1 targets, one output
            return torch.relu(1 - y * f.squeeze(-1)).mean() * scale
        margins = torch.relu(1 + f - f.gather(-1, y.unsqueeze(-1)))  # the k = y term is relu(1) = 1
        return (margins.sum(-1) - 1).mean() * scale

    def mse(f: Tensor, y: Tensor) -> Tensor:
        return (f.reshape(y.shape) - y).square().mean() * scale

    return {"cross_entropy": cross_entropy, "hinge": hinge, "mse": mse}[loss]


def realisable_loss(output: Tensor, target: Tensor) -> Tensor:
    """L = mean over samples of ‖f(x; w) − f(x; w_t)‖², targets the network's own outputs at w_t.

    Returns:
        The scalar loss L.
    """
    return (output - target).square().sum(-1).mean()


def accuracy(f: Tensor, y: Tensor) -> float:
    """Fraction classified right: sign for ±1 targets, argmax otherwise.

    Returns:
        The accuracy, in [0, 1].
    """
    if y.is_floating_point() and y.ndim == 1:
        return float((torch.where(f.squeeze(-1) >= 0, 1.0, -1.0) == y).float().mean())
    labels = y.argmax(-1) if y.ndim == 2 else y
    return float((f.argmax(-1) == labels).float().mean())


class OutputScaled(nn.Module):
    """f(x; w) = α(h(x; w) − h(x; w_0)), h the network and w_0 its frozen initial parameters.

    Args:
        net: The network h at its initialisation.
        alpha: The output scale α.
    """

    def __init__(self, net: nn.Module, alpha: float) -> None:
        super().__init__()
        self.net = net
        self.alpha = float(alpha)
        self.initial = copy.deepcopy(net).requires_grad_(False)  # frozen: not sampled, not trained

    def forward(self, x: Tensor) -> Tensor:
        """α(h(x; w) − h(x; w_0)).

        Args:
            x: Inputs.

        Returns:
            The scaled, centred outputs.
        """
        return self.alpha * (self.net(x) - self.initial(x))


@ex.capture
def build_model(md: ModelDataConfig, d: datasets.Data, generator: torch.Generator) -> nn.Module:
    """ResNet18, MNAS or MLP for ``d``'s inputs and outputs, initialised from ``generator``.

    Returns:
        The network (``OutputScaled`` when α is set).
    """
    with torch.random.fork_rng(devices=[]):  # PyTorch's initialisers draw from the global generator
        torch.manual_seed(int_seed(generator))
        if md.model_name == "resnet18":
            return make_model("resnet18", num_classes=d.output_dim, width_factor=md.layer_width_factor,
                              in_channels=d.input_shape[0], batch_norm=md.batch_norm)
        width = max(1, round(md.width * md.layer_width_factor))
        if md.model_name == "mnas":
            net = make_model("mnas", num_classes=d.output_dim, in_channels=d.input_shape[0], h=width,
                             depth=max(1, md.depth), activation=md.activation, batch_norm=md.batch_norm)
        else:
            net = make_model("mlp", input_dim=math.prod(d.input_shape), hidden_widths=[width] * md.depth,
                             output_dim=d.output_dim, activation=md.activation)
    return net if md.alpha is None else OutputScaled(net, md.alpha)


# --------------------------------------------------------------------------- captured helpers


@ex.capture
def load_data(md: ModelDataConfig, generator: torch.Generator) -> datasets.Data:
    """``data.load`` with the config's sizes, noise and target encoding.

    Returns:
        The data.
    """
    return datasets.load(md.data_name, data_dir=md.data_dir, ptr=md.ptr, pte=md.pte,
                         label_noise=md.label_noise_level, targets=md.targets, seed=int_seed(generator),
                         download=md.download)


@ex.capture
def check_setup(expt_name, logging_period, force_realisable, loss_trace_minibatch, verbose, do_plot, num_top_eigs,
                mask_overlap_k, max_wall, ckpt_grad_stats, llc_restrict) -> None:
    """Validate the top-level config before any work, so a bad value fails in seconds.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    check_common(expt_name)
    require(is_int(logging_period) and logging_period >= 1,
            f"logging_period must be an int >= 1, got {logging_period!r}")
    for key, v in (("force_realisable", force_realisable), ("loss_trace_minibatch", loss_trace_minibatch),
                   ("verbose", verbose), ("do_plot", do_plot)):
        require(isinstance(v, bool), f"{key} must be True or False, got {v!r}")
    for key, k in (("num_top_eigs", num_top_eigs), ("mask_overlap_k", mask_overlap_k),
                   ("ckpt_grad_stats", ckpt_grad_stats)):
        require(is_int(k) and k >= 0, f"{key} must be an int >= 0 (0 = off), got {k!r}")
    require(isinstance(llc_restrict, dict), f"llc_restrict must be a dict {{group: [patterns]}}, got {llc_restrict!r}")
    for group, patterns in llc_restrict.items():
        require(isinstance(group, str) and group and "/" not in group,
                f"llc_restrict group names must be non-empty strings without '/', got {group!r}")
        require(not isinstance(patterns, dict),
                f"llc_restrict[{group!r}] is a dict {patterns!r}: a group name with '.' (Sacred reads a dotted key as "
                "nesting); name the group without dots, e.g. 'layer1'")
        require(isinstance(patterns, str) or (isinstance(patterns, (list, tuple)) and patterns
                                              and all(isinstance(p, str) for p in patterns)),
                f"llc_restrict[{group!r}] must be a name pattern or a non-empty list of them, got {patterns!r}")
    require(max_wall is None or (is_number(max_wall) and max_wall > 0),
            f"max_wall must be None (no limit) or a number of seconds > 0, got {max_wall!r}")


def check_sizes(sgld: SGLDConfig, training: CurveTrainingConfig, d: datasets.Data) -> None:
    """The minibatches must fit in the training set.

    Raises:
        ValueError: Naming the batch size that does not fit.
    """
    check_common(None, num_train=len(d.x_train), fix="raise model_data_config.ptr",
                 batch_sizes={"sgld_config": sgld.batch_size, "training_config": training.batch_size})


@torch.no_grad()
def evaluate(model: nn.Module, loss_fn, x: Tensor, y: Tensor) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (in eval mode) on all of (x, y), in chunks.

    Returns:
        (loss, accuracy).
    """
    was_training = model.training
    model.eval()
    outputs = torch.cat([model(x[i: i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    model.train(was_training)
    return float(loss_fn(outputs, y)), accuracy(outputs, y)


@torch.no_grad()
def own_outputs(model: nn.Module, x: Tensor) -> Tensor:
    """The network's outputs at its current parameters, in eval mode: the realisable targets.

    Returns:
        f(x; w_t), one row per row of x, computed ``EVAL_BATCH`` rows at a time without gradient.
    """
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i: i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])
    model.train(was_training)
    return out


@ex.capture
def measured_loss(model: nn.Module, loss_fn, d: datasets.Data,
                  force_realisable) -> tuple[tuple[Tensor, Tensor], object]:
    """The data and loss λ̂ is measured on at the model's current parameters: clean labels, or its own outputs.

    Returns:
        ((x, targets), loss_fn).
    """
    if force_realisable:
        return (d.x_train, own_outputs(model, d.x_train)), realisable_loss
    return (d.x_train, d.y_train_clean), loss_fn


@ex.capture
def estimate(model: nn.Module, loss_fn, d: datasets.Data, sgld: SGLDConfig, seed: int, device: torch.device,
             loss_trace_minibatch, verbose, restrict: list[str] | str | None = None) -> LLCResult:
    """λ̂ at the model's current parameters on the clean labels, or against its own outputs.

    Returns:
        The estimator's ``LLCResult``, of the parameters ``restrict`` selects (None: all).
    """
    data, fn = measured_loss(model, loss_fn, d)
    return estimate_llc(model, fn, data, **sgld_kwargs(sgld), seed=seed, loss_trace_minibatch=loss_trace_minibatch,
                        progress=progress(verbose), device=device, restrict=restrict)


@ex.capture
def block_estimates(_run, step: int, model: nn.Module, loss_fn, d: datasets.Data, sgld: SGLDConfig, seed: int,
                    device: torch.device, llc_restrict) -> dict:
    """The restricted λ̂ of each ``llc_restrict`` group at w_t, logged as ``llc/<group>/...``.

    Returns:
        ``{"llc/<group>/mean", "llc/<group>/std", "llc/<group>/rhat"}`` for every group.
    """
    row = {}
    for group, patterns in llc_restrict.items():
        result = estimate(model, loss_fn, d, sgld, seed, device, restrict=list(patterns) if not isinstance(
            patterns, str) else patterns)
        record_llc(_run, result, step, prefix=f"llc/{group}/")
        row.update({f"llc/{group}/mean": result.lambdahat, f"llc/{group}/std": result.lambdahat_std,
                    f"llc/{group}/rhat": result.rhat})
    return row


@ex.capture
def check_restrict(model: nn.Module, llc_restrict) -> dict:
    """Resolve every ``llc_restrict`` group on the model before training, so a bad pattern fails at once.

    Returns:
        ``{group: {"patterns", "sampled_parameters", "num_sampled"}}`` for the run's info.
    """
    sizes = dict(model.named_parameters())
    out = {}
    for group, patterns in llc_restrict.items():
        names = select_parameters(model, patterns)
        patterns = patterns if isinstance(patterns, str) else list(patterns)
        out[group] = {"patterns": patterns, "sampled_parameters": names,
                      "num_sampled": sum(sizes[n].numel() for n in names)}
    return out


@ex.capture
def curvature_at(model: nn.Module, loss_fn, d: datasets.Data, seed: int, num_top_eigs, mask_overlap_k) -> dict:
    """Top Hessian eigenvalues and mask overlap of the loss λ̂ is measured on, at w_t, as metrics.

    The model is put in eval mode, as for sampling (BatchNorm on running statistics), so the loss
    is a function of the parameters alone (``curvature.curvature_summary``, Lanczos).

    Returns:
        ``{"hessian/top_eig<i>": λ_i, …, "hessian/mask_overlap", "hessian/mask_geodesic"}`` for the
        options that are on; empty when both are off.
    """
    if not (num_top_eigs or mask_overlap_k):
        return {}
    data, fn = measured_loss(model, loss_fn, d)
    was_training = model.training
    model.eval()
    try:
        summary = curvature.curvature_summary(model, fn, data, top_eigs=num_top_eigs, mask_overlap_k=mask_overlap_k,
                                              seed=seed)
    finally:
        model.train(was_training)
    out = {f"hessian/top_eig{i + 1}": v for i, v in enumerate(summary.get("top_eigenvalues", []))}
    if "mask_overlap" in summary:
        out.update({"hessian/mask_overlap": summary["mask_overlap"]["overlap"],
                    "hessian/mask_geodesic": summary["mask_overlap"]["geodesic"]})
    return out


def _flat_grad(model: nn.Module, loss_fn, x: Tensor, y: Tensor, params: list[Tensor]) -> Tensor:
    """∇ of the mean loss on (x, y), in chunks of ``EVAL_BATCH``, as one flat vector.

    Returns:
        The (d,) gradient over ``params``.
    """
    total = [torch.zeros_like(p) for p in params]
    for i in range(0, len(x), EVAL_BATCH):
        xi, yi = x[i: i + EVAL_BATCH], y[i: i + EVAL_BATCH]
        grads = torch.autograd.grad(loss_fn(model(xi), yi) * (len(xi) / len(x)), params, allow_unused=True)
        for t, g in zip(total, grads, strict=True):
            if g is not None:
                t.add_(g)
    return torch.cat([t.reshape(-1) for t in total])


@ex.capture
def grad_stats(model: nn.Module, loss_fn, d: datasets.Data, batch_size: int, generator: torch.Generator,
               ckpt_grad_stats) -> dict:
    """‖∇L_n(w_t)‖ and tr Cov(∇L_B) at batch size B from k minibatches, on the training set as trained on.

    Returns:
        ``{"grad/norm", "grad/noise_trace"}``; empty when ``ckpt_grad_stats`` is 0.
    """
    if not ckpt_grad_stats:
        return {}
    params = [p for p in model.parameters() if p.requires_grad]
    was_training = model.training
    model.eval()  # as for λ̂: BatchNorm on running statistics, so L is a function of the parameters alone
    try:
        full = _flat_grad(model, loss_fn, d.x_train, d.y_train, params)
        noise = 0.0
        for _ in range(ckpt_grad_stats):
            idx = torch.randperm(len(d.x_train), generator=generator)[:batch_size].to(d.x_train.device)
            noise += float((_flat_grad(model, loss_fn, d.x_train[idx], d.y_train[idx], params) - full).square().sum())
    finally:
        model.train(was_training)
    return {"grad/norm": float(full.norm()), "grad/noise_trace": noise / ckpt_grad_stats}


def checkpoint(_run, step: int, model: nn.Module, loss_fn, d: datasets.Data, result: LLCResult,
               temperature: float, seed: int, extra: dict | None = None) -> dict:
    """Log one checkpoint's metrics (with the curvature ones that are on, and ``extra``) and return its summary row.

    Returns:
        The logged metrics by key (with ``step``), plus ``llc/mean``, ``llc/std`` and ``llc/rhat``.
    """
    train_loss, train_acc = evaluate(model, loss_fn, d.x_train, d.y_train)
    test_loss, test_acc = evaluate(model, loss_fn, d.x_test, d.y_test)
    row = {"step": step, "train/loss": train_loss, "train/accuracy": train_acc, "test/loss": test_loss,
           "test/accuracy": test_acc, "train/temperature": temperature, **curvature_at(model, loss_fn, d, seed),
           **(extra or {})}
    for key, value in row.items():
        if key != "step":
            _run.log_scalar(key, value, step)
    record_llc(_run, result, step)
    return {**row, "llc/mean": result.lambdahat, "llc/std": result.lambdahat_std, "llc/rhat": result.rhat}


@ex.capture
def train_and_measure(model: nn.Module, loss_fn, d: datasets.Data, sgld: SGLDConfig, training: CurveTrainingConfig,
                      g_batch: torch.Generator, g_sgld: torch.Generator, g_grad: torch.Generator,
                      device: torch.device, _run, logging_period, verbose,
                      max_wall) -> tuple[list[dict], LLCResult, str]:
    """Train for T steps (epochs of shuffled minibatches), or until ``max_wall``; λ̂ and losses at every checkpoint.

    Returns:
        (one summary dict per checkpoint, the last checkpoint's LLCResult, why training stopped:
        ``"num_steps"`` or ``"max_wall"``).

    Raises:
        FloatingPointError: If the training loss becomes NaN or infinite.
    """
    temperature = training.learning_rate / training.batch_size
    n, batch_size, last = len(d.x_train), training.batch_size, training.num_steps - 1
    rows, results, epoch = [], [], {"order": torch.empty(0, dtype=torch.long), "pos": n}

    def batch(t: int) -> tuple[Tensor, Tensor]:
        if epoch["pos"] + batch_size > n:  # a new epoch: reshuffle
            epoch["order"], epoch["pos"] = torch.randperm(n, generator=g_batch).to(device), 0
        idx = epoch["order"][epoch["pos"]: epoch["pos"] + batch_size]
        epoch["pos"] += batch_size
        return d.x_train[idx], d.y_train[idx]

    def measure(t: int) -> bool:
        seed = int_seed(g_sgld)
        results.append(estimate(model, loss_fn, d, sgld, seed, device))
        blocks = block_estimates(_run, t, model, loss_fn, d, sgld, seed, device)  # logged there
        rows.append({**checkpoint(_run, t, model, loss_fn, d, results[-1], temperature, seed,
                                  grad_stats(model, loss_fn, d, batch_size, g_grad)), **blocks})
        if verbose:
            print(f"step {t}: λ̂ = {results[-1].lambdahat:.4g} ± {results[-1].lambdahat_std:.2g}, train loss "
                  f"{rows[-1]['train/loss']:.4g}, test loss {rows[-1]['test/loss']:.4g}, "
                  f"test acc {rows[-1]['test/accuracy']:.3f}")
        return max_wall is not None and t < last and time.perf_counter() - start >= max_wall

    start = time.perf_counter()
    model.train()
    checkpoints = [t for t in range(training.num_steps) if t % logging_period == 0 or t == last]
    losses = train_sgd(model, loss_fn, batch, training, num_steps=last, weight_decay=training.l2_regularization or 0.0,
                       measure_at=checkpoints, measure=measure, show_progress=progress(verbose)).tolist()
    for t in thin(training.num_steps):
        if t < len(losses):
            _run.log_scalar("train/batch_loss", losses[t], t)
    return rows, results[-1], "max_wall" if rows[-1]["step"] < last else "num_steps"


@ex.capture
def plot_curves(rows: list[dict], llc_restrict) -> dict:
    """``plots.llc_over_training`` of this run's checkpoints, and ``llc_by_block_over_training`` with ``llc_restrict``.

    Returns:
        Artifact name → figure.
    """
    import plots

    long = pd.DataFrame([{"metric": k, "step": r["step"], "value": v} for r in rows for k, v in r.items()
                         if k != "step"])
    figures = {"llc_over_training.png": plots.llc_over_training(
        plots.training_curve(long[long["metric"].isin(list(CURVE_METRICS))], CURVE_METRICS))}
    if llc_restrict:
        figures["llc_by_block_over_training.png"] = plots.llc_by_block_over_training(long)
    return figures


def _to_device(d: datasets.Data, device: torch.device) -> datasets.Data:
    moved = {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in d.__dict__.items()}
    return datasets.Data(**moved)


# --------------------------------------------------------------------------- the run


@ex.main
def run(_run, sgld_config, model_data_config, training_config, device, seed, do_plot, num_top_eigs,
        mask_overlap_k) -> dict:
    """Data → model → train, with λ̂ and losses at every checkpoint → records.

    Returns:
        The final λ̂ and its std, and the last checkpoint's train loss, test loss and test accuracy.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    md = parse(ModelDataConfig, "model_data_config", model_data_config)
    training = parse(CurveTrainingConfig, "training_config", training_config)
    dev = resolve_device(device)
    check_setup()
    g_data, g_init, g_batch, g_sgld, g_grad = generators(seed, 5)
    d = load_data(md, g_data)
    check_sizes(sgld, training, d)
    d = _to_device(d, dev)
    model = build_model(md, d, g_init).to(dev)
    check_curvature_ks(model, num_top_eigs=num_top_eigs, mask_overlap_k=mask_overlap_k)
    _run.info["llc_restrict"] = check_restrict(model)
    loss_fn = make_loss(md.loss, md.alpha)
    _run.info.update(device_info(dev), model_dim=model_dim(model),
                     num_train=len(d.x_train), num_test=len(d.x_test), normalisation=d.normalisation,
                     sgd_temperature=training.learning_rate / training.batch_size,
                     num_noisy_labels=int(d.noisy.sum()))
    rows, result, stop_reason = train_and_measure(model, loss_fn, d, sgld, training, g_batch, g_sgld, g_grad, dev)
    _run.info.update(result.to_dict(), stop_reason=stop_reason, steps_trained=rows[-1]["step"])
    _run.info["checkpoints"] = rows
    if do_plot:
        save_artifacts(_run, figures=plot_curves(rows))
    final = rows[-1]
    return dict(lambdahat=result.lambdahat, lambdahat_std=result.lambdahat_std, train_loss=final["train/loss"],
                test_loss=final["test/loss"], test_accuracy=final["test/accuracy"])


observe_by_default = default_observer(ex, "llc_curve")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
