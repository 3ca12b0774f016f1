"""Fully connected ReLU (or other activation) network.

f(x) = A_L σ(⋯ σ(A_1 x + b_1) ⋯) + b_L: the feed-forward network of Lau et al. (2023) and
Furman & Lau (2024). No closed-form λ is known for it; use it for LLC estimates at trained points.
"""

from collections.abc import Sequence

import torch
import torch.nn as nn

__all__ = ["ACTIVATIONS", "MLP", "random_mlp", "teacher_data"]

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
        for h_in, h_out in zip(dims[:-2], dims[1:-1], strict=True):
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


def random_mlp(
    input_dim: int,
    hidden_widths: Sequence[int],
    output_dim: int,
    generator: torch.Generator,
    num_copies: int = 0,
) -> MLP:
    """A ReLU MLP with biases, entries N(0, 1/fan_in), optionally with a built-in degeneracy.

    With ``num_copies = k``, first-layer units 1, …, k are copies of unit 0 (same weights and bias):
    the k + 1 units compute one feature, so only the sum of their outgoing weights matters and the
    parameter is a more degenerate (singular) point than a generic one.

    Args:
        input_dim: Input dimension.
        hidden_widths: Hidden widths (at least one layer when ``num_copies > 0``).
        output_dim: Output dimension.
        generator: Source of the entries.
        num_copies: How many first-layer units copy unit 0, 0 ≤ k < first width.

    Returns:
        The network (a teacher: realisable targets are its outputs).

    Raises:
        ValueError: If ``num_copies`` does not fit the first hidden layer.

    Example:
        >>> net = random_mlp(3, [5], 2, torch.Generator().manual_seed(0), num_copies=2)
        >>> bool((net.net[0].weight[0] == net.net[0].weight[2]).all())
        True
    """
    model = MLP(input_dim, hidden_widths, output_dim)
    width = hidden_widths[0] if len(hidden_widths) else 0
    if isinstance(num_copies, bool) or not isinstance(num_copies, int) or not 0 <= num_copies < max(width, 1):
        raise ValueError(f"num_copies must be an int in [0, {max(width - 1, 0)}] (first hidden width {width}), "
                         f"got {num_copies!r}")
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, nn.Linear):
                std = layer.in_features**-0.5
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * std)
                layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * std)
        first = model.net[0]
        first.weight[1 : num_copies + 1] = first.weight[0]
        first.bias[1 : num_copies + 1] = first.bias[0]
    return model


def teacher_data(teacher: nn.Module, n: int, input_dim: int, bound: float,
                 generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw n inputs uniform on the box [−bound, bound]^input_dim and the teacher's outputs (realisable data).

    Args:
        teacher: The true network.
        n: Number of samples.
        input_dim: Input dimension.
        bound: Half-width of the box.
        generator: Source of the inputs.

    Returns:
        ``(x, y)`` with y = teacher(x), no gradient.

    Example:
        >>> x, y = teacher_data(nn.Linear(2, 1), 5, 2, 10.0, torch.Generator().manual_seed(0))
        >>> x.shape, y.shape, bool(x.abs().max() <= 10)
        (torch.Size([5, 2]), torch.Size([5, 1]), True)
    """
    x = (torch.rand(n, input_dim, generator=generator) * 2 - 1) * bound
    with torch.no_grad():
        return x, teacher(x)
