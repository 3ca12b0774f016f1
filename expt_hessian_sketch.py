"""Sketched top-k Hessian eigenspaces against top-k magnitude masks, the sketch split over many jobs.

The masks study of ``expt_hessian_masks.py`` for networks whose sketch is too big for one job, in
three stages, each a run of this experiment with the same config but ``stage`` (and ``step``,
``blocks``); ``gen_commands_hessian_sketch.py`` writes them as sweep files, ``docs/hessian_sketch.md``
walks through it:

1. ``stage=train``: train the MLP with SGD; at each of ``log_at_steps`` save the parameters into
   ``store_dir`` (``sketch_store.SketchStore``) and as the artifact ``params_step<t>.pt``.
2. ``stage=measure step=<t> blocks=[...]``: the listed blocks of the sketch of the full-data
   Hessian at step t (``sketch_store``: single-pass, every block independent), each written to its
   own file in ``store_dir``. A complete block is skipped, a damaged one redone, a block of another
   step, seed, model or plan refused. One line per SLURM array task.
3. ``stage=solve``: for every step of ``log_at_steps``, check that every block is there (naming the
   missing ones), merge them, solve the core sketch, and log the metrics of
   ``expt_hessian_masks.py`` (``curvature.mask_metrics``): the sketched eigenspace's mask overlaps,
   and with ``compare_exact=True`` (d ≤ 20,000) the exact ones and the sketch's errors.

    python expt_hessian_sketch.py -F outputs/hessian_sketch with stage=train
    python expt_hessian_sketch.py -F outputs/hessian_sketch with stage=measure step=100 'blocks=[0, 6, 12]'

Metrics of ``solve`` at each step: ``overlap/sketch/k<k>``, ``geodesic/sketch/k<k>``,
``overlap/random/k<k>``, ``sketch/top_eigenvalue``; with ``compare_exact`` also
``overlap/exact/k<k>``, ``geodesic/exact/k<k>``, ``sketch/eig_rel_error/k<k>``,
``sketch/subspace_geodesic/k<k>`` and ``top_eigenvalue``. Info: per step the eigenvalues, times and
the process's peak RSS (``peak_rss_mib``, every stage). The eigenpairs go to the store
(``SketchStore.save_eigenpairs``).
"""

import resource
import time
from dataclasses import dataclass

import torch
from torch import nn

import curvature
import data

# Sacred's Experiment comes through experiment.py, which first silences Sacred's pkg_resources warning.
from experiment import (
    Experiment,
    TrainingConfig,
    default_observer,
    device_info,
    generators,
    is_int,
    make_optimizer,
    parse,
    require,
    resolve_device,
)
from models.mlp import MLP
from sketch_store import BlockHeader, SketchPlan, SketchStore, measure_block, sketch_seed, solve_sketch

__all__ = ["INPUT_DIMS", "STAGES", "SketchConfig", "ex"]

STAGES = ("train", "measure", "solve")
INPUT_DIMS = {"digits": 64, "mnist1d": 40}  # data sets (10 classes) and their input sizes

ex = Experiment("hessian_sketch")


@dataclass(frozen=True)
class SketchConfig:
    """``sketch_config``: s outer measurements, s_i > s core measurements, b columns per block."""

    num_measurements: int
    num_inner: int
    block_size: int

    def __post_init__(self) -> None:
        for key in ("num_measurements", "num_inner", "block_size"):
            value = getattr(self, key)
            require(is_int(value) and value >= 1, f"sketch_config.{key} must be an int >= 1, got {value!r}")
        require(self.num_inner > self.num_measurements,
                f"sketch_config.num_inner must exceed num_measurements={self.num_measurements} (the oversampled "
                f"recovery), got {self.num_inner}")


@ex.config
def config():
    """MLP 64 → 93 → 10 (6,985 parameters) on 1,000 digits, four steps, s = 300 outer and 600 core measurements."""
    expt_name = None  # run name; runs go to outputs/<expt_name or 'hessian_sketch'>/
    stage = "train"  # train | measure | solve
    data_name = "digits"  # digits | mnist1d: the training set, whose full-data Hessian is sketched
    num_data = 1000  # n, training samples (the Hessian's data too)
    hidden_widths = [93]  # ReLU hidden layers; d = 75·93 + 10 on digits
    training_config = {
        "optim": "sgd",  # sgd | adam
        "learning_rate": 0.05,  # step size
        "momentum": 0.0,  # plain SGD
        "batch_size": 64,  # minibatch
        "num_steps": 2000,  # training steps
    }
    log_at_steps = [0, 100, 500, 2000]  # steps whose parameters are saved and whose Hessian is sketched
    sketch_config = {
        "num_measurements": 300,  # s, outer measurements H Ω (≥ max k)
        "num_inner": 600,  # s_i > s, core measurements Ψᵀ H Φ
        "block_size": 50,  # b, measurements per block (per file, per draw of Ω or Φ)
    }
    store_dir = f"outputs/{expt_name or 'hessian_sketch'}_store"  # shared folder of parameters and blocks
    step = None  # measure: the saved step whose Hessian is measured
    blocks = "all"  # measure: block indices (outer blocks first), or "all"
    ks = [5, 20, 50, 100]  # solve: sizes k of the eigenspace and of the mask
    compare_exact = True  # solve: also the exact top-k (forms H: d products, d ≤ 20,000) and the sketch's errors
    device = "cpu"  # cpu | cuda | cuda:<i> | auto
    seed = 0  # root of all randomness: initialisation, minibatches, data subsample, sketch


@ex.capture
def check_setup(training: TrainingConfig, sketch: SketchConfig, stage, data_name, num_data, hidden_widths,
                log_at_steps, step, ks, compare_exact) -> None:
    """Validate the top-level config (the blocks are checked against the plan in ``measure``).

    Raises:
        ValueError: Naming the bad key and value.
    """
    require(stage in STAGES, f"unknown stage {stage!r}; choose from {list(STAGES)}")
    require(data_name in INPUT_DIMS, f"unknown data_name {data_name!r}; choose from {sorted(INPUT_DIMS)}")
    require(is_int(num_data) and num_data >= 1, f"num_data must be an int >= 1, got {num_data!r}")
    require(isinstance(hidden_widths, list) and all(is_int(h) and h >= 1 for h in hidden_widths),
            f"hidden_widths must be a list of ints >= 1, got {hidden_widths!r}")
    require(isinstance(log_at_steps, list) and log_at_steps and len(set(log_at_steps)) == len(log_at_steps)
            and all(is_int(t) and 0 <= t <= training.num_steps for t in log_at_steps),
            f"log_at_steps must be a list of distinct ints in [0, training_config.num_steps={training.num_steps}], "
            f"got {log_at_steps!r}")
    require(stage != "measure" or step in log_at_steps,
            f"stage=measure needs step, one of log_at_steps={log_at_steps}, got step={step!r}")
    require(isinstance(ks, list) and ks and all(is_int(k) and 1 <= k <= sketch.num_measurements for k in ks),
            f"ks must be a list of ints in [1, sketch_config.num_measurements={sketch.num_measurements}], got {ks!r}")
    require(isinstance(compare_exact, bool), f"compare_exact must be true or false, got {compare_exact!r}")


@ex.capture
def setup(dev: torch.device, data_name, num_data, hidden_widths, seed) -> tuple[nn.Module, tuple, dict]:
    """The data, the MLP at its initialisation, and the description its model hash covers.

    Returns:
        (model, (x, y) on ``dev``, spec).
    """
    d = data.load(data_name, ptr=num_data, seed=seed)
    model = MLP(INPUT_DIMS[data_name], hidden_widths, d.num_classes)
    (g_init,) = generators(seed, 1)
    with torch.no_grad():  # PyTorch's default init, U(±1/√fan_in), drawn from Sacred's root seed
        for layer in (m for m in model.modules() if isinstance(m, nn.Linear)):
            bound = layer.in_features ** -0.5
            for p in layer.parameters():
                p.copy_(torch.rand(p.shape, generator=g_init) * 2 * bound - bound)
    spec = {"data_name": data_name, "num_data": num_data, "data_seed": seed, "hidden_widths": list(hidden_widths),
            "model_dim": sum(p.numel() for p in model.parameters())}
    return model.to(dev), (d.x_train.to(dev), d.y_train.to(dev)), spec


@ex.capture
def make_plan(sketch: SketchConfig, dim: int, step: int, seed) -> SketchPlan:
    """The sketch at a step: its sizes, and its seed from (seed, step).

    Returns:
        The plan.
    """
    return SketchPlan(dim, sketch.num_measurements, sketch.num_inner, sketch.block_size, sketch_seed(seed, step))


@ex.capture
def train(_run, model: nn.Module, xy: tuple, training: TrainingConfig, store: SketchStore, spec: dict,
          log_at_steps, seed) -> dict:
    """SGD on minibatches; the parameters at each of ``log_at_steps`` into the store and the run's artifacts.

    Returns:
        ``{str(step): model hash}`` (string keys, as JSON stores them).
    """
    x, y = xy
    _, g_batch = generators(seed, 2)
    opt = make_optimizer(model.parameters(), training)
    hashes = {}
    for t in range(training.num_steps + 1):
        if t in log_at_steps:
            hashes[str(t)] = store.save_params(t, spec, curvature.flat_params(model))
            _run.add_artifact(str(store.params_path(t)), name=f"params_step{t}.pt")
        if t == training.num_steps:
            break
        idx = torch.randint(len(x), (training.batch_size,), generator=g_batch).to(x.device)
        loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t % 10 == 0:
            _run.log_scalar("train/loss", loss.item(), t)
    return hashes


def hessian_at(model: nn.Module, xy: tuple, w: torch.Tensor):
    """Load the flat parameters w into the model and return its full-data cross-entropy Hessian.

    Returns:
        ``curvature.hessian_operator`` at w.
    """
    torch.nn.utils.vector_to_parameters(w.to(next(model.parameters()).device), model.parameters())
    return curvature.hessian_operator(model, nn.functional.cross_entropy, xy)


@ex.capture
def measure(_run, model: nn.Module, xy: tuple, sketch: SketchConfig, store: SketchStore, spec: dict,
            step, blocks, seed) -> dict:
    """Compute the listed blocks of the sketch at ``step`` that the store lacks; skip the complete ones.

    Returns:
        ``{"step", "computed", "skipped", "redone"}`` (block indices; "redone" were damaged).

    Raises:
        ValueError: For a bad ``blocks``, or a block of another sketch in the store.
    """
    w, hash_ = store.load_params(step, spec)
    plan = make_plan(sketch, w.numel(), step)
    todo = list(range(plan.num_blocks)) if blocks == "all" else blocks
    require(isinstance(todo, list) and todo and len(set(todo)) == len(todo)
            and all(is_int(i) and 0 <= i < plan.num_blocks for i in todo),
            f"blocks must be 'all' or a list of distinct ints in [0, {plan.num_blocks}) (this sketch's "
            f"blocks), got {blocks!r}")
    headers = [BlockHeader.expected(plan, step, seed, hash_, i) for i in todo]
    status = {h.index: store.block_status(h) for h in headers}  # refuses foreign blocks before any work
    H = hessian_at(model, xy, w)
    done = {"step": step, "computed": [], "skipped": [], "redone": []}
    for h in headers:
        if status[h.index] == "complete":
            done["skipped"].append(h.index)
            continue
        if status[h.index] != "missing":
            print(f"block {h.index} of step {step} is {status[h.index]}; computing it again")
            done["redone"].append(h.index)
        t0 = time.perf_counter()
        store.write_block(h, measure_block(H, plan, h.index))
        _run.log_scalar("measure/block_time_s", time.perf_counter() - t0, h.index)
        done["computed"].append(h.index)
    return done


@ex.capture
def solve(_run, model: nn.Module, xy: tuple, sketch: SketchConfig, store: SketchStore, spec: dict,
          log_at_steps, ks, compare_exact, seed) -> list[dict]:
    """Merge each step's blocks, solve the sketch, log the masks study's metrics.

    Returns:
        One record per step: eigenvalues, times and ``curvature.mask_metrics``' per-k record.

    Raises:
        ValueError: Naming the missing blocks of every step, before any solve.
    """
    params = {t: store.load_params(t, spec) for t in log_at_steps}
    plans = {t: make_plan(sketch, spec["model_dim"], t) for t in log_at_steps}
    missing = [f"step {t}: blocks {absent}" for t in log_at_steps
               if (absent := [i for i in range(plans[t].num_blocks) if not store.block_path(t, i).exists()])]
    require(not missing, f"blocks missing in {store.root}: {'; '.join(missing)}. Run their measurement lines "
                         "(python sweep.py slurm FILE; --retry-failed for failed ones) before solving")
    require(not compare_exact or spec["model_dim"] <= curvature.MAX_DENSE_DIM,
            f"compare_exact=True forms the dense Hessian, d={spec['model_dim']} > {curvature.MAX_DENSE_DIM}; "
            "set compare_exact=False")
    records = []
    for t in log_at_steps:
        (w, hash_), plan = params[t], plans[t]
        t0 = time.perf_counter()
        outer, inner = store.load_sketch([BlockHeader.expected(plan, t, seed, hash_, i)
                                          for i in range(plan.num_blocks)], plan)
        t1 = time.perf_counter()
        vals, vecs = solve_sketch(plan, outer, inner, max(ks))
        del outer, inner
        rec = {"step": t, "model_hash": hash_, "load_time_s": t1 - t0, "solve_time_s": time.perf_counter() - t1,
               "eigenvalues": vals.tolist()}
        store.save_eigenpairs(t, hash_, vals, vecs)
        exact = None
        if compare_exact:
            t0 = time.perf_counter()
            exact = curvature.top_eigs_exact(curvature.full_hessian(hessian_at(model, xy, w)), max(ks))
            rec["exact_time_s"] = time.perf_counter() - t0
        metrics, rec["k"] = curvature.mask_metrics(w, ks, (vals, vecs), exact)
        for key, value in metrics.items():
            _run.log_scalar(key, value, t)
        records.append(rec)
    return records


@ex.main
def run(_run, stage, training_config, sketch_config, store_dir, device) -> dict:
    """Run one stage: train, measure blocks at a step, or merge and solve.

    Returns:
        ``{"stage", "model_dim", "peak_rss_mib"}`` and the stage's result.
    """
    training = parse(TrainingConfig, "training_config", training_config)
    sketch = parse(SketchConfig, "sketch_config", sketch_config)
    check_setup(training, sketch)
    dev = resolve_device(device)
    _run.info.update(device_info(dev))
    model, xy, spec = setup(dev)
    store = SketchStore(store_dir)
    if stage == "train":
        out = {"model_hashes": train(_run, model, xy, training, store, spec)}
    elif stage == "measure":
        out = measure(_run, model, xy, sketch, store, spec)
    else:
        _run.info["per_step"] = solve(_run, model, xy, sketch, store, spec)
        out = {"log_at_steps": [r["step"] for r in _run.info["per_step"]]}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB
    _run.info.update(model_dim=spec["model_dim"], peak_rss_mib=peak)
    return {"stage": stage, "model_dim": spec["model_dim"], "peak_rss_mib": peak, **out}


observe_by_default = default_observer(ex, "hessian_sketch")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
