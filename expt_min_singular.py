"""λ̂ against rank(Hess)/2 on minimally singular models (``models.toy.MinimallySingular``), as a Sacred experiment.

The potential K(w) = Σ_{i ≤ r} w_i² among d parameters is a positive-definite quadratic form in r of
them and flat in the rest, so rank ∇²K(w*) = r and λ = r/2 (Watanabe 2009, Thm 6.1). For each r
in ``ranks`` the run measures λ̂ with SGLD and, with ``curvature.py``, the Hessian's rank
(``rank_method``; the sketch too where it is affordable), its trace (Hutchinson) and its top
eigenvalues (Lanczos).

    python expt_min_singular.py -F outputs/min_singular
    python expt_min_singular.py -F outputs/min_singular with d=1000 'ranks=[10, 100]' sgld_config.num_steps=1000

Recorded: metrics ``lambdahat``, ``lambdahat_std``, ``hessian_rank``, ``hessian_rank_sketch``,
``hessian_trace``, ``top_eigenvalue`` and ``wall_time_s`` at step r, and in the info ``per_rank``,
one dict per r (λ̂ and all its diagnostics, the rank records, trace ± standard error, top
eigenvalues, wall times).
"""

import math
import time

import torch

import curvature

# Sacred's Experiment comes through experiment.py, which first silences Sacred's pkg_resources warning.
from experiment import (
    Experiment,
    SGLDConfig,
    check_common,
    default_observer,
    device_info,
    generators,
    int_seed,
    is_int,
    parse,
    progress,
    require,
    resolve_device,
    sgld_kwargs,
)
from models.toy import MinimallySingular, toy_data
from sgld import estimate_llc

__all__ = ["ex"]

ex = Experiment("min_singular")


@ex.config
def config():
    """Defaults: d = 1e5 parameters, r from 10 to d, n = 1e4, ε·2nβ = 0.05 (the stiffest direction's step)."""
    expt_name = None  # run name; the default observer stores runs in outputs/<expt_name or 'min_singular'>/
    d = 100_000  # number of parameters
    ranks = [10, 100, 1000, 10_000, 100_000]  # r values, each ≤ d: λ = r/2
    num_training_data = 10_000  # n (the potential ignores the data; n fixes nβ)
    itemp = 1 / math.log(num_training_data)  # β, inverse temperature; nβ = n · itemp
    sgld_config = {
        "epsilon": 0.05 / (2 * num_training_data * itemp),  # ε, SGLD step size: ε·a = 0.05 along the curvature a = 2nβ
        "gamma": 1.0,  # γ, localization strength
        "num_steps": 3000,  # SGLD steps per chain, burn-in included
        "num_chains": 4,  # chains
        "batch_size": 100,  # m
        "num_burnin_steps": 500,  # leading steps left out of λ̂
    }
    rank_method = "slq"  # hessian_rank method: slq | sketch | dense (curvature.hessian_rank)
    rank_rtol = 1e-5  # eigenvalues with |λ| ≤ rank_rtol·max|λ| count as zero
    max_sketch = 2048  # also the certified sketch rank where rank ≤ this (O(d·s²) work); 0 = never
    num_top_eigs = 5  # top eigenvalues by Lanczos
    trace_probes = 20  # Hutchinson probes
    device = "auto"  # auto | cpu | cuda | cuda:<i>
    seed = 0  # root of all randomness
    verbose = False  # progress bars off a terminal too


@ex.capture
def check_setup(expt_name, d, ranks, num_training_data, itemp, rank_method, max_sketch, num_top_eigs,
                trace_probes) -> None:
    """Validate the top-level config before any work.

    Raises:
        ValueError: Naming the bad key and value.
    """
    check_common(expt_name, itemp=itemp)
    require(is_int(d) and d >= 2, f"d must be an int >= 2, got {d!r}")
    require(is_int(num_training_data) and num_training_data >= 2,
            f"num_training_data must be an int >= 2, got {num_training_data!r}")
    require(isinstance(ranks, list) and ranks and all(is_int(r) and 1 <= r <= d for r in ranks),
            f"ranks must be a non-empty list of ints in [1, d={d}], got {ranks!r}")
    require(rank_method in curvature.RANK_METHODS,
            f"unknown rank_method {rank_method!r}; choose from {list(curvature.RANK_METHODS)}")
    require(is_int(max_sketch) and max_sketch >= 0, f"max_sketch must be an int >= 0, got {max_sketch!r}")
    require(is_int(num_top_eigs) and 1 <= num_top_eigs < d, f"num_top_eigs must be in [1, d), got {num_top_eigs!r}")
    require(is_int(trace_probes) and trace_probes >= 2, f"trace_probes must be an int >= 2, got {trace_probes!r}")


@ex.capture
def measure(r: int, sgld: SGLDConfig, dev: torch.device, gen: torch.Generator, d, num_training_data, itemp,
            rank_method, rank_rtol, max_sketch, num_top_eigs, trace_probes, verbose) -> dict:
    """λ̂, rank, trace and top eigenvalues for one r.

    Returns:
        The record of this r (JSON-ready).
    """
    model = MinimallySingular(d, r).to(dev)
    data = tuple(t.to(dev) for t in toy_data(num_training_data))
    t0 = time.perf_counter()
    res = estimate_llc(model, model.loss_fn, data, **sgld_kwargs(sgld), nbeta=num_training_data * itemp,
                       seed=int_seed(gen), progress=progress(verbose))
    t_llc = time.perf_counter() - t0
    H = curvature.hessian_operator(model, model.loss_fn, data)
    t0 = time.perf_counter()
    rank = curvature.hessian_rank(H, method=rank_method, rtol=rank_rtol, seed=int_seed(gen) % 2**31,
                                  generator=gen)
    t_rank = time.perf_counter() - t0
    sketch = None
    if max_sketch and rank.rank + 5 * rank.std_error + curvature.SKETCH_OVERSAMPLING <= max_sketch \
            and rank_method != "sketch":
        t0 = time.perf_counter()
        sketch = curvature.hessian_rank(H, method="sketch", rtol=rank_rtol, max_sketch=max_sketch).to_dict()
        sketch["wall_time_s"] = time.perf_counter() - t0
    trace = curvature.hutchinson_trace(H, trace_probes, gen)
    top, _ = curvature.top_eigs_lanczos(H, min(num_top_eigs, d - 1))
    return dict(r=r, true_lambda=r / 2, **res.to_dict(), llc_wall_time_s=t_llc, hessian_rank=rank.rank,
                rank_info={**rank.to_dict(), "wall_time_s": t_rank}, sketch_rank_info=sketch,
                hessian_trace=trace.to_dict(), top_eigenvalues=[float(v) for v in top],
                relative_error=(res.lambdahat - r / 2) / (r / 2))


@ex.main
def run(_run, sgld_config, ranks, device, seed) -> dict:
    """For each r: model → λ̂ → rank, trace, top eigenvalues → metrics at step r.

    Returns:
        ``{"ranks", "lambdahat", "hessian_rank"}``, the last two as lists with one entry per r.
    """
    sgld = parse(SGLDConfig, "sgld_config", sgld_config)
    check_setup()
    dev = resolve_device(device)
    _run.info.update(device_info(dev))
    per_rank = []
    for r, gen in zip(ranks, generators(seed, len(ranks)), strict=True):
        t0 = time.perf_counter()
        rec = measure(r, sgld, dev, gen)
        rec["wall_time_s"] = time.perf_counter() - t0
        per_rank.append(rec)
        _run.info["per_rank"] = per_rank  # complete records so far, for an interrupted run
        sketch_rank = rec["sketch_rank_info"]["rank"] if rec["sketch_rank_info"] else float("nan")
        for key, value in (("lambdahat", rec["lambdahat"]), ("lambdahat_std", rec["lambdahat_std"]),
                           ("hessian_rank", rec["hessian_rank"]), ("hessian_rank_sketch", sketch_rank),
                           ("hessian_trace", rec["hessian_trace"]["estimate"]),
                           ("top_eigenvalue", rec["top_eigenvalues"][0]), ("wall_time_s", rec["wall_time_s"])):
            _run.log_scalar(key, float(value), r)
        print(f"r = {r:>6}: rank(Hess) = {rec['hessian_rank']} ({rec['rank_info']['method']}), r/2 = {r / 2:g}, "
              f"λ̂ = {rec['lambdahat']:.4g} ± {rec['lambdahat_std']:.2g} ({rec['relative_error']:+.1%}), "
              f"{rec['wall_time_s']:.1f} s")
    return dict(ranks=ranks, lambdahat=[p["lambdahat"] for p in per_rank],
                hessian_rank=[p["hessian_rank"] for p in per_rank])


observe_by_default = default_observer(ex, "min_singular")


if __name__ == "__main__":
    ex.option_hook(observe_by_default)
    ex.run_commandline()
