"""A small MnasNet-style CNN for 28 and 32 px images with 1 or 3 channels (the SGD-noise study's ``mnas``).

Architecture after Tan et al. (2019), "MnasNet: Platform-aware neural architecture search for
mobile", CVPR, Fig. 7, scaled down for small images as in the SGD-noise study (Sclocchi et al.
2023, "Dissecting the effects of SGD noise in distinct regimes of deep learning", ICML; its
``--arch mnas --h 64 --L 1``): a 3×3 stem (stride 1, so a 28 px image keeps its detail), a
depthwise-separable block, three stages of inverted-residual blocks (MobileNetV2, Sandler et al.
2018: 1×1 expansion, k×k depthwise, 1×1 linear projection, residual when the shape is kept) with
channels (h, 2h, 4h), expansions (3, 3, 6), kernels (3, 5, 3) and stride 2 each (28 → 14 → 7 → 4
px, 32 → 16 → 8 → 4), a 1×1 head convolution to 8h channels, global average pooling and a linear
classifier. ``h`` sets the width and ``depth`` the blocks per stage (the reference's ``L``). The
blocks are written here rather than taken from torchvision's private ``mnasnet._InvertedResidual``,
which always has BatchNorm and a fixed activation.
"""

import torch
import torch.nn as nn

from models.mlp import ACTIVATIONS

__all__ = ["MNAS", "InvertedResidual", "mnas"]

# (expansion, kernel, channel multiple of h) per stage, each stage starting with stride 2.
STAGES = ((3, 3, 1), (3, 5, 2), (6, 3, 4))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1, *, batch_norm: bool,
          activation: str | None) -> list[nn.Module]:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=kernel // 2, groups=groups,
                                         bias=not batch_norm)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(c_out))
    if activation is not None:
        layers.append(ACTIVATIONS[activation]())
    return layers


class InvertedResidual(nn.Module):
    """1×1 expansion, k×k depthwise, 1×1 linear projection; plus the input when the shape is kept.

    Args:
        c_in: Input channels.
        c_out: Output channels.
        kernel: Depthwise kernel size (odd).
        stride: Depthwise stride.
        expansion: Hidden channels = ``expansion · c_in``.
        batch_norm: BatchNorm after each convolution.
        activation: A key of ``models.mlp.ACTIVATIONS``, after the first two convolutions.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int, batch_norm: bool,
                 activation: str) -> None:
        super().__init__()
        hidden = c_in * expansion
        self.residual = stride == 1 and c_in == c_out
        self.layers = nn.Sequential(
            *_conv(c_in, hidden, 1, batch_norm=batch_norm, activation=activation),
            *_conv(hidden, hidden, kernel, stride, groups=hidden, batch_norm=batch_norm, activation=activation),
            *_conv(hidden, c_out, 1, batch_norm=batch_norm, activation=None),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The block, with the residual connection when input and output shapes agree.

        Args:
            x: Feature map ``(batch, c_in, H, W)``.

        Returns:
            Feature map ``(batch, c_out, H / stride, W / stride)`` (rounded up).
        """
        out = self.layers(x)
        return out + x if self.residual else out


class MNAS(nn.Module):
    """Stem, separable block, three inverted-residual stages, head convolution, pooling, linear classifier.

    Args:
        in_channels: Image channels (1 or 3).
        num_classes: Output dimension.
        h: Width: channels of the stem and first stage (stages h, 2h, 4h; head 8h).
        depth: Inverted-residual blocks per stage (the first with stride 2).
        activation: A key of ``models.mlp.ACTIVATIONS``.
        batch_norm: BatchNorm after each convolution.
    """

    def __init__(self, in_channels: int, num_classes: int, h: int, depth: int, activation: str,
                 batch_norm: bool) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            *_conv(in_channels, h, 3, batch_norm=batch_norm, activation=activation),
            *_conv(h, h, 3, groups=h, batch_norm=batch_norm, activation=activation),  # depthwise separable
            *_conv(h, h, 1, batch_norm=batch_norm, activation=None),
        )
        blocks, c_in = [], h
        for expansion, kernel, mult in STAGES:
            for j in range(depth):
                blocks.append(InvertedResidual(c_in, mult * h, kernel, 2 if j == 0 else 1, expansion, batch_norm,
                                               activation))
                c_in = mult * h
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Sequential(*_conv(c_in, 8 * h, 1, batch_norm=batch_norm, activation=activation))
        self.fc = nn.Linear(8 * h, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(batch, in_channels, H, W)``.

        Args:
            x: Images.

        Returns:
            Logits of shape ``(batch, num_classes)``.
        """
        return self.fc(self.head(self.stages(self.stem(x))).mean(dim=(2, 3)))


def mnas(num_classes: int = 10, in_channels: int = 3, h: int = 64, depth: int = 1, activation: str = "relu",
         batch_norm: bool = True) -> MNAS:
    """The MnasNet-style CNN of the module docstring.

    Args:
        num_classes: Output dimension (1 for a binary task with ±1 targets).
        in_channels: Image channels.
        h: Width (the reference's ``--h``).
        depth: Blocks per stage (the reference's ``--L``).
        activation: A key of ``models.mlp.ACTIVATIONS`` (the reference's ``--act``).
        batch_norm: BatchNorm after each convolution.

    Returns:
        The network.

    Raises:
        ValueError: For a count below 1 or an unknown activation.

    Example:
        >>> model = mnas(num_classes=1, in_channels=1, h=4)
        >>> model(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 1])
    """
    for key, v in (("num_classes", num_classes), ("in_channels", in_channels), ("h", h), ("depth", depth)):
        if not isinstance(v, int) or v < 1:
            raise ValueError(f"{key} must be an int >= 1, got {v!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
    return MNAS(in_channels, num_classes, h, depth, activation, batch_norm)
