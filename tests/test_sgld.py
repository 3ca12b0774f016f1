"""The estimator against hand computations, known learning coefficients and its own contracts.

Science tests state their hyperparameters and tolerance; measured errors are noted beside them
(seed 0, CPU). Known λ: minimally singular r/2, normal crossing min 1/(2k), reduced rank
regression from Aoyagi & Watanabe (2005).
"""

import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from models.toy import (
    MinimallySingular,
    NormalCrossing,
    ReducedRankRegression,
    rrr_data,
    toy_data,
)
from sgld import (
    SGLD,
    calibrate_epsilon,
    default_nbeta,
    ess,
    estimate_llc,
    llc_from_losses,
    mala_estimate_llc,
    rhat,
)

# --------------------------------------------------------------------------------------------
# Mechanics: one step by hand, vectorization, determinism
# --------------------------------------------------------------------------------------------


def _linear_problem(n: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + torch.randn(n, 2, generator=g)
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():  # w* = the least-squares fit, a minimum of L_n as in the paper's setting
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def test_one_sgld_step_equals_hand_computation():
    model, x, y = _linear_problem()
    eps, gamma, nbeta, m = 1e-3, 2.0, 7.0, 5
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=eps, gamma=gamma, nbeta=nbeta,
                       num_steps=2, num_chains=1, batch_size=m, seed=3, mala_every=0)

    # Replay the chain's random stream: minibatch indices, then the noise, each step.
    gen = torch.Generator()
    state = np.random.SeedSequence(3).spawn(1)[0].generate_state(2, dtype=np.uint32)
    gen.manual_seed(int(state[0]) << 32 | int(state[1]))
    w_star = model.weight.detach().clone()

    def batch_loss_and_grad(w, idx):
        residual = x[idx] @ w.T - y[idx]  # mse_loss = mean over m*2 entries
        loss = (residual**2).mean()
        grad = 2 * residual.T @ x[idx] / residual.numel()
        return loss, grad

    idx0 = torch.randint(len(x), (m,), generator=gen)
    loss0, grad0 = batch_loss_and_grad(w_star, idx0)
    noise = torch.randn(w_star.numel(), generator=gen).view_as(w_star)
    w1 = w_star - eps / 2 * (nbeta * grad0 + gamma * (w_star - w_star)) + math.sqrt(eps) * noise
    idx1 = torch.randint(len(x), (m,), generator=gen)
    loss1, _ = batch_loss_and_grad(w1, idx1)

    np.testing.assert_allclose(res.loss_trace[0], [loss0.item(), loss1.item()], rtol=1e-5)
    init = nn.functional.mse_loss(model(x), y).item()
    assert res.init_loss == pytest.approx(init, rel=1e-6)
    assert res.lambdahat == pytest.approx(nbeta * ((loss0.item() + loss1.item()) / 2 - init), rel=1e-5)


def test_sgld_optimizer_step_equals_hand_computation():
    model, x, y = _linear_problem()
    w_star = model.weight.detach().clone()
    opt = SGLD(model.parameters(), epsilon=1e-2, nbeta=10.0, gamma=3.0, generator=torch.Generator().manual_seed(1))
    for _ in range(2):  # second step has w != w*, so the localization term is exercised
        w_before = model.weight.detach().clone()
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        grad = model.weight.grad.clone()
        noise_gen = torch.Generator()
        noise_gen.set_state(opt.generator.get_state())
        noise = torch.randn(w_before.shape, generator=noise_gen)
        opt.step()
        expected = w_before - 1e-2 / 2 * (10.0 * grad + 3.0 * (w_before - w_star)) + math.sqrt(1e-2) * noise
        torch.testing.assert_close(model.weight.detach(), expected)


def test_vectorized_chains_equal_chain_by_chain():
    model, x, y = _linear_problem(n=200)
    kw = dict(epsilon=1e-4, num_steps=60, num_chains=4, batch_size=16, seed=11, mala_every=7)
    together = estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    one_by_one = estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=1, **kw)
    pairs = estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=2, **kw)
    np.testing.assert_allclose(together.loss_trace, one_by_one.loss_trace, rtol=1e-5)
    np.testing.assert_allclose(together.loss_trace, pairs.loss_trace, rtol=1e-5)
    assert together.mala_acceptance == pytest.approx(one_by_one.mala_acceptance, rel=1e-4)


def test_same_seed_same_result_bit_for_bit():
    model, x, y = _linear_problem(n=200)
    kw = dict(epsilon=1e-4, num_steps=50, num_chains=3, batch_size=16)
    a = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=5, **kw)
    b = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=5, **kw)
    c = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=6, **kw)
    assert np.array_equal(a.loss_trace, b.loss_trace)
    assert a.lambdahat == b.lambdahat
    assert not np.array_equal(a.loss_trace, c.loss_trace)
    # Chains differ from each other (independent streams), and the model is left untouched.
    assert not np.array_equal(a.loss_trace[0], a.loss_trace[1])


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_model_is_not_modified_and_mode_is_kept():
    model, x, y = _linear_problem()
    before = model.weight.detach().clone()
    model.train()
    estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-2, num_steps=20, num_chains=2, batch_size=8)
    assert torch.equal(model.weight, before)
    assert model.training


def test_data_forms_agree():
    """Tensors, a TensorDataset, a generic Dataset and a get_batch object are the same data."""
    model, x, y = _linear_problem(n=64)

    class Items(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return x[i], y[i]

    class Batches:
        def __len__(self):
            return len(x)

        def get_batch(self, idx):
            return x[idx], y[idx]

    kw = dict(epsilon=1e-3, num_steps=30, num_chains=2, batch_size=8, seed=1)
    ref = estimate_llc(model, nn.functional.mse_loss, (x, y), **kw).loss_trace
    for data in (torch.utils.data.TensorDataset(x, y), Items(), Batches()):
        np.testing.assert_allclose(estimate_llc(model, nn.functional.mse_loss, data, **kw).loss_trace, ref, rtol=1e-6)


def test_burn_in_is_kept_in_trace_but_not_in_estimate():
    model, x, y = _linear_problem(n=200)
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-3, num_steps=40, num_chains=2,
                       batch_size=16, num_burnin_steps=10)
    assert res.loss_trace.shape == (2, 40)
    expected = llc_from_losses(res.loss_trace, res.init_loss, res.nbeta, num_burnin_steps=10)
    np.testing.assert_allclose(res.lambdahat_per_chain, expected)
    assert res.lambdahat == pytest.approx(expected.mean())
    assert res.lambdahat != pytest.approx(llc_from_losses(res.loss_trace, res.init_loss, res.nbeta).mean())


def test_result_carries_its_settings_and_serialises():
    model, x, y = _linear_problem(n=100)
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-3, gamma=2.0, num_steps=20,
                       num_chains=2, batch_size=10, seed=4)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["n"] == 100 and d["nbeta"] == pytest.approx(100 / math.log(100))
    assert (d["epsilon"], d["gamma"], d["batch_size"], d["seed"]) == (1e-3, 2.0, 10, 4)
    assert d["loss_trace_minibatch"] is True and "batches of 10" in d["init_loss_method"]
    assert len(d["lambdahat_per_chain"]) == 2 and len(d["lambdahat_quarters"]) == 4
    assert "loss_trace" not in d


def test_default_nbeta_is_n_over_log_n():
    assert default_nbeta(1000) == pytest.approx(1000 / math.log(1000))
    with pytest.raises(ValueError, match="n must be >= 2"):
        default_nbeta(1)


# --------------------------------------------------------------------------------------------
# Diagnostics
# --------------------------------------------------------------------------------------------


def test_rhat_and_ess_on_known_processes():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 2000))
    assert rhat(iid) == pytest.approx(1.0, abs=0.01)
    assert 0.8 * iid.size < ess(iid) < 1.2 * iid.size
    shifted = iid + np.array([0.0, 0.0, 0.0, 1.0])[:, None]
    assert rhat(shifted) > 1.1
    # AR(1) with rho = 0.9 has ESS = N (1 - rho) / (1 + rho).
    ar = np.zeros((4, 20000))
    noise = rng.normal(size=ar.shape)
    for t in range(1, ar.shape[1]):
        ar[:, t] = 0.9 * ar[:, t - 1] + noise[:, t]
    assert ess(ar) == pytest.approx(ar.size * 0.1 / 1.9, rel=0.2)
    trend = np.tile(np.linspace(0, 1, 1000), (4, 1)) + 0.01 * rng.normal(size=(4, 1000))
    assert rhat(trend) > 1.5  # a climbing trace is flagged


def test_divergent_chain_is_flagged_excluded_and_warned():
    model = MinimallySingular(d=10, r=2)
    x, y = toy_data(1000)
    nbeta = default_nbeta(1000)
    # epsilon * curvature (2 nbeta) = 10 > 4: every chain explodes.
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = estimate_llc(model, model.loss_fn, (x, y), epsilon=10 / (2 * nbeta), num_steps=200,
                           num_chains=2, batch_size=10)
    assert res.diverged and all(s is not None for s in res.divergence_step)
    assert math.isnan(res.lambdahat) and np.isnan(res.lambdahat_per_chain).all()
    assert res.to_dict()["diverged"] is True


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_mala_acceptance_tracks_step_size():
    model = MinimallySingular(d=50, r=5)
    data = toy_data(1000)
    a_max = 2 * default_nbeta(1000)
    small = estimate_llc(model, model.loss_fn, data, epsilon=0.01 / a_max, num_steps=300, batch_size=10)
    large = estimate_llc(model, model.loss_fn, data, epsilon=1.5 / a_max, num_steps=300, batch_size=10)
    assert small.mala_acceptance > 0.95
    assert large.mala_acceptance < small.mala_acceptance - 0.1


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(epsilon=-1e-6), "epsilon must be a finite number > 0, got -1e-06"),
        (dict(epsilon=0.0), "epsilon must be"),
        (dict(epsilon="fast"), "epsilon must be"),
        (dict(gamma=-1.0), "gamma must be a finite number >= 0"),
        (dict(num_chains=0), r"num_chains must be an integer >= 1, got 0"),
        (dict(num_steps=0), "num_steps must be an integer >= 1"),
        (dict(batch_size=500), r"batch_size must be an integer in \[1, 100\], got 500"),
        (dict(nbeta=-3.0), "nbeta must be"),
        (dict(num_burnin_steps=10), r"num_burnin_steps must be an integer in \[0, 9\]"),
        (dict(chain_batch_size=0), "chain_batch_size"),
    ],
)
def test_bad_arguments_name_the_argument_and_range(kwargs, message):
    model, x, y = _linear_problem(n=100)
    args = dict(epsilon=1e-3, num_steps=10, num_chains=2, batch_size=10) | kwargs
    with pytest.raises(ValueError, match=message):
        estimate_llc(model, nn.functional.mse_loss, (x, y), **args)


def test_shape_mismatch_and_empty_data_are_explained():
    model, x, y = _linear_problem(n=20)
    with pytest.raises(ValueError, match="model/data shape mismatch"):
        estimate_llc(model, nn.functional.mse_loss, (torch.randn(20, 5), y), epsilon=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        estimate_llc(model, nn.functional.mse_loss, (x[:0], y[:0]), epsilon=1e-3, batch_size=1)
    with pytest.raises(ValueError, match="same length"):
        estimate_llc(model, nn.functional.mse_loss, (x, y[:10]), epsilon=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="scalar"):
        estimate_llc(model, nn.MSELoss(reduction="none"), (x, y), epsilon=1e-3, batch_size=4)


# --------------------------------------------------------------------------------------------
# Science: known learning coefficients
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("r", [2, 10, 50])
def test_minimally_singular_recovers_half_the_rank(r):
    # d = 1000, lambda = r/2. eps * a_max = 0.05 (a_max = 2 nbeta): predicted bias 1.3%.
    # Measured (seed 0): r=2: 0.962, r=10: 5.05, r=50: 25.6.
    model = MinimallySingular(d=1000, r=r)
    nbeta = default_nbeta(10_000)
    res = estimate_llc(model, model.loss_fn, toy_data(10_000), epsilon=0.05 / (2 * nbeta), num_steps=2000,
                       num_burnin_steps=200, num_chains=4, batch_size=100, seed=0)
    assert res.lambdahat == pytest.approx(r / 2, rel=0.05)
    assert not res.diverged and res.rhat < 1.05


def test_minimally_singular_with_full_data_trace():
    model = MinimallySingular(d=200, r=8)
    nbeta = default_nbeta(1000)
    res = estimate_llc(model, model.loss_fn, toy_data(1000), epsilon=0.05 / (2 * nbeta), num_steps=1000,
                       num_burnin_steps=100, num_chains=4, batch_size=50, loss_trace_minibatch=False, seed=0)
    assert not res.loss_trace_minibatch
    assert res.lambdahat == pytest.approx(4.0, rel=0.05)


def _normal_crossing_posterior_mean(powers, nbeta, gamma=1.0):
    """E[nbeta K] under exp(-nbeta K - gamma/2 |w|^2) for K = w1^(2k1) w2^(2k2), by quadrature."""
    w = np.logspace(-12, 1.3, 6000)  # the integrand is even in each coordinate: w > 0 suffices
    w1, w2 = np.meshgrid(w, w, indexing="ij")
    k = w1 ** (2 * powers[0]) * w2 ** (2 * powers[1])
    density = np.exp(-nbeta * k - gamma / 2 * (w1**2 + w2**2)) * w1 * w2  # w dlog w = dw
    return float((nbeta * k * density).sum() / density.sum())


@pytest.mark.parametrize("powers", [(1, 2), (1, 3), (1, 4)])
def test_normal_crossing_recovers_lambda(powers):
    # K = w1^(2 k1) w2^(2 k2), lambda = 1 / (2 max k). At nbeta = 1e4 the exact posterior mean of
    # nbeta K is 5-7% below lambda (the next pole is near); SGLD must match that exact value.
    # The curvature reaches 2 nbeta on the w2 arm, so eps = 2e-4 keeps eps * a <= 4 there.
    # Measured (64 chains): (1,2) 0.238 vs exact 0.236; (1,3) 0.158 vs 0.158; (1,4) 0.113 vs 0.117.
    model = NormalCrossing(powers)
    nbeta = 1e4
    res = estimate_llc(model, model.loss_fn, toy_data(100), nbeta=nbeta, epsilon=2e-4, num_steps=6000,
                       num_burnin_steps=2000, num_chains=64, batch_size=1, seed=0, mala_every=0)
    lam, _ = model.true_lambda
    exact = _normal_crossing_posterior_mean(powers, nbeta)
    assert exact == pytest.approx(lam, rel=0.07)
    assert res.lambdahat == pytest.approx(exact, rel=0.08)
    assert res.lambdahat == pytest.approx(lam, rel=0.12)
    assert not res.diverged


RRR_CASES = {
    # (M, H, N, r) -> Aoyagi & Watanabe (2005) case; all at true rank r = 1 > 0.
    "case1-even": (4, 2, 3, 1),  # lambda = 4
    "case1-odd": (6, 3, 5, 1),  # lambda = 9, multiplicity 2
    "case2": (2, 2, 6, 1),  # M + H < N + r: lambda = 4
    "case3": (6, 2, 2, 1),  # N + H < M + r: lambda = 4
    "case4": (2, 4, 2, 1),  # M + N < H + r: lambda = 2 (regular in the product)
}


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


def test_auto_epsilon_curvature_with_torch_mse_loss():
    # F.mse_loss made the Hessian-vector product raise "ZeroTensors are immutable" in torch 2.14
    # (forward-over-reverse). For least squares the curvature is known: the Hessian of the mean over
    # n·k entries is 2 XᵀX / (n k) per output, so a_max = nβ · 2 λ_max(XᵀX / n) / k + γ. The
    # calibration measures it on 4096 samples drawn with replacement: a few percent off.
    model, x, y = _linear_problem(n=20_000)
    nbeta, gamma = 50.0, 1.0
    cal = calibrate_epsilon(model, nn.functional.mse_loss, (x, y), nbeta=nbeta, gamma=gamma, batch_size=20,
                            pilot_steps=100, pilot_chains=2)
    exact = nbeta * 2 * torch.linalg.eigvalsh(x.T @ x / len(x)).max().item() / 2 + gamma
    assert cal["a_max"] == pytest.approx(exact, rel=0.1)


def test_auto_epsilon_accounts_for_gradient_noise():
    """Noisy labels at large n: minibatch gradient noise, not curvature, must set the step."""
    model = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    clean = rrr_data(model, 100_000, noise_std=0.0, seed=1)
    noisy = rrr_data(model, 100_000, noise_std=1.0, seed=1)
    cal_clean = calibrate_epsilon(model, model.loss_fn, clean, batch_size=256, pilot_steps=200)
    cal_noisy = calibrate_epsilon(model, model.loss_fn, noisy, batch_size=256, pilot_steps=200)
    # Noise-free data: the measured tr Cov is rounding residue (0.0 on one CPU, 6e-17 on another),
    # far below the documented floor, so calibration takes the curvature-only path on every machine.
    # The floor is a rule, not a tolerance: noise at the floor changes the bias rate by one float32 ulp.
    assert cal_clean["gradient_noise_measured"] <= cal_clean["gradient_noise_floor"]
    assert cal_clean["gradient_noise"] == 0.0  # set by the rule, not computed: exact on every machine
    assert cal_noisy["gradient_noise"] > 1e6 * cal_noisy["gradient_noise_floor"]
    assert cal_noisy["epsilon"] < cal_clean["epsilon"] / 3
    assert cal_noisy["limited_by"] == "bias"


def test_control_variate_keeps_the_mean_and_removes_minibatch_noise():
    model = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    data = rrr_data(model, 10_000, noise_std=1.0, seed=1)
    kw = dict(epsilon=2e-5, num_steps=2000, num_burnin_steps=500, num_chains=4, batch_size=256, seed=0)
    plain = estimate_llc(model, model.loss_fn, data, **kw)
    cv = estimate_llc(model, model.loss_fn, data, control_variate=True, **kw)
    # Same chains (the trace does not steer them), so the per-step difference is L_B(w*) - L_n(w*).
    step_sd_plain = plain.nbeta * plain.loss_trace[:, 500:].std()
    step_sd_cv = cv.nbeta * cv.loss_trace[:, 500:].std()
    assert step_sd_cv < step_sd_plain / 5
    standard_error = plain.nbeta * plain.loss_trace[:, 500:].std() / math.sqrt(plain.ess)
    assert cv.lambdahat == pytest.approx(plain.lambdahat, abs=4 * standard_error)
    assert cv.control_variate and not plain.control_variate


def test_sgld_agrees_with_full_batch_mala():
    # Same posterior; MALA has no step-size bias. Agreement within 4 combined standard errors.
    model = ReducedRankRegression(4, 2, 3, 1, generator=torch.Generator().manual_seed(0))
    data = rrr_data(model, 2000, noise_std=0.0, seed=1)
    sgld = estimate_llc(model, model.loss_fn, data, epsilon="auto", num_steps=4000, num_burnin_steps=1000,
                        num_chains=4, batch_size=200, seed=0)
    a_max = sgld.epsilon_calibration["a_max"]
    mala = mala_estimate_llc(model, model.loss_fn, data, epsilon=0.5 / a_max, num_steps=3000,
                             num_burnin_steps=500, num_chains=4, seed=1)
    assert 0.3 < mala.mala_acceptance < 1.0  # a real Metropolis correction happened
    se = math.hypot(sgld.lambdahat_std, mala.lambdahat_std) / 2  # std over 4 chains -> standard error
    assert sgld.lambdahat == pytest.approx(mala.lambdahat, abs=max(4 * se, 0.05 * mala.lambdahat))
    assert mala.lambdahat == pytest.approx(4.0, rel=0.15)
