"""The MnasNet-style CNN (``models.mnas``): shapes for 1×28×28 and 3×32×32, width, blocks, a training step."""

import pytest
import torch

from models import make_model
from models.mnas import InvertedResidual, mnas


@pytest.mark.parametrize(("channels", "px", "classes"), [(1, 28, 1), (3, 32, 10), (1, 32, 2), (3, 28, 10)])
def test_output_shape_for_small_images(channels, px, classes):
    model = make_model("mnas", num_classes=classes, in_channels=channels, h=4)
    assert model(torch.zeros(3, channels, px, px)).shape == (3, classes)


def test_width_and_depth_set_the_size():
    small, wide, deep = mnas(h=4), mnas(h=8), mnas(h=4, depth=2)
    count = [sum(p.numel() for p in m.parameters()) for m in (small, wide, deep)]
    assert count[0] < count[1] and count[0] < count[2]
    assert sum(isinstance(m, InvertedResidual) for m in deep.modules()) == 6
    assert sum(m.residual for m in deep.modules() if isinstance(m, InvertedResidual)) == 3  # the stride-1 repeats
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in mnas(h=4, batch_norm=False).modules())


def test_a_training_step_lowers_the_loss():
    torch.manual_seed(0)
    model = mnas(num_classes=10, in_channels=3, h=4, batch_norm=False)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(("kwargs", "message"), [(dict(h=0), "h must be an int >= 1"),
                                                 (dict(activation="swish"), "unknown activation 'swish'")])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        mnas(**kwargs)
