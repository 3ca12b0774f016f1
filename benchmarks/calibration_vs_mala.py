"""Does ``epsilon="auto"`` keep its promise? Its λ̂ against full-batch MALA's (no step-size bias).

For each model, ``estimate_llc(epsilon="auto")`` and ``mala_estimate_llc`` sample the same localized
posterior (same nβ = n/log n, γ = 1, w*); MALA's Metropolis correction leaves no step-size bias, so
the relative difference of the two λ̂ is SGLD's bias at the calibrated ε. The table prints it beside
the calibration's ``predicted_relative_bias`` and the standard error of the difference (from the
spread over chains), so "agrees within a factor of two" can be read against the noise.

    PYTHONPATH=. python benchmarks/calibration_vs_mala.py            # markdown table, ~10 min on one core
    PYTHONPATH=. python benchmarks/calibration_vs_mala.py --quick    # shorter chains, ~3 min
"""

import argparse
import math
import time
import warnings

import torch

from models.dln import DLN, make_true_params
from models.toy import MinimallySingular, PolynomialRegression, ReducedRankRegression, rrr_data, toy_data
from sgld import estimate_llc, mala_estimate_llc


def _noise_fit(shape: tuple[int, int, int], n: int, seed: int = 0):
    """Reduced rank regression fitted by Adam to pure-noise targets: w* is (near) the empirical minimiser."""
    g = torch.Generator().manual_seed(seed)
    model = ReducedRankRegression(*shape, rank=0, generator=g)
    with torch.no_grad():  # rank 0 starts at A = B = 0, a saddle Adam cannot leave: start small instead
        model.A.weight.normal_(0, 0.1, generator=g)
        model.B.weight.normal_(0, 0.1, generator=g)
    x, y = torch.randn(n, shape[0], generator=g), torch.randn(n, shape[2], generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3000):
        opt.zero_grad()
        model.loss_fn(model(x), y).backward()
        opt.step()
    return model, (x, y)


def _noisy_dln(input_dim: int, widths: list[int], rank: int, n: int, noise: float = 1.0, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    model = DLN(input_dim, widths).set_matrices(make_true_params(input_dim, widths, "low_rank", rank=rank, generator=g))
    x = torch.randn(n, input_dim, generator=g)
    with torch.no_grad():
        y = model(x) + noise * torch.randn(n, widths[-1], generator=g)
    return model, (x, y)


def _half_mse(output, target):
    return 0.5 * ((output - target) ** 2).sum(dim=-1).mean()


def cases():
    """(name, model, loss_fn, data, batch_size)."""
    ms = MinimallySingular(d=1000, r=10)
    yield "minimally singular d=1000 r=10, n=1e4", ms, ms.loss_fn, toy_data(10_000), 100
    rrr = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    yield "RRR 4-2-3 r=1, n=2000, noise-free", rrr, rrr.loss_fn, rrr_data(rrr, 2000, noise_std=0.0, seed=1), 200
    rrr_noisy = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    yield "RRR 4-2-3 r=1, n=1000, noisy (σ=1)", rrr_noisy, rrr_noisy.loss_fn, rrr_data(rrr_noisy, 1000, seed=1), 100
    for shape in ((4, 2, 3), (6, 3, 5)):
        model, data = _noise_fit(shape, 1000)
        yield f"RRR {'-'.join(map(str, shape))} fitted by Adam to pure noise, n=1000", model, model.loss_fn, data, 100
    for widths, rank in (([3, 3, 3], 1), ([4, 4, 3], 2)):
        model, data = _noisy_dln(3, widths, rank, 1000)
        yield f"DLN 3→{'→'.join(map(str, widths))} r={rank}, n=1000, noisy (σ=1)", model, _half_mse, data, 100
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(1000, 1, generator=g), torch.randn(1000, 1, generator=g)
    for powers in ((1, 1), (1, 2)):
        poly = PolynomialRegression(powers)
        yield f"normal crossing x·∏w^k, k={powers}, w*=0, n=1000, noisy", poly, poly.loss_fn, (x, y), 100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="shorter chains (noisier bias estimates)")
    args = parser.parse_args()
    steps, chains = (2000, 8) if args.quick else (6000, 8)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    print(f"SGLD (auto ε) and MALA: {chains} chains × {steps} steps, first quarter burn-in; γ = 1, nβ = n/log n; "
          "measured bias = auto/MALA − 1 ± its standard error over chains")
    print()
    print("| model | MALA λ̂ | auto λ̂ | auto ε | final-ε acceptance | predicted bias | measured bias | wall s |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, model, loss_fn, data, m in cases():
        start = time.perf_counter()
        auto = estimate_llc(model, loss_fn, data, epsilon="auto", num_steps=steps, num_burnin_steps=steps // 4,
                            num_chains=chains, batch_size=m, seed=0)
        cal = auto.epsilon_calibration
        # MALA is exact at any step; a larger one than SGLD's mixes faster and still accepts often.
        mala = mala_estimate_llc(model, loss_fn, data, epsilon=2 * auto.epsilon, num_steps=steps,
                                 num_burnin_steps=steps // 4, num_chains=chains, seed=1)
        bias = auto.lambdahat / mala.lambdahat - 1
        se = math.hypot(auto.lambdahat_std, mala.lambdahat_std) / math.sqrt(chains) / abs(mala.lambdahat)
        print(f"| {name} | {mala.lambdahat:.4g} (acc. {mala.mala_acceptance:.2f}) | {auto.lambdahat:.4g} | "
              f"{auto.epsilon:.3g} | {cal['pilot_mala_acceptance']:.3f} | {cal['predicted_relative_bias']:+.1%} | "
              f"{bias:+.1%} ± {se:.1%} | {time.perf_counter() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
