"""Speed of ``sgld.estimate_llc``: against the limit, chain-by-chain, devinterp 1.3.2, and at scale.

    .venv/bin/python benchmarks/bench_llc.py --quick             # about 2.5 minutes on 2 cores
    .venv/bin/python benchmarks/bench_llc.py                     # about 9 minutes: benchmarks/RESULTS.md
    .venv/bin/python benchmarks/bench_llc.py --parts chains devinterp

Parts (each prints a markdown table):

* ``overhead``: seconds per step of ``estimate_llc`` with one chain over those of a plain
  hand-written SGD loop (forward, backward, w ← w − lr·g) on the same model, batch and data; also
  over that loop plus one ``torch.randn(d)`` a step, the Gaussian draw SGLD cannot avoid.
* ``chains``: chain-steps per second of C chains advanced together (vectorized) and one at a time
  (``chain_batch_size=1``).
* ``devinterp``: wall time and λ̂ of devinterp 1.3.2 at identical settings, run in its own venv
  (``bash benchmarks/setup_devinterp.sh``) as a subprocess; skipped with a note without it.
* ``scaling``: time per step and peak memory as d grows at fixed steps, and as n grows at a fixed
  model, each size in a fresh subprocess so that its peak RSS is its own.

Contenders are timed in one process, interleaved and repeated; tables give medians (of per-repeat
ratios for ratios). torch runs single-threaded by default (``--threads``): on a 2-core machine
shared with other jobs, two OpenMP threads spin against the other jobs and make small steps 10-30x
slower, which would measure the neighbours rather than the code.

The models are deep linear networks (``models.dln``) of 4 square layers of width h, d = 4h², at a
rank-h/4 teacher on the most singular stratum, with y = W* x and x uniform on [−10, 10]^h (the
paper's data), and a ResNet18 of base width 8 on 32×32 images.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from models.dln import DLN, SyntheticDLNData, make_true_params  # noqa: E402
from models.resnet import resnet18  # noqa: E402
from sgld import default_nbeta, estimate_llc  # noqa: E402

DEVINTERP_PYTHON = ROOT / "benchmarks" / ".venv-devinterp" / "bin" / "python"
LAYERS = 4
TIMING_EPSILON = 1e-8  # ε for timing-only runs: far inside the stable range at every size here


def dln(d: int, n: int, seed: int = 0, synthetic: bool = False):
    """A 4-layer square DLN with about d parameters at a rank-h/4 teacher, and its n samples."""
    h = max(2, round(math.sqrt(d / LAYERS)))
    model = DLN(h, [h] * LAYERS)
    g = torch.Generator().manual_seed(seed)
    model.set_matrices(make_true_params(h, [h] * LAYERS, "low_rank", rank=max(1, h // 4), generator=g))
    data = SyntheticDLNData(model.product(), n, seed=seed)
    return model, (data if synthetic else data.get_batch(torch.arange(n)))


def dln_epsilon(model: DLN, n: int) -> float:
    r"""ε for the devinterp comparison: stable for both samplers over the run, not tuned for accuracy.

    ε = min(0.2 / a_max, 0.01 / h): the stiffest direction at w* has ε·a_max ≤ 0.2, with
    a_max ≈ 2nβ·E[x²]·L/h for x uniform on [−10, 10] (E[x²] = 100/3) and orthonormal teacher layers
    (within 10% of ``sgld.calibrate_epsilon``'s power iteration at h = 16 and 50); and one step's
    noise in an h × h layer has spectral norm 2√(εh) ≤ 0.2 (at 0.83, the d = 1e6 DLN's chains
    blow up within 15 steps, devinterp's and ours alike).
    """
    a_max = 2 * default_nbeta(n) * (100 / 3) * LAYERS / model.input_dim
    return min(0.2 / a_max, 0.01 / model.input_dim)


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def fmt_d(d: int) -> str:
    return f"{d:.2g}".replace("e+0", "e").replace("e+", "e")


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def median_ratio(num: list[float], den: list[float]) -> float:
    return float(np.median(np.array(num) / np.array(den)))


# --------------------------------------------------------------------------------------------
# The limit: a plain SGD loop
# --------------------------------------------------------------------------------------------


def sgd_step_time(model, loss_fn, x, y, batch_size: int, steps: int, noise: bool) -> float:
    """Seconds per step of forward, backward and w ← w − lr·g (plus one randn(d) if ``noise``)."""
    model = copy.deepcopy(model).eval()  # eval like estimate_llc: BatchNorm on running statistics
    params = [p for p in model.parameters() if p.requires_grad]
    d = sum(p.numel() for p in params)
    gen = torch.Generator().manual_seed(0)
    buf = torch.empty(d)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=gen)
        loss = loss_fn(model(x.index_select(0, idx)), y.index_select(0, idx))
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p.sub_(g, alpha=1e-12)
        if noise:
            torch.randn(d, generator=gen, out=buf)
    return (time.perf_counter() - start) / steps


def llc_step_time(model, loss_fn, data, batch_size: int, steps: int, chains: int = 1, **kw) -> float:
    """Seconds per chain-step of ``estimate_llc``'s sampling loop (set-up and L_n(w*) excluded)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # short timing runs are not converged: R-hat warnings
        res = estimate_llc(model, loss_fn, data, epsilon=kw.pop("epsilon", TIMING_EPSILON), num_steps=steps,
                           num_chains=chains, batch_size=batch_size, seed=0, **kw)
    return res.wall_time / (steps * chains)


def part_overhead(quick: bool, reps: int) -> str:
    mse, ce = nn.functional.mse_loss, nn.functional.cross_entropy
    cases = []
    for d, m, steps in [(10**4, 100, 300), (10**5, 100, 100), (10**6, 100, 40), (10**6, 500, 10)]:
        if quick and d == 10**6 and m == 500:
            continue
        model, (x, y) = dln(d, 10_000)
        cases.append((f"DLN d={fmt_d(num_params(model))}, m={m}", model, mse, x, y, m, steps))
    g = torch.Generator().manual_seed(0)
    net = resnet18(width_factor=0.125)
    x_img, y_img = torch.randn(512, 3, 32, 32, generator=g), torch.randint(10, (512,), generator=g)
    cases.append((f"ResNet18 w=8 d={fmt_d(num_params(net))}, m=32", net, ce, x_img, y_img, 32, 10 if quick else 20))
    rows = []
    for name, model, loss_fn, x, y, m, steps in cases:
        t = {k: [] for k in ("sgd", "sgd+noise", "llc", "llc mala0")}
        for _ in range(reps):
            t["sgd"].append(sgd_step_time(model, loss_fn, x, y, m, steps, noise=False))
            t["sgd+noise"].append(sgd_step_time(model, loss_fn, x, y, m, steps, noise=True))
            t["llc"].append(llc_step_time(model, loss_fn, (x, y), m, steps))
            t["llc mala0"].append(llc_step_time(model, loss_fn, (x, y), m, steps, mala_every=0))
        rows.append([
            name,
            f"{np.median(t['sgd']) * 1e3:.3g}",
            f"{np.median(t['llc']) * 1e3:.3g}",
            f"**{median_ratio(t['llc'], t['sgd']):.2f}**",
            f"{median_ratio(t['llc mala0'], t['sgd']):.2f}",
            f"{median_ratio(t['sgd+noise'], t['sgd']):.2f}",
            f"{median_ratio(t['llc'], t['sgd+noise']):.2f}",
        ])
        print(f"  overhead {name}: {rows[-1][1:]}", file=sys.stderr, flush=True)
    header = ["model, batch", "SGD ms/step", "λ̂ ms/step", "λ̂ / SGD (target ≤ 1.15)", "λ̂ no MALA / SGD",
              "(SGD + randn(d)) / SGD", "λ̂ / (SGD + randn(d))"]
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# Chains: vectorized against chain-by-chain
# --------------------------------------------------------------------------------------------


def part_chains(quick: bool, reps: int) -> str:
    sizes = [(10**3, 300), (10**5, 30)] + ([] if quick else [(10**6, 8)])
    rows = []
    for d, steps in sizes:
        model, data = dln(d, 10_000)
        for c in (1, 2, 4, 8, 16):
            vec, one = [], []
            for _ in range(reps):
                vec.append(llc_step_time(model, nn.functional.mse_loss, data, 100, steps, chains=c))
                one.append(llc_step_time(model, nn.functional.mse_loss, data, 100, steps, chains=c,
                                         chain_batch_size=1))
            speedup = median_ratio(one, vec)
            target = " (target ≥ 4)" if d == 10**3 and c == 8 else " (target ≥ 1)" if d >= 10**5 else ""
            rows.append([f"{fmt_d(num_params(model))}", str(c), f"{1 / np.median(vec):.0f}",
                         f"{1 / np.median(one):.0f}", f"**{speedup:.2f}**{target}"])
            print(f"  chains {rows[-1]}", file=sys.stderr, flush=True)
    header = ["DLN d (m=100)", "chains", "vectorized chain-steps/s", "chain-by-chain chain-steps/s",
              "speed-up"]
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# devinterp 1.3.2
# --------------------------------------------------------------------------------------------


def run_devinterp(matrices, x, y, settings: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "problem.pt"
        torch.save(dict(matrices=matrices, x=x, y=y, settings=settings), path)
        out = subprocess.run([str(DEVINTERP_PYTHON), str(ROOT / "benchmarks" / "devinterp_driver.py"), str(path)],
                             capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"devinterp driver failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_devinterp(quick: bool, reps: int, threads: int) -> str:
    if not DEVINTERP_PYTHON.exists():
        return "devinterp part skipped: run `bash benchmarks/setup_devinterp.sh` first."
    chains, m, n = 8, 100, 10_000
    sizes = [(10**3, 2000), (10**4, 1000), (10**5, 300), (10**6, 60)]
    if quick:
        sizes = [(10**3, 500), (10**4, 300), (10**5, 100)]
    rows = []
    for d, steps in sizes:
        dln_model, (x, y) = dln(d, n)
        # The model both sides sample: the same bias-free nn.Linear chain as the devinterp driver builds.
        model = nn.Sequential(*dln_model.layers)
        eps, nbeta, gamma = dln_epsilon(dln_model, n), default_nbeta(n), 1.0
        ours, theirs = [], []
        for rep in range(reps):
            start = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # short runs are not converged: R-hat warnings
                res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=eps, gamma=gamma, nbeta=nbeta,
                                   num_steps=steps, num_chains=chains, batch_size=m, seed=rep)
            ours.append((time.perf_counter() - start, res))
            settings = dict(epsilon=eps, nbeta=nbeta, gamma=gamma, batch_size=m, num_chains=chains,
                            num_steps=steps, init_loss=res.init_loss, seed=rep, threads=threads)
            theirs.append(run_devinterp([w.detach() for w in dln_model.matrices()], x, y, settings))
        speedup = median_ratio([t["wall_time"] for t in theirs], [t for t, _ in ours])
        # λ̂ agreement, pooled over repeats: standard error = sd over chains / sqrt(chains).
        lam_o = np.concatenate([r.lambdahat_per_chain for _, r in ours])
        lam_d = np.concatenate([t["lambdahat_per_chain"] for t in theirs])
        se_o, se_d = lam_o.std(ddof=1) / math.sqrt(lam_o.size), lam_d.std(ddof=1) / math.sqrt(lam_d.size)
        diff = lam_o.mean() - lam_d.mean()
        target = 5 if d == 10**3 else 3 if d == 10**4 else 1
        rows.append([
            f"{fmt_d(num_params(model))}", str(steps), f"{eps:.3g}",
            f"{np.median([t for t, _ in ours]):.1f}", f"{np.median([t['wall_time'] for t in theirs]):.1f}",
            f"**{speedup:.1f}×** (≥ {target})",
            f"{lam_o.mean():.4g} ± {se_o:.2g}", f"{lam_d.mean():.4g} ± {se_d:.2g}",
            f"{abs(diff) / math.hypot(se_o, se_d):.1f} ({'yes' if abs(diff) <= se_o + se_d else 'no'})",
        ])
        print(f"  devinterp {rows[-1]}", file=sys.stderr, flush=True)
    header = ["DLN d", "steps", "ε", "ours s", "devinterp s", "speed-up", "λ̂ ours ± se", "λ̂ devinterp ± se",
              "abs(Δ)/√(se²+se²) (abs(Δ) ≤ se+se?)"]
    return table(header, rows)


# --------------------------------------------------------------------------------------------
# Scaling in d and in n
# --------------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def scaling_worker(spec: dict) -> dict:
    """One size, in its own process: time per step and peak RSS growth during estimate_llc."""
    torch.set_num_threads(spec["threads"])
    model, data = dln(spec["d"], spec["n"], synthetic=True)
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak RSS (VmHWM) to the current RSS, so set-up peaks do not count
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    step = llc_step_time(model, nn.functional.mse_loss, data, spec["m"], spec["steps"])
    total = time.perf_counter() - start
    return dict(d=num_params(model), step_s=step, setup_s=total - step * spec["steps"],
                peak_mib=(_status_kib("VmHWM") - before) / 1024)


def _spawn_worker(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--scaling-worker", json.dumps(spec)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def part_scaling(quick: bool, threads: int) -> str:
    m, steps = 100, 20
    sizes = [10**3, 10**4, 10**5, 10**6] + ([] if quick else [10**7])
    rows, per = [], []
    for d in sizes:
        r = _spawn_worker(dict(d=d, n=1000, m=m, steps=steps, threads=threads))
        per.append(r["step_s"] / (r["d"] * m))
        rows.append([fmt_d(r["d"]), "1e3", f"{r['step_s'] * 1e3:.3g}", f"{r['step_s'] / (r['d'] * m) * 1e9:.3g}",
                     f"{r['peak_mib']:.0f}", f"{r['peak_mib'] * 2**20 / (4 * r['d']):.1f}"])
        print(f"  scaling {rows[-1]}", file=sys.stderr, flush=True)
    for n in [10**3, 10**4, 10**5] + ([] if quick else [10**6]):
        r = _spawn_worker(dict(d=10**5, n=n, m=m, steps=steps, threads=threads))
        rows.append([fmt_d(r["d"]), fmt_d(n), f"{r['step_s'] * 1e3:.3g}", f"{r['step_s'] / (r['d'] * m) * 1e9:.3g}",
                     f"{r['peak_mib']:.0f}", f"{r['peak_mib'] * 2**20 / (4 * r['d']):.1f}"])
        print(f"  scaling {rows[-1]}", file=sys.stderr, flush=True)
    header = ["DLN d", "n", "ms/step", "ns per (parameter × sample)", "peak RSS growth MiB",
              "peak / (4 bytes × d)"]
    return table(header, rows)


# --------------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes, steps and repeats (about 2.5 minutes)")
    parser.add_argument("--parts", nargs="+", default=["overhead", "chains", "devinterp", "scaling"],
                        choices=["overhead", "chains", "devinterp", "scaling"])
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads, both sides (default 1)")
    parser.add_argument("--scaling-worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scaling_worker:
        print(json.dumps(scaling_worker(json.loads(args.scaling_worker))))
        return
    torch.set_num_threads(args.threads)
    reps = 3 if args.quick else 5
    print(f"torch {torch.__version__}, {args.threads} thread(s), {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f} at start; {'--quick' if args.quick else 'full run'}\n")
    for part in args.parts:
        start = time.perf_counter()
        if part == "overhead":
            text = part_overhead(args.quick, reps)
        elif part == "chains":
            text = part_chains(args.quick, reps)
        elif part == "devinterp":
            text = part_devinterp(args.quick, 1 if args.quick else 2, args.threads)
        else:
            text = part_scaling(args.quick, args.threads)
        print(f"### {part} ({time.perf_counter() - start:.0f} s, load average {os.getloadavg()[0]:.1f})\n")
        print(text + "\n", flush=True)


if __name__ == "__main__":
    main()
