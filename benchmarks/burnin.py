"""Burn-in: what shortens the time to a settled λ̂ on deep linear networks, side by side with plain SGLD.

On cases of the DLN accuracy family (``benchmarks/dln_accuracy.py``: held-out teachers on the most
singular stratum, n = 1e4, batch 500, γ = 1, nβ = n/log n) each method runs with ``num_steps="auto"``
(the stopping rule, ``max_steps`` 64,000) and reports the steps per chain until it settled, λ̂, its
error against Aoyagi's λ, and the wall time:

* ``plain``: ``epsilon="auto"``, 4 chains (the recommended settings);
* ``8 chains``: the same with 8 chains (on a GPU extra chains cost little; R̂ across more chains);
* ``rmsprop``: RMSProp-preconditioned SGLD (``preconditioner="rmsprop"``, decay 0.999, P normalised
  to mean 1) at the ε that ``plain``'s calibration and monitor ended with (auto refuses a preconditioner).

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/burnin.py --cases 6,13,16
"""

import argparse
import time
import warnings

import torch

from benchmarks.dln_accuracy import N, make_case, mse
from models.dln import DLN, SyntheticDLNData
from sgld import estimate_llc


def run(model, data, **kw) -> tuple:
    start = time.perf_counter()
    res = estimate_llc(model, mse, data, num_steps="auto", batch_size=500, seed=0, **kw)
    stop = res.stopping
    return res, stop["total_steps"], stop["settled"], time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="6,13,16")
    args = parser.parse_args()
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print("| case | d | λ | method | steps to settle | settled | λ̂ | rel. err | R̂ | ε | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in (int(c) for c in args.cases.split(",")):
        case = make_case(k)
        model = DLN(case["dims"][0], case["dims"][1:]).set_matrices(case["matrices"])
        data = SyntheticDLNData(model.product(), N, seed=k)
        plain = run(model, data, epsilon="auto", num_chains=4)
        eps = plain[0].epsilon
        rows = [("plain", plain), ("8 chains", run(model, data, epsilon="auto", num_chains=8)),
                ("rmsprop", run(model, data, epsilon=eps, num_chains=4, preconditioner="rmsprop"))]
        for name, (res, steps, settled, wall) in rows:
            lam = case["true_lambda"]
            print(f"| {k} | {case['d']} | {lam:g} | {name} | {steps} | {'yes' if settled else 'no'} | "
                  f"{res.lambdahat:.2f} | {res.lambdahat / lam - 1:+.1%} | {res.rhat:.3f} | {res.epsilon:.2g} | "
                  f"{wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
