"""ResNet18 with a width factor, CIFAR-style (3×3 stem, no max-pool), written for this repository.

Architecture of He et al. (2016), "Deep residual learning for image recognition", CVPR, §4.2
variant for 32×32 inputs: a 3×3 convolution stem, four stages of two basic blocks with base widths
(w, 2w, 4w, 8w), w = round(64 · ``width_factor``), strides (1, 2, 2, 2), global average pooling and
a linear classifier. Used by Lau et al. (2023) for λ̂ along SGD training on CIFAR-10.
"""

import torch
import torch.nn as nn

__all__ = ["BasicBlock", "ResNet", "resnet18"]


def _norm(channels: int, batch_norm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batch_norm else nn.Identity()


class BasicBlock(nn.Module):
    """Two 3×3 convolutions with a residual connection (1×1 projection when the shape changes).

    Args:
        c_in: Input channels.
        c_out: Output channels.
        stride: Stride of the first convolution and of the projection.
        batch_norm: Use ``BatchNorm2d`` after each convolution (else no normalisation).
    """

    def __init__(self, c_in: int, c_out: int, stride: int, batch_norm: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm)
        self.bn1 = _norm(c_out, batch_norm)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=not batch_norm)
        self.bn2 = _norm(c_out, batch_norm)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=not batch_norm), _norm(c_out, batch_norm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """relu(bn2(conv2(relu(bn1(conv1 x)))) + shortcut x).

        Args:
            x: Feature map ``(batch, c_in, H, W)``.

        Returns:
            Feature map ``(batch, c_out, H / stride, W / stride)``.
        """
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem, four stages of ``BasicBlock``s, average pool, linear head.

    Args:
        blocks_per_stage: Number of blocks in each of the four stages ((2, 2, 2, 2) for ResNet18).
        num_classes: Output dimension.
        base_width: Channels of the stem and first stage; stages double it.
        in_channels: Input image channels.
        batch_norm: Use batch normalisation.
    """

    def __init__(
        self,
        blocks_per_stage: tuple[int, ...],
        num_classes: int,
        base_width: int,
        in_channels: int,
        batch_norm: bool,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, base_width, 3, padding=1, bias=not batch_norm),
            _norm(base_width, batch_norm),
            nn.ReLU(),
        )
        stages, c_in = [], base_width
        for i, num_blocks in enumerate(blocks_per_stage):
            c_out = base_width * 2**i
            for j in range(num_blocks):
                stages.append(BasicBlock(c_in, c_out, 2 if (i > 0 and j == 0) else 1, batch_norm))
                c_in = c_out
        self.stages = nn.Sequential(*stages)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits for images ``x`` of shape ``(batch, in_channels, H, W)``.

        Args:
            x: Images.

        Returns:
            Logits of shape ``(batch, num_classes)``.
        """
        return self.head(self.stages(self.stem(x)).mean(dim=(2, 3)))


def resnet18(
    num_classes: int = 10, width_factor: float = 1.0, in_channels: int = 3, batch_norm: bool = True
) -> ResNet:
    """ResNet18 (blocks (2, 2, 2, 2)) with base width round(64 · ``width_factor``).

    Args:
        num_classes: Output dimension.
        width_factor: Multiplies every channel count; 1.0 is the standard 11.2M-parameter ResNet18.
        in_channels: Input image channels.
        batch_norm: Use batch normalisation (set False for a model whose loss is a function of the
            parameters alone, independent of the other samples in the batch).

    Returns:
        The network.

    Raises:
        ValueError: If ``width_factor`` gives a base width below 1 or a count is not positive.

    Example:
        >>> model = resnet18(width_factor=0.125)
        >>> model(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    base_width = round(64 * width_factor)
    if base_width < 1:
        raise ValueError(f"width_factor must give a base width 64 * width_factor >= 1, got {width_factor!r}")
    if num_classes < 1 or in_channels < 1:
        raise ValueError(f"num_classes and in_channels must be >= 1, got {num_classes} and {in_channels}")
    return ResNet((2, 2, 2, 2), num_classes, base_width, in_channels, batch_norm)
