"""``epsilon="auto"`` on the inputs that used to crash it, exact full batch, and ``num_steps="auto"``.

Singular points with noisy targets (n = 1000, nβ = n/log n): the Hessian at w* vanishes, is
indefinite, or autograd gives NaN there. Each input has a documented path in
``sgld.calibrate_epsilon``; where the answer is known (full-batch MALA on the same posterior has no
step-size bias) the tests compare with it. Measured values (seed 0, CPU) beside the assertions.
"""

import math
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from models.toy import MinimallySingular, PolynomialRegression, ReducedRankRegression, toy_data
from sgld import default_nbeta, estimate_llc, mala_estimate_llc


def _noisy_targets(n: int = 1000):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)


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
        res = estimate_llc(model, model.loss_fn, _noisy_targets(), epsilon="auto", gamma=gamma, num_steps=1000,
                           num_burnin_steps=200, batch_size=100, seed=0)
    cal = res.epsilon_calibration
    assert cal["curvature_source"].startswith(source)
    assert 0 < res.epsilon < math.inf and math.isfinite(res.lambdahat) and not res.diverged
    # The chosen ε passed its own acceptance check, and the run keeps that acceptance.
    assert cal["pilot_mala_acceptance"] >= 0.95 and res.mala_acceptance > 0.9
    assert res.calibration_steps == sum(c["steps"] for c in cal["checks"]) > 0 and res.calibration_seconds > 0


class SignedSquare(nn.Module):
    """f(x) = x · w0|w0| · w1, with |w0| = sqrt(w0²): finite at 0, but autograd's derivative there is 0/0 = NaN."""

    loss_fn = staticmethod(PolynomialRegression.loss_fn)

    def __init__(self) -> None:
        super().__init__()
        self.w0 = nn.Parameter(torch.zeros(1))
        self.w1 = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x * (self.w0 * torch.sqrt(self.w0**2) * self.w1)


def test_nan_gradient_at_w_star_is_warned_and_matches_mala():
    # The true derivative of w0|w0| at 0 is 0 (a removable 0/0): NaN entries are taken as 0, in
    # SGLD and in MALA alike. K ∝ w0⁴ w1², a normal crossing. Measured: auto 0.259, MALA 0.261.
    data = _noisy_targets()
    with pytest.warns(RuntimeWarning, match=r"gradient of the loss at w\* is NaN in \['w0'\]"):
        res = estimate_llc(SignedSquare(), SignedSquare.loss_fn, data, epsilon="auto",
                           num_steps=2000, num_burnin_steps=500, num_chains=8, batch_size=100, seed=0)
    assert res.epsilon_calibration["nan_gradient_taken_as_zero"] and not res.diverged
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mala = mala_estimate_llc(SignedSquare(), SignedSquare.loss_fn, data, epsilon=4 * res.epsilon,
                                 num_steps=2000, num_burnin_steps=500, num_chains=8, seed=1)
    se = math.hypot(res.lambdahat_std, mala.lambdahat_std) / math.sqrt(8)
    assert res.lambdahat == pytest.approx(mala.lambdahat, abs=4 * se)


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


def test_nan_loss_at_w_star_names_the_parameters():
    model = MinimallySingular(d=3, r=2)
    with torch.no_grad():
        model.w[1] = float("nan")
    with pytest.raises(ValueError, match=r"loss at w\* is nan \(non-finite values in the parameters \['w'\]\)"):
        estimate_llc(model, model.loss_fn, toy_data(100), epsilon="auto", batch_size=10)

    class LogBarrier(nn.Module):  # finite parameters, NaN loss: 0 · log 0
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(2))
            self.b = nn.Parameter(torch.ones(1))

        def forward(self, x):
            return (self.a * torch.log(self.a)).sum().expand(x.shape[0]) + self.b

    with pytest.raises(ValueError, match=r"loss at w\* is nan \(the NaN flows through the parameters \['a'\]\)"):
        estimate_llc(LogBarrier(), lambda out, y: out.mean(), toy_data(100), epsilon=1e-3, batch_size=10)


def test_zero_gradient_noise_and_full_batch():
    # The loss ignores the data: no minibatch noise, so only tr H limits ε. λ = r/2 = 2.
    # Measured: 2.00 (minibatch), 2.02 (full batch).
    model = MinimallySingular(d=200, r=4)
    for batch_size in (50, None):
        res = estimate_llc(model, model.loss_fn, toy_data(1000), epsilon="auto", num_steps=2000,
                           num_burnin_steps=200, batch_size=batch_size, seed=0)
        cal = res.epsilon_calibration
        # A loss that ignores the data has no noise; whatever rounding leaves is below the floor,
        # and the recorded noise is then exactly 0.0 by rule (not by arithmetic) on every machine.
        assert cal["gradient_noise_measured"] <= cal["gradient_noise_floor"]
        assert cal["gradient_noise"] == 0.0 and cal["gradient_noise_used"] == 0.0
        assert res.lambdahat == pytest.approx(2.0, rel=0.08)
    assert res.full_batch and res.batch_size == 1000 and res.to_dict()["full_batch"] is True


def test_full_batch_is_the_exact_gradient_in_fixed_order():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + 0.1 * torch.randn(40, 2, generator=g)
    model = nn.Linear(3, 2, bias=False)
    eps, nbeta, gamma = 1e-3, 7.0, 2.0
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=eps, gamma=gamma, nbeta=nbeta, num_steps=3,
                       num_chains=2, batch_size="full", seed=3, mala_every=0)
    # Replay chain 0: no index draws, only noise; every step's loss is L_n at the current w.
    state = np.random.SeedSequence(3).spawn(2)[0].generate_state(2, dtype=np.uint32)
    gen = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    w_star = model.weight.detach().clone()
    w = w_star.clone()
    for t in range(3):
        w.requires_grad_(True)
        loss = nn.functional.mse_loss(x @ w.T, y)
        (grad,) = torch.autograd.grad(loss, w)
        assert res.loss_trace[0, t] == pytest.approx(loss.item(), rel=1e-5)
        noise = torch.randn(w.numel(), generator=gen).view_as(w)
        w = (w - eps / 2 * (nbeta * grad + gamma * (w - w_star)) + math.sqrt(eps) * noise).detach()
    assert res.full_batch and res.batch_size == 40


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


def test_stopping_rule_stops_early_when_settled():
    # Minimally singular, λ = 5: the trace is flat after a few hundred steps. Measured: stops at
    # 2000 steps (round 2), λ̂ 4.96.
    model = MinimallySingular(d=100, r=10)
    nbeta = default_nbeta(10_000)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=0.05 / (2 * nbeta), num_steps="auto",
                       max_steps=32_000, batch_size=100, seed=0)
    assert res.stopping["reason"] == "settled" and res.num_steps <= 4000
    assert res.num_steps == res.stopping["rounds"][-1]["steps"] == res.loss_trace.shape[1]
    assert res.lambdahat == pytest.approx(5.0, rel=0.1)


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_stopping_rule_keeps_going_while_the_trace_climbs():
    # A step 250x too small: the trace climbs towards λ = 5 on a time scale 1/(ε a) = 5000 steps.
    # Measured: no round settles; stops at max_steps = 4000.
    model = MinimallySingular(d=100, r=10)
    nbeta = default_nbeta(10_000)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=0.0002 / (2 * nbeta), num_steps="auto",
                       max_steps=4000, batch_size=100, seed=0)
    assert res.stopping["reason"] == "max_steps reached" and not res.stopping["settled"]
    assert res.num_steps == 4000 and [r["steps"] for r in res.stopping["rounds"]] == [1000, 2000, 4000]
    assert res.lambdahat < 5.0 * 0.95


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_stopping_rule_does_not_stop_on_a_dln_plateau():
    # DLN 4→4→7→7→7 on the most singular stratum of rank 2, λ = 11 (Aoyagi), as in
    # benchmarks/stopping_rule.py. At auto's ε (3.9e-6) λ̂ sits at 9.1 for ~4000 steps with flat
    # quarters, then climbs (10.5 over steps 4000–8000, 11.3 by 32,000). A rule that looks at one round
    # stopped at 4000 with λ̂ 9.1; this one needs the next round to confirm it. Measured: rounds
    # 1000–8000 without settling, λ̂ 9.11 at round 4000, 10.50 at 8000.
    from models.dln import DLN, SyntheticDLNData, make_true_params, true_lambda

    g = torch.Generator().manual_seed(0)
    model = DLN(4, [4, 7, 7, 7]).set_matrices(make_true_params(4, [4, 7, 7, 7], "low_rank", rank=2, generator=g))
    lam = true_lambda(2, 4, [4, 7, 7, 7])[0]
    data = SyntheticDLNData(model.product(), 10_000, seed=1)
    res = estimate_llc(model, lambda out, y: ((out - y) ** 2).mean(), data, epsilon="auto", num_steps="auto",
                       max_steps=8000, num_chains=4, batch_size=100, seed=0)
    rounds = res.stopping["rounds"]
    assert lam == 11 and [r["steps"] for r in rounds] == [1000, 2000, 4000, 8000]
    assert res.stopping["reason"] == "max_steps reached"
    # The plateau: what the old rule stopped on, well short of λ; the next round climbs towards it.
    assert rounds[2]["lambdahat"] < 0.9 * lam
    assert rounds[3]["lambdahat"] > rounds[2]["lambdahat"] + 0.05 * lam
