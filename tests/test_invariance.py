"""λ̂ is a property of the function the network computes near w*, not of its parametrisation.

A DLN has the rescaling symmetry W₂ → W₂/α, W₁ → αW₁ (same product, same data, same true λ). The
learning coefficient is invariant under it; the estimate should be too, up to its sampling error,
once ε is re-derived from the local geometry at the rescaled point (the curvatures change by α²).
"""

import pytest
import torch

from models.dln import DLN, SyntheticDLNData, make_true_params, true_lambda
from sgld import estimate_llc

pytestmark = pytest.mark.slow  # minutes on 2 cores: `make check` leaves it out

WIDTHS = [4, 8, 8]  # 4 -> 4 -> 8 -> 8 at rank 1 (the `demo` configuration): lambda = 10


def _mse(output, target):
    return ((output - target) ** 2).mean()


def _lambdahat(matrices, data):
    # Rescaling by 1/2 makes the point four times stiffer along W1: 10,000 steps let it settle.
    model = DLN(4, WIDTHS).set_matrices(matrices)
    return estimate_llc(model, _mse, data, epsilon="auto", num_steps=10_000, num_burnin_steps=5000,
                        num_chains=8, batch_size=100, seed=0)


@pytest.fixture(scope="module")
def teacher():
    matrices = make_true_params(4, WIDTHS, "low_rank", rank=1, generator=torch.Generator().manual_seed(0))
    data = SyntheticDLNData(DLN(4, WIDTHS).set_matrices(matrices).product(), 10_000, seed=1)
    return matrices, data, _lambdahat(matrices, data)


@pytest.mark.parametrize("alpha", [0.5, 2.0])
def test_lambdahat_is_invariant_under_dln_rescaling(teacher, alpha):
    matrices, data, base = teacher
    lam, _ = true_lambda(1, 4, WIDTHS)
    rescaled = [matrices[0] * alpha, matrices[1] / alpha, matrices[2]]
    assert torch.allclose(DLN(4, WIDTHS).set_matrices(rescaled).product(),
                          DLN(4, WIDTHS).set_matrices(matrices).product(), atol=1e-5)
    moved = _lambdahat(rescaled, data)
    assert base.lambdahat == pytest.approx(lam, rel=0.10)
    assert moved.lambdahat == pytest.approx(lam, rel=0.10)
    assert moved.lambdahat == pytest.approx(base.lambdahat, rel=0.10)
