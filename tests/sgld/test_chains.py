"""Running chains (``sgld.chains``): vectorization, determinism, divergence, full batch, the trace's forms.

Measured values (seed 0, CPU) are stated beside the science assertions.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

from models.toy import MinimallySingular, ReducedRankRegression, rrr_data, toy_data
from sgld import default_nbeta, estimate_llc
from tests.sgld.problems import linear_problem


def test_vectorized_chains_equal_chain_by_chain():
    model, x, y = linear_problem(n=200)
    kw = dict(epsilon=1e-4, num_steps=60, num_chains=4, batch_size=16, seed=11, mala_every=7)
    together = estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    one_by_one = estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=1, **kw)
    pairs = estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=2, **kw)
    np.testing.assert_allclose(together.loss_trace, one_by_one.loss_trace, rtol=1e-5)
    np.testing.assert_allclose(together.loss_trace, pairs.loss_trace, rtol=1e-5)
    assert together.mala_acceptance == pytest.approx(one_by_one.mala_acceptance, rel=1e-4)


def test_same_seed_same_result_bit_for_bit():
    model, x, y = linear_problem(n=200)
    kw = dict(epsilon=1e-4, num_steps=50, num_chains=3, batch_size=16)
    a = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=5, **kw)
    b = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=5, **kw)
    c = estimate_llc(model, nn.functional.mse_loss, (x, y), seed=6, **kw)
    assert np.array_equal(a.loss_trace, b.loss_trace)
    assert a.lambdahat == b.lambdahat
    assert not np.array_equal(a.loss_trace, c.loss_trace)
    # Chains differ from each other (independent streams), and the model is left untouched.
    assert not np.array_equal(a.loss_trace[0], a.loss_trace[1])


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


@pytest.mark.slow
def test_minimally_singular_with_full_data_trace():
    model = MinimallySingular(d=200, r=8)
    nbeta = default_nbeta(1000)
    res = estimate_llc(model, model.loss_fn, toy_data(1000), epsilon=0.05 / (2 * nbeta), num_steps=1000,
                       num_burnin_steps=100, num_chains=4, batch_size=50, loss_trace_minibatch=False, seed=0)
    assert not res.loss_trace_minibatch
    assert res.lambdahat == pytest.approx(4.0, rel=0.05)


@pytest.mark.slow
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
