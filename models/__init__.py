"""Model zoo: every model family in one registry.

Each family lives in its own module with the known learning coefficient (where one is known)
beside the model, with a citation. Build any model by name::

    >>> from models import make_model
    >>> model = make_model("minimally_singular", d=10, r=2)
    >>> sum(p.numel() for p in model.parameters())
    10
"""

from collections.abc import Callable
from importlib import import_module

import torch.nn as nn

__all__ = ["MODELS", "make_model"]

# name -> "module:callable"; resolved lazily so that importing the registry never pulls in
# torchvision or other heavy dependencies a caller does not need.
MODELS: dict[str, str] = {
    "minimally_singular": "models.toy:MinimallySingular",
    "normal_crossing": "models.toy:NormalCrossing",
    "rrr": "models.toy:ReducedRankRegression",
    "dln": "models.dln:DLN",
    "mlp": "models.mlp:MLP",
    "resnet18": "models.resnet:resnet18",
    "mnas": "models.mnas:mnas",
}


def _resolve(name: str) -> Callable[..., nn.Module]:
    module_name, attr = MODELS[name].split(":")
    return getattr(import_module(module_name), attr)


def make_model(name: str, **kwargs) -> nn.Module:
    """Build a registered model.

    Args:
        name: A key of ``MODELS``.
        **kwargs: The model's own constructor arguments.

    Returns:
        The constructed ``nn.Module``.

    Raises:
        ValueError: If ``name`` is not registered.
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {sorted(MODELS)}")
    return _resolve(name)(**kwargs)
