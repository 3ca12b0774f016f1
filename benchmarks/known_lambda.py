"""Accuracy table: λ̂ against exactly known λ, with the settings of tests/sgld/test_estimate.py and test_calibration.py.

    PYTHONPATH=. .venv/bin/python benchmarks/known_lambda.py        # prints a markdown table (~3 min on 2 cores)
"""

import time
import warnings

import torch

from models.toy import MinimallySingular, NormalCrossing, ReducedRankRegression, rrr_data, toy_data
from sgld import default_nbeta, estimate_llc


def rows():
    nbeta = default_nbeta(10_000)
    for r in (2, 10, 50):
        model = MinimallySingular(d=1000, r=r)
        yield f"minimally singular d=1000 r={r}, ε·2nβ=0.05", model.true_lambda[0], lambda m=model: estimate_llc(
            m, m.loss_fn, toy_data(10_000), epsilon=0.05 / (2 * nbeta), num_steps=2000, num_burnin_steps=200,
            num_chains=4, batch_size=100, seed=0)
        yield f"minimally singular d=1000 r={r}, ε auto", model.true_lambda[0], lambda m=model: estimate_llc(
            m, m.loss_fn, toy_data(10_000), epsilon="auto", num_steps=2000, num_burnin_steps=200,
            num_chains=4, batch_size=100, seed=0)
    for powers in ((1, 2), (1, 3), (1, 4)):
        model = NormalCrossing(powers)
        yield f"normal crossing k={powers}, nβ=1e4, ε=2e-4", model.true_lambda[0], lambda m=model: estimate_llc(
            m, m.loss_fn, toy_data(100), nbeta=1e4, epsilon=2e-4, num_steps=6000, num_burnin_steps=2000,
            num_chains=64, batch_size=1, seed=0, mala_every=0)
    for shape in ((4, 2, 3, 1), (6, 3, 5, 1), (2, 2, 6, 1), (6, 2, 2, 1), (2, 4, 2, 1)):
        model = ReducedRankRegression(*shape, generator=torch.Generator().manual_seed(0))
        data = rrr_data(model, 100_000, noise_std=0.0, seed=1)
        yield f"RRR (M,H,N,r)={shape}, n=1e5, ε auto", model.true_lambda[0], lambda m=model, d=data: estimate_llc(
            m, m.loss_fn, d, epsilon="auto", num_steps=5000, num_burnin_steps=1000, num_chains=4, batch_size=256,
            seed=0)


def main() -> None:
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| model | λ | λ̂ ± std (chains) | rel. error | R̂ | ε | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, lam, run in rows():
        start = time.perf_counter()
        res = run()
        print(f"| {name} | {lam:.4g} | {res.lambdahat:.4g} ± {res.lambdahat_std:.2g} | "
              f"{(res.lambdahat - lam) / lam:+.1%} | {res.rhat:.3f} | {res.epsilon:.3g} | "
              f"{time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
