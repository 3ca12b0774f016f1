"""The result (``sgld.result``): burn-in left out of λ̂ but kept in the trace, settings carried, JSON-serialisable."""

import json
import math

import numpy as np
import pytest
from torch import nn

from sgld import estimate_llc, llc_from_losses
from tests.sgld.problems import linear_problem


def test_burn_in_is_kept_in_trace_but_not_in_estimate():
    model, x, y = linear_problem(n=200)
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-3, num_steps=40, num_chains=2,
                       batch_size=16, num_burnin_steps=10)
    assert res.loss_trace.shape == (2, 40)
    expected = llc_from_losses(res.loss_trace, res.init_loss, res.nbeta, num_burnin_steps=10)
    np.testing.assert_allclose(res.lambdahat_per_chain, expected)
    assert res.lambdahat == pytest.approx(expected.mean())
    assert res.lambdahat != pytest.approx(llc_from_losses(res.loss_trace, res.init_loss, res.nbeta).mean())


def test_result_carries_its_settings_and_serialises():
    model, x, y = linear_problem(n=100)
    res = estimate_llc(model, nn.functional.mse_loss, (x, y), epsilon=1e-3, gamma=2.0, num_steps=20,
                       num_chains=2, batch_size=10, seed=4)
    d = json.loads(json.dumps(res.to_dict()))
    assert d["n"] == 100 and d["nbeta"] == pytest.approx(100 / math.log(100))
    assert (d["epsilon"], d["gamma"], d["batch_size"], d["seed"]) == (1e-3, 2.0, 10, 4)
    assert d["loss_trace_minibatch"] is True and "batches of 10" in d["init_loss_method"]
    assert len(d["lambdahat_per_chain"]) == 2 and len(d["lambdahat_quarters"]) == 4
    assert "loss_trace" not in d
