"""Tests for the MLP and ResNet18 families and the registry."""

import pytest
import torch

from models import MODELS, make_model
from models.mlp import MLP
from models.resnet import resnet18


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_shapes_and_parameter_count() -> None:
    model = make_model("mlp", input_dim=5, hidden_widths=[7, 3], output_dim=2)
    assert model(torch.randn(4, 5)).shape == (4, 2)
    assert n_params(model) == (5 + 1) * 7 + (7 + 1) * 3 + (3 + 1) * 2
    assert n_params(MLP(5, [7, 3], 2, bias=False)) == 5 * 7 + 7 * 3 + 3 * 2
    assert n_params(MLP(5, [], 2)) == 6 * 2


def test_mlp_activation_changes_the_function() -> None:
    torch.manual_seed(0)
    relu = MLP(3, [16], 1, activation="relu")
    ident = MLP(3, [16], 1, activation="identity")
    ident.load_state_dict(relu.state_dict())
    x = torch.randn(64, 3)
    assert not torch.allclose(relu(x), ident(x))
    # identity activation: the network is affine, so it commutes with averaging inputs
    torch.testing.assert_close(ident(x).mean(0), ident(x.mean(0, keepdim=True))[0])


def test_mlp_unknown_activation_names_accepted_values() -> None:
    with pytest.raises(ValueError, match=r"unknown activation 'relu6'; choose from \['gelu', 'identity', 'relu'"):
        MLP(3, [4], 1, activation="relu6")


def test_resnet18_shapes_and_standard_size() -> None:
    model = make_model("resnet18", num_classes=7, width_factor=0.125, in_channels=1)
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)
    assert n_params(resnet18()) == pytest.approx(11.17e6, rel=0.01)  # standard CIFAR ResNet18


def test_resnet18_parameter_count_scales_quadratically_with_width() -> None:
    small, large = n_params(resnet18(width_factor=0.25)), n_params(resnet18(width_factor=0.5))
    assert 3.8 < large / small < 4.1  # convolutions dominate: channels² scaling


def test_resnet18_without_batch_norm_has_no_buffers() -> None:
    model = resnet18(width_factor=0.125, batch_norm=False)
    assert not list(model.buffers())
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_resnet18_rejects_zero_width() -> None:
    with pytest.raises(ValueError, match="width_factor must give a base width"):
        resnet18(width_factor=0.001)


def test_registry_unknown_name_lists_models() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'; choose from \[.*'dln'.*'resnet18'"):
        make_model("resnet50")
    assert {"dln", "mlp", "resnet18"} <= set(MODELS)
