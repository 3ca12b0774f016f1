"""``epsilon="auto"`` (``sgld.calibration``): known λ, and the inputs that used to crash it.

Singular points with noisy targets (n = 1000, nβ = n/log n): the Hessian at w* vanishes, is
indefinite, or autograd gives NaN there. Each input has a documented path in
``sgld.calibrate_epsilon``; where the answer is known (full-batch MALA on the same posterior has no
step-size bias) the tests compare with it. Known λ of reduced rank regression from Aoyagi &
Watanabe (2005). Measured values (seed 0, CPU) beside the assertions.
"""

import math
import warnings

import pytest
import torch
from torch import nn

from models.toy import MinimallySingular, PolynomialRegression, ReducedRankRegression, rrr_data, toy_data
from sgld import default_nbeta, estimate_llc, mala_estimate_llc
from tests.sgld.problems import noisy_targets

RRR_CASES = {
    # (M, H, N, r) -> Aoyagi & Watanabe (2005) case; all at true rank r = 1 > 0.
    "case1-even": (4, 2, 3, 1),  # lambda = 4
    "case1-odd": (6, 3, 5, 1),  # lambda = 9, multiplicity 2
    "case2": (2, 2, 6, 1),  # M + H < N + r: lambda = 4
    "case3": (6, 2, 2, 1),  # N + H < M + r: lambda = 4
    "case4": (2, 4, 2, 1),  # M + N < H + r: lambda = 2 (regular in the product)
}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(RRR_CASES))
def test_reduced_rank_regression_recovers_lambda_with_auto_epsilon(case):
    # Realisable, noise-free teacher as in the paper's DLN experiments: L_n(w*) = 0 is the minimum.
    # (With noisy labels w* is not the empirical minimiser and lambdahat sits about
    # rank(H) / (2 log n) below lambda at nbeta = n / log n; see the README.)
    # Measured (seed 0): case1-even 4.08, case1-odd 8.75, case2 4.18, case3 4.13, case4 2.00.
    M, H, N, r = RRR_CASES[case]
    model = ReducedRankRegression(M, H, N, r, generator=torch.Generator().manual_seed(0))
    data = rrr_data(model, 100_000, noise_std=0.0, seed=1)
    res = estimate_llc(model, model.loss_fn, data, epsilon="auto", num_steps=5000, num_burnin_steps=1000,
                       num_chains=4, batch_size=256, seed=0)
    lam, _ = model.true_lambda
    assert res.lambdahat == pytest.approx(lam, rel=0.10)
    assert res.epsilon_calibration["epsilon"] == res.epsilon
    assert res.rhat < 1.1 and res.mala_acceptance > 0.9


@pytest.mark.parametrize("r", [2, 10])
def test_minimally_singular_with_auto_epsilon(r):
    # Measured (seed 0): r=2: 0.988, r=10: 5.10.
    model = MinimallySingular(d=1000, r=r)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon="auto", num_steps=2000,
                       num_burnin_steps=200, num_chains=4, batch_size=100, seed=0)
    assert res.lambdahat == pytest.approx(r / 2, rel=0.05)
    assert res.epsilon_calibration["limited_by"] in {"bias", "stability", "mala_acceptance"}


class DoubleWell(nn.Module):
    """L(w) = Σ (w_i⁴ − w_i²): w* = 0 is a local maximum, curvature −2 per coordinate."""

    def __init__(self, d: int = 2) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    @staticmethod
    def loss_fn(output, target):
        return output.mean()

    def forward(self, x):
        return (self.w**4 - self.w**2).sum().expand(x.shape[0])


@pytest.mark.parametrize(
    ("powers", "gamma", "source"),
    [
        ((2, 2), 0.0, "unit-curvature"),  # Hessian exactly 0 at w* (a_max = tr H = 0): was ZeroDivisionError
        ((0, 1, 2), 1.0, "unit-curvature"),  # w⁰ factor: the Hessian-vector product at w* = 0 is NaN
        ((1, 1), 1.0, "largest eigenvalue"),  # indefinite Hessian (w* not a minimum), positive dominant
    ],
)
def test_auto_epsilon_at_singular_points_with_noisy_targets(powers, gamma, source):
    model = PolynomialRegression(powers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the NaN-gradient case warns by design (checked below)
        res = estimate_llc(model, model.loss_fn, noisy_targets(), epsilon="auto", gamma=gamma, num_steps=1000,
                           num_burnin_steps=200, batch_size=100, seed=0)
    cal = res.epsilon_calibration
    assert cal["curvature_source"].startswith(source)
    assert 0 < res.epsilon < math.inf and math.isfinite(res.lambdahat) and not res.diverged
    # The chosen ε passed its own acceptance check, and the run keeps that acceptance.
    assert cal["pilot_mala_acceptance"] >= 0.95 and res.mala_acceptance > 0.9
    assert res.calibration_steps == sum(c["steps"] for c in cal["checks"]) > 0 and res.calibration_seconds > 0


def test_negative_curvature_uses_its_magnitude_and_matches_mala():
    # w* = 0 is a maximum of L: a_max = −2 nβ + γ < 0 (was a negative ε). |a| sets the scale; the
    # chains fall into the wells at ±1/√2 (L = −1/4 per coordinate), so λ̂ ≈ −nβ/2 + 1 = −71.4.
    model = DoubleWell(2)
    data = toy_data(1000)
    res = estimate_llc(model, model.loss_fn, data, epsilon="auto", num_steps=2000, num_burnin_steps=500,
                       batch_size=10, seed=0)
    cal = res.epsilon_calibration
    assert cal["a_max"] < 0 and cal["curvature_source"].startswith("|largest-magnitude eigenvalue|")
    assert res.epsilon > 0 and not res.diverged
    assert res.lambdahat == pytest.approx(-default_nbeta(1000) / 2 + 1, rel=0.05)


@pytest.mark.slow
def test_pure_noise_reduced_rank_regression_auto_agrees_with_mala():
    # RRR 4-2-3 fitted by Adam to pure-noise targets, n = 1000: the case where `auto` promised
    # 2% and delivered +23%. Same nβ, γ, w*; MALA has no step-size bias. Tolerance 15% (the measured
    # difference with its standard error is in benchmarks/calibration_vs_mala.py).
    g = torch.Generator().manual_seed(0)
    model = ReducedRankRegression(4, 2, 3, 0, generator=g)
    with torch.no_grad():
        model.A.weight.normal_(0, 0.1, generator=g)
        model.B.weight.normal_(0, 0.1, generator=g)
    x, y = torch.randn(1000, 4, generator=g), torch.randn(1000, 3, generator=g)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3000):
        opt.zero_grad()
        model.loss_fn(model(x), y).backward()
        opt.step()
    sgld = estimate_llc(model, model.loss_fn, (x, y), epsilon="auto", num_steps=3000, num_burnin_steps=1000,
                        num_chains=8, batch_size=100, seed=0)
    mala = mala_estimate_llc(model, model.loss_fn, (x, y), epsilon=2 * sgld.epsilon, num_steps=3000,
                             num_burnin_steps=1000, num_chains=8, seed=1)
    assert sgld.epsilon_calibration["pilot_mala_acceptance"] >= 0.95
    assert sgld.lambdahat == pytest.approx(mala.lambdahat, rel=0.15)
