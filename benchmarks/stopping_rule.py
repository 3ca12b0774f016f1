"""``num_steps="auto"``: where the stopping rule stops, on easy cases and on DLNs that under-mix at 5000 steps.

Each case runs once with today's fixed budget (5000 steps, expt_dln.py's default) and once with
``num_steps="auto"`` (budget ``max_steps``); both with ``epsilon="auto"``, 4 chains, m = 100,
n = 1e4, nβ = n/log n, uniform inputs on [-10, 10] as in expt_dln.py.

For the rand_rank teacher (not on the most singular stratum) λ is Aoyagi's for its rank, a lower
bound on the local λ, not the local λ itself.

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/stopping_rule.py      # ~20 min on one core
"""

import time
import warnings

import torch

from models.dln import DLN, SyntheticDLNData, make_true_params, true_lambda
from models.toy import MinimallySingular, toy_data
from sgld import estimate_llc


def _mse(output, target):
    return ((output - target) ** 2).mean()


def cases():
    """(name, model, loss, data, λ)."""
    ms = MinimallySingular(d=1000, r=2)
    yield "minimally singular d=1000 r=2", ms, ms.loss_fn, toy_data(10_000), 1.0
    for name, input_dim, widths, method, rank, seed in (
        ("DLN 4→4→8→8 low_rank r=1", 4, [4, 8, 8], "low_rank", 1, 0),
        ("DLN 4→4→7→7→7 low_rank r=2", 4, [4, 7, 7, 7], "low_rank", 2, 0),
        # rand_rank seed 0: layer ranks 3, 2, 1, product rank 1, under-mixed at 5000 steps (seed 3 gave
        # rank 0, already within 5% of λ at 5000 steps).
        ("DLN 7→9→6→5 rand_rank", 7, [9, 6, 5], "rand_rank", None, 0),
    ):
        g = torch.Generator().manual_seed(seed)
        model = DLN(input_dim, widths).set_matrices(make_true_params(input_dim, widths, method, rank=rank, generator=g))
        r = torch.linalg.matrix_rank(model.product()).item()
        data = SyntheticDLNData(model.product(), 10_000, seed=1)
        yield f"{name} (rank {r})", model, _mse, data, true_lambda(r, input_dim, widths)[0]


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| case | λ | run | steps | burn-in | λ̂ | quarters | R̂ | stopped because | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model, loss, data, lam in cases():
        for label, kw in (("fixed 5000", dict(num_steps=5000, num_burnin_steps=1000)),
                          ("auto, max 64000", dict(num_steps="auto", max_steps=64_000))):
            start = time.perf_counter()
            res = estimate_llc(model, loss, data, epsilon="auto", num_chains=4, batch_size=100, seed=0, **kw)
            why = res.stopping["reason"] if res.stopping else "fixed budget"
            print(f"| {name} | {lam:.4g} | {label} | {res.num_steps} | {res.num_burnin_steps} | {res.lambdahat:.4g} | "
                  f"{[round(q, 2) for q in res.lambdahat_quarters]} | {res.rhat:.3f} | {why} | "
                  f"{time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
