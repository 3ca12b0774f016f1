"""Shared plumbing of the Sacred experiments (``expt_*.py``): configs, device, seeds, records, observer.

Each experiment file keeps only its own science (its config, model, data and ``run``); what every
experiment needs lives here, once:

* **Validated configs.** Sacred only warns about an unknown key inside a nested dict
  (``sgld_config.eps=1e-6``); ``parse(SGLDConfig, "sgld_config", sgld_config)`` turns the dict into a
  frozen dataclass and fails with a ``TypeError`` naming the bad key and the accepted ones, and each
  dataclass's ``__post_init__`` raises a ``ValueError`` naming the bad value and its range.
  ``SGLDConfig`` (ε, γ, steps, chains, m, burn-in) and ``TrainingConfig`` (optimiser, step size,
  momentum, batch, steps) are shared; ``require``, ``is_int`` and ``is_number`` build the rest.
* **Device.** ``resolve_device("auto" | "cpu" | "cuda" | "cuda:1")`` and ``device_info`` for the run's
  info (the device and its name).
* **Seeds.** ``generators(seed, k)``: k independent ``torch.Generator``s from Sacred's root seed
  through ``np.random.SeedSequence``; ``int_seed(g)`` draws a seed for code that takes an int.
* **Records.** ``record_llc`` logs an ``LLCResult``'s λ̂ and diagnostics as Sacred metrics at a step
  (λ̂ over training); ``log_traces`` logs its loss traces (thinned to ``MAX_POINTS_PER_METRIC``);
  ``save_artifacts`` stores arrays, tensors and figures as artifacts, written to a temporary folder
  first so a failure leaves no half-written file behind.
* **Observer.** ``ex.option_hook(default_observer(ex, default_dir))``: without ``-F``/``-m`` (or
  another observer flag) a run is stored under ``outputs/<expt_name or default_dir>/``.

Importing this module also silences Sacred 0.8.7's import-time ``pkg_resources`` deprecation
warning, which no user can act on: experiments take Sacred's ``Experiment`` from here
(``from experiment import Experiment``) rather than importing Sacred first.
"""

import math
import sys
import tempfile
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# Before Sacred is imported: sacred/dependencies.py imports pkg_resources, which warns on import.
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sacred import Experiment  # noqa: E402
from sacred.arg_parser import get_config_updates  # noqa: E402
from sacred.observers import FileStorageObserver  # noqa: E402
from tqdm import tqdm  # noqa: E402

from sgld import LLCResult  # noqa: E402

__all__ = [
    "Experiment",
    "MAX_POINTS_PER_METRIC",
    "OPTIMIZERS",
    "SGLDConfig",
    "TrainingConfig",
    "check_common",
    "check_curvature_ks",
    "default_observer",
    "device_info",
    "generators",
    "int_seed",
    "is_int",
    "is_number",
    "log_traces",
    "make_optimizer",
    "model_dim",
    "mse_loss",
    "parse",
    "progress",
    "record_llc",
    "require",
    "resolve_device",
    "save_artifacts",
    "sgld_kwargs",
    "thin",
    "train_sgd",
]

OPTIMIZERS = ("sgd", "adam")
MAX_POINTS_PER_METRIC = 1000  # thinning of traces logged as Sacred metrics
OBSERVER_OPTIONS = ("--file_storage", "--mongo_db", "--sql", "--s3", "--gcs", "--unobserved", "--queue")


# --------------------------------------------------------------------------- validation


def require(ok: bool, message: str) -> None:
    """Raise ``ValueError(message)`` unless ``ok``: the one form of every config check.

    Raises:
        ValueError: If ``ok`` is false.
    """
    if not ok:
        raise ValueError(message)


def is_int(v: object) -> bool:
    """True for an int that is not a bool (``True`` is no step count).

    Returns:
        Whether ``v`` is an int and not a bool.
    """
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: object) -> bool:
    """True for a finite int or float that is not a bool.

    Returns:
        Whether ``v`` is a finite int or float and not a bool.
    """
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def parse(cls: type, name: str, values: dict):
    """Build a validated config dataclass from a nested config dict.

    Sacred only warns about unknown nested keys (``sgld_config.eps=...``); this makes them fatal.

    Args:
        cls: A config dataclass, e.g. ``SGLDConfig``.
        name: The dict's config key, for messages.
        values: The dict from the config.

    Returns:
        The frozen dataclass.

    Raises:
        TypeError: If a key is not a field of ``cls`` or ``values`` is not a dict.
        ValueError: If a value is out of range (from the dataclass).

    Example:
        >>> parse(SGLDConfig, "sgld_config", {"epsilon": 1e-5, "gamma": 1.0, "num_steps": 10,
        ...                                   "num_chains": 2, "batch_size": 8}).num_steps
        10
        >>> parse(SGLDConfig, "sgld_config", {"eps": 1e-5})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: unknown config key sgld_config.eps; sgld_config accepts ['epsilon', 'gamma', ...]
    """
    if not isinstance(values, dict):
        raise TypeError(f"{name} must be a dict of settings, got {values!r}")
    accepted = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(accepted))
    if unknown:
        raise TypeError(f"unknown config key {name}.{unknown[0]}; {name} accepts {accepted}")
    return cls(**values)


def check_common(expt_name: object, *, itemp: object = None, num_train: int | None = None,
                 batch_sizes: dict[str, int] | None = None, fix: str = "raise num_training_data") -> None:
    """The checks every experiment's top-level config shares, with one wording.

    Args:
        expt_name: The run name: None or a str.
        itemp: β (nβ = n · itemp), which must be a number > 0; None where the experiment has none.
        num_train: n, the training-set size the minibatches are drawn from.
        batch_sizes: ``{"sgld_config": m, "training_config": B}``: each must be ≤ ``num_train``.
        fix: What else, besides lowering the batch size, makes a batch fit.

    Raises:
        ValueError: Naming the first bad key, its value and the accepted range.
    """
    require(expt_name is None or isinstance(expt_name, str), f"expt_name must be None or a str, got {expt_name!r}")
    if itemp is not None:
        require(is_number(itemp) and itemp > 0, f"itemp (β) must be a number > 0, got {itemp!r}")
    for name, m in (batch_sizes or {}).items() if is_int(num_train) else ():
        require(m <= num_train, f"{name}.batch_size={m} exceeds the {num_train} training samples; lower it or {fix}")


def check_curvature_ks(model: torch.nn.Module, **ks: int) -> None:
    """Each k of a curvature option (``num_top_eigs=k``, ``mask_overlap_k=k``; 0 = off) is in [0, d).

    Raises:
        ValueError: Naming the key whose k is not an int in [0, d).
    """
    d = model_dim(model)
    for key, k in ks.items():
        require(is_int(k) and 0 <= k < d, f"{key} must be an int in [0, d={d}) (0 = off), got {k!r}")


@dataclass(frozen=True)
class SGLDConfig:
    """``sgld_config``: ε (float > 0 or "auto"), γ, steps (int or "auto", up to ``max_steps``), chains, m, burn-in."""

    epsilon: float | str
    gamma: float
    num_steps: int | str
    num_chains: int
    batch_size: int
    num_burnin_steps: int = 0
    max_steps: int = 64_000

    def __post_init__(self) -> None:
        eps = self.epsilon
        require(eps == "auto" or (is_number(eps) and eps > 0),
                f"sgld_config.epsilon must be a number > 0 or 'auto', got {eps!r}")
        require(is_number(self.gamma) and self.gamma >= 0, f"sgld_config.gamma must be >= 0, got {self.gamma!r}")
        require(self.num_steps == "auto" or (is_int(self.num_steps) and self.num_steps >= 1),
                f"sgld_config.num_steps must be an int >= 1, got {self.num_steps!r}; or 'auto' to run until settled")
        for key in ("num_chains", "batch_size", "max_steps"):
            value = getattr(self, key)
            require(is_int(value) and value >= 1, f"sgld_config.{key} must be an int >= 1, got {value!r}")
        budget = self.max_steps if self.num_steps == "auto" else self.num_steps
        require(is_int(self.num_burnin_steps) and 0 <= self.num_burnin_steps < budget,
                f"sgld_config.num_burnin_steps must be an int in [0, {budget}), got {self.num_burnin_steps!r}")


def sgld_kwargs(sgld: SGLDConfig) -> dict[str, Any]:
    """The keyword arguments of ``sgld.estimate_llc`` that ``sgld_config`` sets.

    Returns:
        ``epsilon``, ``gamma``, ``num_steps``, ``num_chains``, ``batch_size``, ``num_burnin_steps`` and
        ``max_steps`` from ``sgld``, by name.
    """
    return dict(epsilon=sgld.epsilon, gamma=sgld.gamma, num_steps=sgld.num_steps, num_chains=sgld.num_chains,
                batch_size=sgld.batch_size, num_burnin_steps=sgld.num_burnin_steps, max_steps=sgld.max_steps)


@dataclass(frozen=True)
class TrainingConfig:
    """``training_config``: optimiser (sgd | adam), step size, momentum, minibatch, steps."""

    optim: str
    learning_rate: float
    momentum: float | None
    batch_size: int
    num_steps: int

    def __post_init__(self) -> None:
        require(self.optim in OPTIMIZERS,
                f"unknown training_config.optim {self.optim!r}; choose from {list(OPTIMIZERS)}")
        require(is_number(self.learning_rate) and self.learning_rate > 0,
                f"training_config.learning_rate must be > 0, got {self.learning_rate!r}")
        require(self.momentum is None or (is_number(self.momentum) and 0 <= self.momentum < 1),
                f"training_config.momentum must be None or in [0, 1), got {self.momentum!r}")
        for key in ("batch_size", "num_steps"):
            value = getattr(self, key)
            require(is_int(value) and value >= 1, f"training_config.{key} must be an int >= 1, got {value!r}")


def make_optimizer(params, training: TrainingConfig, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """``torch.optim.SGD`` (with ``momentum``, None meaning 0) or ``Adam`` (momentum ignored).

    Args:
        params: The parameters to train.
        training: The validated ``training_config``.
        weight_decay: L2 penalty coefficient added to the gradient.

    Returns:
        The optimiser.
    """
    if training.optim == "sgd":
        return torch.optim.SGD(params, lr=training.learning_rate, momentum=training.momentum or 0.0,
                               weight_decay=weight_decay)
    return torch.optim.Adam(params, lr=training.learning_rate, weight_decay=weight_decay)


def model_dim(model: torch.nn.Module) -> int:
    """d, the number of trainable parameters (those SGLD samples; frozen buffers and copies left out).

    Returns:
        The sum of ``numel`` over the parameters with ``requires_grad``.

    Example:
        >>> model_dim(torch.nn.Linear(3, 2))
        8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def train_sgd(model: torch.nn.Module, loss_fn: Callable, batch: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
              training: TrainingConfig, *, num_steps: int | None = None, weight_decay: float = 0.0,
              measure_at: Iterable[int] = (), measure: Callable[[int], None] | None = None, check_every: int = 1,
              show_progress: bool = False) -> torch.Tensor:
    """The training loop of every experiment that trains: ``training_config``'s optimiser on minibatches.

    Step t (t = 0 … T − 1) draws ``batch(t)``, computes the loss at w_t and updates to w_{t+1}.
    ``measure(t)`` runs at w_t for each t in ``measure_at`` (t = T included: after the last update).
    The losses stay on the model's device; their finiteness is checked every ``check_every`` steps
    (a read-back stalls a GPU's queue, so not necessarily every step), and a non-finite loss stops
    training, naming the first bad step.

    Args:
        model: The model, trained in place.
        loss_fn: ``loss_fn(output, target)``, the mean loss.
        batch: ``batch(t) -> (x, y)``, the minibatch of step t.
        training: The validated ``training_config`` (optimiser, step size, momentum).
        num_steps: T, the number of updates; default ``training.num_steps``.
        weight_decay: L2 penalty coefficient added to the gradient.
        measure_at: Steps in [0, T] at which to call ``measure``.
        measure: ``measure(t)``, called at w_t; if it returns True, training stops there (the
            trace then ends at step t).
        check_every: Steps between finiteness checks.
        show_progress: Show a progress bar.

    Returns:
        The (T,) minibatch losses, on the model's device; (t,) if ``measure(t)`` stopped training.

    Raises:
        FloatingPointError: If a training loss is NaN or infinite.
    """
    num_steps = training.num_steps if num_steps is None else num_steps
    device = next(model.parameters()).device
    opt = make_optimizer(model.parameters(), training, weight_decay=weight_decay)
    todo, trace, checked = set(measure_at), torch.empty(num_steps, device=device), 0
    for t in tqdm(range(num_steps + 1), desc="training", disable=not show_progress):
        if t in todo and measure is not None and measure(t):
            return trace[:t]
        if t == num_steps:
            break
        x, y = batch(t)
        loss = loss_fn(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        trace[t] = loss.detach()
        if (t + 1) % check_every == 0 or t == num_steps - 1:
            bad = torch.nonzero(~torch.isfinite(trace[checked: t + 1]))
            if len(bad):
                first = checked + int(bad[0])
                raise FloatingPointError(f"training loss is {float(trace[first])} at step {first}; lower "
                                         f"training_config.learning_rate (now {training.learning_rate})")
            checked = t + 1
    return trace


def mse_loss(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L = mean over samples and outputs of (f(x) − y)², the regression loss of every experiment.

    Written out rather than ``F.mse_loss``: in torch 2.14 a forward-over-reverse Hessian-vector
    product of ``F.mse_loss`` at a zero residual (a realisable teacher) raises "ZeroTensors are
    immutable".

    Args:
        output: Predictions ``(batch, ...)``.
        target: Targets of the same shape.

    Returns:
        The scalar mean squared error.
    """
    return (output - target).square().mean()


# --------------------------------------------------------------------------- device and seeds


def resolve_device(device: str) -> torch.device:
    """The ``device`` config value as a ``torch.device``: "auto" is cuda when available, else cpu.

    Args:
        device: "auto", "cpu", "cuda" or "cuda:<index>".

    Returns:
        The device.

    Raises:
        ValueError: If the name is not one of those, or names a GPU this machine does not have.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}") from err
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'auto', 'cpu', 'cuda' or 'cuda:<index>', got {device!r}")
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        require(count > 0, f"device={device!r} but torch sees no CUDA GPU here; use device=cpu or device=auto")
        require(dev.index is None or dev.index < count,
                f"device={device!r} but torch sees {count} CUDA GPU(s) (cuda:0 … cuda:{count - 1})")
    return dev


def device_info(device: torch.device) -> dict[str, str]:
    """``{"device": "cuda:0", "device_name": "NVIDIA H200"}`` (the CPU's name is its architecture).

    Returns:
        The device (``cuda:<i>``, the current GPU when no index is given, or ``cpu``) and its name.
    """
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"device": f"cuda:{index}", "device_name": torch.cuda.get_device_name(index)}
    import platform

    return {"device": "cpu", "device_name": platform.processor() or platform.machine()}


def generators(seed: int, count: int) -> list[torch.Generator]:
    """``count`` independent CPU torch generators from Sacred's root seed via ``np.random.SeedSequence``.

    Returns:
        ``count`` generators, seeded from the children that ``SeedSequence(seed).spawn(count)`` gives.

    Example:
        >>> a, b = generators(0, 2)
        >>> bool(torch.rand(1, generator=a) != torch.rand(1, generator=b))
        True
    """
    states = [s.generate_state(2, dtype=np.uint64) for s in np.random.SeedSequence(seed).spawn(count)]
    return [torch.Generator().manual_seed(int(st[0] >> np.uint64(1))) for st in states]


def int_seed(g: torch.Generator) -> int:
    """A seed in [0, 2⁶²) drawn from ``g``, for code that takes an int seed (``estimate_llc``).

    Returns:
        The seed, an int in [0, 2⁶²).
    """
    return int(torch.randint(0, 2**62, (1,), generator=g))


def progress(verbose: bool) -> bool:
    """Show progress bars when asked, or whenever stderr is a terminal.

    Returns:
        Whether to show progress bars: ``verbose``, or stderr is a terminal.
    """
    return verbose or sys.stderr.isatty()


# --------------------------------------------------------------------------- records


def thin(num_steps: int) -> range:
    """At most ``MAX_POINTS_PER_METRIC`` evenly spaced steps of ``range(num_steps)``.

    Returns:
        ``range(0, num_steps, stride)``, stride ⌈num_steps / ``MAX_POINTS_PER_METRIC``⌉ (at least 1).
    """
    return range(0, num_steps, max(1, math.ceil(num_steps / MAX_POINTS_PER_METRIC)))


def log_traces(_run, result: LLCResult, prefix: str = "") -> None:
    """Loss traces as Sacred metrics ``<prefix>sgld/loss/chain<c>``, ≤ 1000 points per chain."""
    for c, trace in enumerate(result.loss_trace):
        for t in thin(len(trace)):
            _run.log_scalar(f"{prefix}sgld/loss/chain{c}", float(trace[t]), t)


def record_llc(_run, result: LLCResult, step: int, prefix: str = "llc/") -> None:
    """λ̂ and its evidence as Sacred metrics at ``step`` (a point of λ̂ over training).

    Logs ``<prefix>mean`` (λ̂), ``std`` (across chains), ``init_loss`` (L(w*)), ``rhat``,
    ``mala_acceptance``, ``num_diverged`` (how many chains diverged) and ``epsilon``; NaN diagnostics are
    logged as NaN.

    Args:
        _run: The Sacred run.
        result: The estimate at that step.
        step: The training step.
        prefix: Metric-name prefix.
    """
    values = {
        "mean": result.lambdahat,
        "std": result.lambdahat_std,
        "init_loss": result.init_loss,
        "rhat": result.rhat,
        "mala_acceptance": result.mala_acceptance,
        "num_diverged": float(sum(step is not None for step in result.divergence_step)),
        "epsilon": result.epsilon,
    }
    for key, value in values.items():
        _run.log_scalar(prefix + key, float(value) if value is not None else float("nan"), step)


def save_artifacts(_run, arrays: dict[str, np.ndarray] | None = None, tensors: dict[str, Any] | None = None,
                   figures: dict[str, Any] | None = None) -> None:
    """Store arrays (``<name>.npz``, one file), tensors (``torch.save``) and figures as run artifacts.

    Each file is complete before Sacred sees it (written in a temporary folder), so an error
    while writing leaves no half-written artifact.

    Args:
        _run: The Sacred run.
        arrays: ``{artifact name: {array name: array}}`` saved with ``np.savez_compressed``.
        tensors: ``{artifact name: object}`` saved with ``torch.save``.
        figures: ``{artifact name: matplotlib Figure}`` saved with ``savefig`` (format from the name).
    """
    with tempfile.TemporaryDirectory() as tmp:
        items = []
        for name, content in (arrays or {}).items():
            np.savez_compressed(Path(tmp) / name, **content)
            items.append(name)
        for name, obj in (tensors or {}).items():
            torch.save(obj, Path(tmp) / name)
            items.append(name)
        for name, fig in (figures or {}).items():
            fig.savefig(Path(tmp) / name, bbox_inches="tight")
            items.append(name)
        for name in items:
            _run.add_artifact(str(Path(tmp) / name), name=name)


# --------------------------------------------------------------------------- observer


def default_observer(ex: Experiment, default_dir: str) -> Callable[[dict], None]:
    """A Sacred option hook storing runs under ``outputs/<expt_name or default_dir>/`` by default.

    An observer flag (``-F DIR``, ``-m host:port:db``, ...) or an observer already attached takes
    precedence; commands such as ``print_config`` store nothing. Use it as
    ``ex.option_hook(default_observer(ex, "dln"))`` before ``ex.run_commandline()``.

    Args:
        ex: The experiment.
        default_dir: Folder name under ``outputs/`` when the config's ``expt_name`` is None.

    Returns:
        The hook, a function of Sacred's parsed command-line options.
    """

    def observe_by_default(options: dict) -> None:
        if options.get("COMMAND") or any(options.get(flag) for flag in OBSERVER_OPTIONS) or ex.observers:
            return
        updates, named = get_config_updates(options.get("UPDATE") or [])
        name = updates.get("expt_name")
        for scope in (ex.named_configs.get(n) for n in named):
            if name is None and callable(scope):
                name = scope().get("expt_name")
        ex.observers.append(FileStorageObserver(str(Path("outputs") / (name or default_dir))))

    return observe_by_default
