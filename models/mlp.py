"""Fully connected ReLU (or other activation) network.

f(x) = A_L σ(⋯ σ(A_1 x + b_1) ⋯) + b_L: the feed-forward network of Lau et al. (2023) and
Furman & Lau (2024). No closed-form λ is known for it; use it for LLC estimates at trained points.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["ACTIVATIONS", "MLP"]

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "identity": nn.Identity,
}


class MLP(nn.Module):
    """Multilayer perceptron ``input_dim → hidden_widths… → output_dim``.

    Args:
        input_dim: Input dimension.
        hidden_widths: Widths of the hidden layers (may be empty: a linear model).
        output_dim: Output dimension.
        activation: Name in ``ACTIVATIONS``, applied after every hidden layer.
        bias: Whether every ``nn.Linear`` has a bias.

    Raises:
        ValueError: If ``activation`` is unknown or a dimension is not a positive int.

    Example:
        >>> model = MLP(4, [8, 8], 3)
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 3])
        >>> sum(p.numel() for p in model.parameters())  # (4+1)·8 + (8+1)·8 + (8+1)·3
        139
    """

    def __init__(
        self,
        input_dim: int,
        hidden_widths: Sequence[int],
        output_dim: int,
        activation: str = "relu",
        bias: bool = True,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        dims = [input_dim, *hidden_widths, output_dim]
        if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in dims):
            raise ValueError(f"dimensions must be positive ints, got input_dim={input_dim!r}, "
                             f"hidden_widths={list(hidden_widths)!r}, output_dim={output_dim!r}")
        layers: list[nn.Module] = []
        for h_in, h_out in zip(dims[:-2], dims[1:-1]):
            layers += [nn.Linear(h_in, h_out, bias=bias), ACTIVATIONS[activation]()]
        layers.append(nn.Linear(dims[-2], dims[-1], bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the network to ``x`` of shape ``(batch, input_dim)``.

        Args:
            x: Inputs; trailing dimensions beyond the first are flattened.

        Returns:
            Outputs of shape ``(batch, output_dim)``.
        """
        return self.net(x.flatten(1))
