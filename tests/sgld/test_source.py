"""The forms of ``data`` are the same data (``sgld.source``)."""


import numpy as np
import torch
from torch import nn

from sgld import estimate_llc
from tests.sgld.problems import linear_problem


def test_data_forms_agree():
    """Tensors, a TensorDataset, a generic Dataset and a get_batch object are the same data."""
    model, x, y = linear_problem(n=64)

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
