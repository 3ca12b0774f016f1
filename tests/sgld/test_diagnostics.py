"""Split-R̂ and ESS on processes whose answers are known (``sgld.diagnostics``; λ̂ from losses by doctest)."""


import numpy as np
import pytest

from sgld import ess, rhat


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
