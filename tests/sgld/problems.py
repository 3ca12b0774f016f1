"""Small problems the estimator's tests share."""

import torch
from torch import nn


def linear_problem(n: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.randn(3, 2, generator=g) + torch.randn(n, 2, generator=g)
    model = nn.Linear(3, 2, bias=False)
    with torch.no_grad():  # w* = the least-squares fit, a minimum of L_n as in the paper's setting
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)
    return model, x, y


def noisy_targets(n: int = 1000):
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, generator=g), torch.randn(n, 1, generator=g)
