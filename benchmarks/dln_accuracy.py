"""DLN accuracy benchmark: λ̂ with the defaults a user would type, against Aoyagi's λ and full-batch MALA.

A documented, seeded family of random deep linear networks that our teacher generator
(``models.dln.make_true_params``) does not draw: every teacher sits on the most singular stratum of
its rank (every layer has the product's rank r, so Aoyagi's λ is the local λ), but the layers'
nonzero singular values are spread (log-uniform in [1/√2, √2] per layer) instead of all 1.

Case k (``np.random.default_rng([2026, k])``):

* depth N uniform in {2, …, 8} weight matrices; H₁, …, H_{N+1} log-uniform integers in [2, 60];
  rank r uniform in {0, …, min_k H_k};
* ``stratum`` (3 cases in 4): W_k = Q_{k+1} S_k O_k Q_kᵀ, Q_k ∈ ℝ^{H_k × r} Haar-random orthonormal
  columns, O_k Haar-random orthogonal r × r, S_k diagonal log-uniform in [1/√2, √2];
* ``rand_rank moved`` (every 4th case): a ``rand_rank`` teacher's product W* = U Σ Vᵀ (rank r, usually
  with layers of higher rank, i.e. *off* the stratum) refactored onto it:
  W₁ = Q₂ Σ^{1/N} V_rᵀ, W_k = Q_{k+1} Σ^{1/N} Q_kᵀ, W_N = U_r Σ^{1/N} Q_Nᵀ (the same function);
* data: ``SyntheticDLNData`` (x uniform on [−10, 10], y = W* x), n = 1e4, nβ = n/log n, γ = 1.

Per case, ``estimate_llc(model, mse, data, epsilon="auto", num_steps="auto", num_chains=4,
batch_size=500, seed=0)`` — the settings the README recommends — and, where d ≤ ``--mala-max-d``,
``mala_estimate_llc`` at the same nβ, γ and w* (the exact posterior mean at that nβ, up to
mixing), at twice SGLD's final ε.

Each finished case is appended to ``--out`` (JSON lines), and a rerun skips cases already there,
so the benchmark can be run in pieces:

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/dln_accuracy.py --out benchmarks/results/dln_accuracy.jsonl
    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/dln_accuracy.py --cases 0-7 --max-d 2000 --out ...
    PYTHONPATH=. python benchmarks/dln_accuracy.py --report benchmarks/results/dln_accuracy.jsonl

``--report`` prints the Markdown table and the targets (SGLD within 3% of MALA; every run settled;
median steps ≤ 16,000, none over 64,000; mean |error| ≤ 5% and worst ≤ 10% against Aoyagi's λ) and
draws ``figures/llc_vs_true.png`` (λ̂ against λ coloured by d, with the error histogram).
"""

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from models.dln import DLN, SyntheticDLNData, dln_ranks, make_true_params, true_lambda
from sgld import estimate_llc, mala_estimate_llc

NUM_CASES = 32
N = 10_000
SV_SPREAD = math.sqrt(2)  # per-layer singular values log-uniform in [1/SV_SPREAD, SV_SPREAD]


def mse(output, target):
    return ((output - target) ** 2).mean()


def _orthonormal(rows: int, cols: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(rows, max(cols, 1), generator=g, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r)))[:, :cols]


def _log_uniform(low: float, high: float, size, rng: np.random.Generator) -> np.ndarray:
    return np.exp(rng.uniform(math.log(low), math.log(high), size))


def make_case(k: int) -> dict:
    """Case k of the family: dims, rank, kind and the teacher's layer matrices (float32)."""
    rng = np.random.default_rng([2026, k])
    depth = int(rng.integers(2, 9))
    dims = [int(round(v)) for v in _log_uniform(2, 60, depth + 1, rng)]
    rank = int(rng.integers(0, min(dims) + 1))
    kind = "rand_rank moved" if k % 4 == 3 else "stratum"
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    if kind == "rand_rank moved":
        layers = make_true_params(dims[0], dims[1:], "rand_rank", generator=g)
        product = DLN(dims[0], dims[1:]).set_matrices(layers).product().double()
        u, s, vh = torch.linalg.svd(product)
        rank = int((s > s[0] * 1e-6).sum()) if s.numel() and s[0] > 0 else 0
        root = s[:rank] ** (1 / depth)
        qs = [vh[:rank].T] + [_orthonormal(h, rank, g) for h in dims[1:-1]] + [u[:, :rank]]
        mats = [(qs[i + 1] * root) @ qs[i].T for i in range(depth)]
    else:
        qs = [_orthonormal(h, rank, g) for h in dims]
        mats = []
        for i in range(depth):
            o = _orthonormal(rank, rank, g)
            sv = torch.from_numpy(_log_uniform(1 / SV_SPREAD, SV_SPREAD, rank, rng))
            mats.append(qs[i + 1] @ (sv[:, None] * o) @ qs[i].T)
    mats = [m.float() for m in mats]
    lam, mult = true_lambda(rank, dims[0], dims[1:])
    d = sum(a * b for a, b in zip(dims[:-1], dims[1:], strict=True))
    return dict(case=k, kind=kind, dims=dims, rank=rank, d=d, true_lambda=lam, multiplicity=mult, matrices=mats)


def _mala(model, data, sgld_epsilon: float, steps: int, seed: int) -> dict:
    """Full-batch MALA at twice SGLD's final ε, for ``steps`` steps (half burn-in).

    MALA's λ̂ has no step-size bias whatever ε is; ε only sets how fast it mixes. A pilot from w*
    tunes ε where the chains start, which at a singular w* is far flatter than where they go (at
    w* = 0 a pilot-tuned ε gave 4% acceptance later); SGLD's final ε was checked along its chains.
    """
    eps = 2 * sgld_epsilon
    res = mala_estimate_llc(model, mse, data, epsilon=eps, num_steps=steps, num_chains=4, seed=seed,
                            num_burnin_steps=steps // 2)
    return dict(mala_lambdahat=res.lambdahat, mala_std=res.lambdahat_std, mala_epsilon=eps,
                mala_acceptance=res.mala_acceptance, mala_rhat=res.rhat, mala_steps=steps,
                mala_quarters=res.lambdahat_quarters, mala_seconds=res.wall_time)


def run_case(case: dict, mala_max_d: int, mala_steps: int) -> dict:
    model = DLN(case["dims"][0], case["dims"][1:]).set_matrices(case["matrices"])
    data = SyntheticDLNData(model.product(), N, seed=case["case"])
    start = time.perf_counter()
    res = estimate_llc(model, mse, data, epsilon="auto", num_steps="auto", num_chains=4, batch_size=500, seed=0)
    wall = time.perf_counter() - start
    stop = res.stopping
    row = {k: v for k, v in case.items() if k != "matrices"}
    row.update(
        layer_ranks=dln_ranks(case["matrices"])[1], lambdahat=res.lambdahat, lambdahat_std=res.lambdahat_std,
        rel_error=res.lambdahat / case["true_lambda"] - 1 if case["true_lambda"] else float("nan"),
        rhat=res.rhat, quarters=res.lambdahat_quarters, epsilon=res.epsilon, settled=stop["settled"],
        reason=stop["reason"], steps=stop.get("total_steps", res.num_steps), burnin=res.num_burnin_steps,
        epsilon_changes=len(stop.get("epsilon_changes", [])), diverged=res.diverged, wall_seconds=wall,
        calibration_seconds=res.calibration_seconds,
    )
    if case["d"] <= mala_max_d:
        row.update(_mala(model, data, res.epsilon, mala_steps, seed=1))
    return row


def _parse_cases(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def report(path: Path, figure: Path | None) -> None:
    rows = sorted((json.loads(line) for line in path.read_text().splitlines() if line.strip()), key=lambda r: r["case"])
    print("| case | kind | dims | r | d | λ | SGLD λ̂ ± sd | rel. err | R̂ | quarters | ε | ε changes | steps | "
          "settled | MALA λ̂ | SGLD/MALA − 1 | wall s |")
    print("| " + " | ".join(["---"] * 17) + " |")
    for r in rows:
        mala = r.get("mala_lambdahat")
        vs = f"{r['lambdahat'] / mala - 1:+.1%}" if mala else "—"
        mala_text = f"{mala:.2f} (R̂ {r['mala_rhat']:.2f}, {r['mala_steps']} steps)" if mala else "—"
        print(f"| {r['case']} | {r['kind']} | {'→'.join(map(str, r['dims']))} | {r['rank']} | {r['d']} | "
              f"{r['true_lambda']:g} | {r['lambdahat']:.2f} ± {r['lambdahat_std']:.2f} | {r['rel_error']:+.1%} | "
              f"{r['rhat']:.3f} | {[round(q, 1) for q in r['quarters']]} | {r['epsilon']:.2g} | "
              f"{r['epsilon_changes']} | "
              f"{r['steps']} | {'yes' if r['settled'] else 'no'} | {mala_text} | {vs} | "
              f"{r['wall_seconds']:.0f} |")
    errs = np.array([abs(r["rel_error"]) for r in rows if r["true_lambda"] > 0])
    vs_mala = np.array([abs(r["lambdahat"] / r["mala_lambdahat"] - 1) for r in rows if r.get("mala_lambdahat")])
    steps = np.array([r["steps"] for r in rows])
    print(f"\ncases {len(rows)}; settled {sum(r['settled'] for r in rows)}/{len(rows)}")
    print(f"steps: median {np.median(steps):.0f} (target ≤ 16000), max {steps.max()} (target ≤ 64000)")
    print(f"vs Aoyagi (λ > 0): mean |err| {errs.mean():.1%} (target ≤ 5%), worst {errs.max():.1%} (target ≤ 10%)")
    if vs_mala.size:
        print(f"vs MALA ({vs_mala.size} cases): mean |diff| {vs_mala.mean():.1%}, worst {vs_mala.max():.1%} "
              f"(target ≤ 3% each)")
    if figure is not None:
        import pandas as pd

        import plots

        frame = pd.DataFrame(dict(true_lambda=[r["true_lambda"] for r in rows],
                                  lambdahat=[r["lambdahat"] for r in rows],
                                  lambdahat_std=[r["lambdahat_std"] for r in rows],
                                  model_dim=[r["d"] for r in rows]))
        fig = plots.llc_vs_true(frame)
        for path in (figure, figure.with_suffix(".pdf")):
            fig.savefig(path, dpi=150, bbox_inches="tight")
            print(f"wrote {path}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/dln_accuracy.jsonl"))
    parser.add_argument("--cases", default=f"0-{NUM_CASES - 1}", help="e.g. 0-7,12")
    parser.add_argument("--max-d", type=int, default=10**9, help="skip cases with more parameters (CPU budget)")
    parser.add_argument("--mala-max-d", type=int, default=5000)
    parser.add_argument("--mala-steps", type=int, default=20_000)
    parser.add_argument("--list", action="store_true", help="print the family and exit")
    parser.add_argument("--report", type=Path, help="print the table of a results file and exit")
    parser.add_argument("--figure", type=Path, default=None, help="with --report: write the headline figure")
    args = parser.parse_args(argv)
    if args.report:
        report(args.report, args.figure)
        return
    torch.set_num_threads(1)
    done = set()
    if args.out.exists():
        done = {json.loads(line)["case"] for line in args.out.read_text().splitlines() if line.strip()}
    for k in _parse_cases(args.cases):
        case = make_case(k)
        if args.list:
            print(k, case["kind"], case["dims"], f"r={case['rank']}", f"d={case['d']}", f"λ={case['true_lambda']}")
            continue
        if k in done or case["d"] > args.max_d:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            row = run_case(case, args.mala_max_d, args.mala_steps)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"case {k}: d={row['d']} λ={row['true_lambda']} λ̂={row['lambdahat']:.2f} ({row['rel_error']:+.1%}) "
              f"steps={row['steps']} {row['reason']} mala={row.get('mala_lambdahat')} {row['wall_seconds']:.0f}s",
              file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
