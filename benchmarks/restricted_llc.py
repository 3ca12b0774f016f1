"""Restricted (weight-refined) λ̂ of one DLN layer against its exact value: the table in docs/restricted_llc.md.

At a rank-r ``low_rank`` teacher (``models.dln.make_true_params``, teacher seed = depth), sampling layer
k alone with the others at w* is a regular quadratic in W_k whose Hessian has rank
rank(W_N ⋯ W_{k+1}) · rank(W_{k−1} ⋯ W_1) (the input covariance has full rank), so
λ = r·r/2 for a middle layer, r·H₁/2 for the first and H_{N+1}·r/2 for the last. The settings are
those of ``tests/sgld/test_restrict.py``: H₁ = 5, r = 2, n = 2000 (``SyntheticDLNData``, seed 1),
ε = "auto", 3000 steps (600 burn-in), 8 chains, full batch, seed 0::

    PYTHONPATH=. OMP_NUM_THREADS=1 python benchmarks/restricted_llc.py
"""

import time

import torch
from torch import nn

from models.dln import DLN, SyntheticDLNData, make_true_params
from sgld import LLCResult, estimate_llc

INPUT_DIM = 5
RANK = 2
CASES = [([6, 4, 3], k) for k in (1, 2, 3)] + [([6, 5, 4, 3], k) for k in (1, 3, 4)]


def mse(output, target):
    return nn.functional.mse_loss(output, target)


def layer_lambda(input_dim: int, widths: list[int], rank: int, k: int) -> float:
    """Exact λ of sampling layer k (1-based) alone at a rank-r ``low_rank`` teacher.

    Returns:
        rank(W_N ⋯ W_{k+1}) · rank(W_{k−1} ⋯ W_1) / 2: r each, or the identity's full rank at the ends.
    """
    left = widths[-1] if k == len(widths) else rank
    right = input_dim if k == 1 else rank
    return left * right / 2


def restricted_layer_estimate(widths: list[int], k: int) -> LLCResult:
    """λ̂ of layer k alone, with the settings of the module docstring.

    Returns:
        The restricted estimate.
    """
    g = torch.Generator().manual_seed(len(widths))
    model = DLN(INPUT_DIM, widths).set_matrices(make_true_params(INPUT_DIM, widths, "low_rank", rank=RANK,
                                                                  generator=g))
    data = SyntheticDLNData(model.product(), n=2000, seed=1)
    return estimate_llc(model, mse, data, epsilon="auto", num_steps=3000, num_burnin_steps=600, num_chains=8,
                        batch_size="full", seed=0, restrict=f"layers.{k - 1}.weight")


def main() -> None:
    print("| depth | widths | layer k | d sampled | λ exact | λ̂ ± std (8 chains) | error | R̂ | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    for widths, k in CASES:
        start = time.perf_counter()
        res = restricted_layer_estimate(widths, k)
        lam = layer_lambda(INPUT_DIM, widths, RANK, k)
        print(f"| {len(widths)} | {[INPUT_DIM, *widths]} | {k} | {res.num_sampled} | {lam:g} | "
              f"{res.lambdahat:.3f} ± {res.lambdahat_std:.3f} | {(res.lambdahat - lam) / lam:+.1%} | "
              f"{res.rhat:.3f} | {time.perf_counter() - start:.1f} |", flush=True)


if __name__ == "__main__":
    main()
