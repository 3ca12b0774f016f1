"""The potential (``sgld.potential``): nβ, the caller's model untouched, and the batched nn.Linear path.

A model that is a chain of nn.Linear layers and elementwise activations is evaluated for all chains
with one bmm per layer instead of vmap (``sgld.potential.Potential``). It must give the generic
path's numbers (vmap over the model, and one chain through the model's own forward) and must be
refused for anything else.
"""

import math

import numpy as np
import pytest
import torch
from torch import nn

import sgld
from models.dln import DLN
from models.mlp import MLP
from sgld import default_nbeta, estimate_llc
from sgld.potential import Potential
from sgld.source import DataSource
from sgld.start import probe
from tests.sgld.problems import linear_problem


def test_default_nbeta_is_n_over_log_n():
    assert default_nbeta(1000) == pytest.approx(1000 / math.log(1000))
    with pytest.raises(ValueError, match="n must be >= 2"):
        default_nbeta(1)


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_model_is_not_modified_and_mode_is_kept():
    model, x, y = linear_problem()
    before = model.weight.detach().clone()
    model.train()
    estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-2, num_steps=20, num_chains=2, batch_size=8)
    assert torch.equal(model.weight, before)
    assert model.training


class Residual(nn.Module):
    """Linear and ReLU leaves only, but not a chain: x + relu(A x)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x):
        return x + self.act(self.a(x))


def _problem(model: nn.Module, n: int = 64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    with torch.no_grad():
        y = model(x) + 0.1 * torch.randn(n, model(x).shape[1], generator=g)
    return x, y


def _potential(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> Potential:
    potential = Potential(model, nn.functional.mse_loss, torch.device("cpu"))
    probe(potential, DataSource((x, y), torch.device("cpu")))
    return potential


@pytest.mark.parametrize(
    "make",
    [
        lambda: MLP(4, [8, 6], 3, activation="tanh"),
        lambda: MLP(4, [8], 3, activation="relu", bias=False),
        lambda: DLN(4, [5, 6, 3]),
        lambda: nn.Sequential(nn.Linear(4, 5), nn.GELU(), nn.Linear(5, 3, bias=False)),
    ],
)
def test_linear_path_matches_vmap_path(make):
    torch.manual_seed(0)
    model = make()
    x, y = _problem(model)
    potential = _potential(model, x, y)
    assert potential.layers is not None  # the batched Linear path is taken
    g = torch.Generator().manual_seed(1)
    w = potential.w_star + 0.3 * torch.randn(5, potential.d, generator=g)  # away from w*
    idx = torch.randint(len(x), (5, 16), generator=g)
    fast = potential.grad_value(w, x[idx], y[idx])
    layers, potential.layers = potential.layers, None
    generic = potential.grad_value(w, x[idx], y[idx])
    potential.layers = layers
    torch.testing.assert_close(fast[0], generic[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], generic[1], rtol=1e-5, atol=1e-7)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
def test_linear_path_vectorized_equals_chain_by_chain():
    """The fast path (all chains at once) against each chain through the model's own forward."""
    torch.manual_seed(0)
    model = MLP(4, [8, 8], 3, activation="tanh")
    x, y = _problem(model, n=200)
    kw = dict(epsilon=1e-4, num_steps=40, num_chains=4, batch_size=16, seed=3, mala_every=5,
              control_variate=True)
    together = sgld.estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    one_by_one = sgld.estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=1, **kw)
    np.testing.assert_allclose(together.loss_trace, one_by_one.loss_trace, rtol=1e-5)
    assert together.mala_acceptance == pytest.approx(one_by_one.mala_acceptance, rel=1e-4)


@pytest.mark.filterwarnings("ignore:the loss trace has not settled")
@pytest.mark.parametrize(
    "make",
    [
        Residual,  # Linear and ReLU leaves, but x + f(x): the check at a random point refuses it
        lambda: nn.Sequential(nn.Linear(4, 4), nn.Softmax(dim=-1), nn.Linear(4, 3)),  # not elementwise
        lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3)),  # has buffers
    ],
)
def test_other_models_take_the_generic_path(make):
    torch.manual_seed(0)
    model = make().eval()
    x, y = _problem(model)
    assert _potential(model, x, y).layers is None
    kw = dict(epsilon=1e-4, num_steps=20, num_chains=3, batch_size=8, seed=0)
    together = sgld.estimate_llc(model, nn.functional.mse_loss, (x, y), **kw)
    one_by_one = sgld.estimate_llc(model, nn.functional.mse_loss, (x, y), chain_batch_size=1, **kw)
    np.testing.assert_allclose(together.loss_trace, one_by_one.loss_trace, rtol=1e-5)
