"""The checks at w* before any step (``sgld.start``): bad inputs explained, NaN losses and gradients at w*."""

import math
import warnings

import pytest
import torch
from torch import nn

from models.toy import MinimallySingular, PolynomialRegression, toy_data
from sgld import estimate_llc, mala_estimate_llc
from tests.sgld.problems import linear_problem, noisy_targets


def test_shape_mismatch_and_empty_data_are_explained():
    model, x, y = linear_problem(n=20)
    with pytest.raises(ValueError, match="model/data shape mismatch"):
        estimate_llc(model, nn.functional.mse_loss, (torch.randn(20, 5), y), epsilon=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="empty"):
        estimate_llc(model, nn.functional.mse_loss, (x[:0], y[:0]), epsilon=1e-3, batch_size=1)
    with pytest.raises(ValueError, match="same length"):
        estimate_llc(model, nn.functional.mse_loss, (x, y[:10]), epsilon=1e-3, batch_size=4)
    with pytest.raises(ValueError, match="scalar"):
        estimate_llc(model, nn.MSELoss(reduction="none"), (x, y), epsilon=1e-3, batch_size=4)


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


class SignedSquare(nn.Module):
    """f(x) = x · w0|w0| · w1, with |w0| = sqrt(w0²): finite at 0, but autograd's derivative there is 0/0 = NaN."""

    loss_fn = staticmethod(PolynomialRegression.loss_fn)

    def __init__(self) -> None:
        super().__init__()
        self.w0 = nn.Parameter(torch.zeros(1))
        self.w1 = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return x * (self.w0 * torch.sqrt(self.w0**2) * self.w1)


@pytest.mark.slow
def test_nan_gradient_at_w_star_is_warned_and_matches_mala():
    # The true derivative of w0|w0| at 0 is 0 (a removable 0/0): NaN entries are taken as 0, in
    # SGLD and in MALA alike. K ∝ w0⁴ w1², a normal crossing. Measured: auto 0.259, MALA 0.261.
    data = noisy_targets()
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
