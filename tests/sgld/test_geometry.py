"""The local geometry that sets ε (``sgld.geometry``): curvature against a known Hessian, gradient noise, its floor."""


import pytest
import torch
from torch import nn

from models.toy import MinimallySingular, ReducedRankRegression, rrr_data, toy_data
from sgld import calibrate_epsilon, estimate_llc
from tests.sgld.problems import linear_problem


def test_auto_epsilon_curvature_with_torch_mse_loss():
    # F.mse_loss made the Hessian-vector product raise "ZeroTensors are immutable" in torch 2.14
    # (forward-over-reverse). For least squares the curvature is known: the Hessian of the mean over
    # n·k entries is 2 XᵀX / (n k) per output, so a_max = nβ · 2 λ_max(XᵀX / n) / k + γ. The
    # calibration measures it on 4096 samples drawn with replacement: a few percent off.
    model, x, y = linear_problem(n=20_000)
    nbeta, gamma = 50.0, 1.0
    cal = calibrate_epsilon(model, nn.functional.mse_loss, (x, y), nbeta=nbeta, gamma=gamma, batch_size=20,
                            pilot_steps=100, pilot_chains=2)
    exact = nbeta * 2 * torch.linalg.eigvalsh(x.T @ x / len(x)).max().item() / 2 + gamma
    assert cal["a_max"] == pytest.approx(exact, rel=0.1)


@pytest.mark.slow
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


@pytest.mark.slow
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
