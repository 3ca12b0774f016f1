"""The Metropolis–Hastings acceptance of SGLD's steps, and full-batch MALA as the reference (``sgld.mala``)."""

import math

import pytest
import torch

from models.toy import MinimallySingular, ReducedRankRegression, rrr_data, toy_data
from sgld import default_nbeta, estimate_llc, mala_estimate_llc


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_mala_acceptance_tracks_step_size():
    model = MinimallySingular(d=50, r=5)
    data = toy_data(1000)
    a_max = 2 * default_nbeta(1000)
    small = estimate_llc(model, model.loss_fn, data, epsilon=0.01 / a_max, num_steps=300, batch_size=10)
    large = estimate_llc(model, model.loss_fn, data, epsilon=1.5 / a_max, num_steps=300, batch_size=10)
    assert small.mala_acceptance > 0.95
    assert large.mala_acceptance < small.mala_acceptance - 0.1


@pytest.mark.slow
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
