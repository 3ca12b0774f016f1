r"""Where every chain starts: the checks at :math:`w^*` before any step, and :math:`L_n(w^*)`.

A model that does not accept the data, a loss that is not a scalar, or a loss that is NaN or
infinite at :math:`w^*` is a ``ValueError`` here, before any chain runs, with a message that names
the shapes or the parameters involved.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor

from sgld.potential import Potential
from sgld.source import DataSource

__all__ = ["checked_init_loss", "probe"]


def probe(potential: Potential, data: DataSource) -> None:
    """Fail early, with a clear message, if the model does not accept the data; then pick the forward path.

    Evaluates the loss and its gradient at w* on two samples. A gradient that is NaN where the loss
    is finite sets ``potential.nan_grad_to_zero`` (with a ``RuntimeWarning``); a model that is a
    chain of Linear layers gets the batched path (:meth:`Potential.verify_linear_layers`).

    Args:
        potential: The potential at w*.
        data: The samples.

    Raises:
        ValueError: If the model or loss_fn fails on the data, the loss is not a scalar, or the loss
            at w* is not finite (naming the parameters involved).
    """
    idx = torch.arange(min(2, data.n), device=data.device)
    x, y = data.batch(idx)
    try:
        value = potential.loss(potential.w_star, x, y)
    except Exception as err:  # the user's model/loss raised: say which inputs it got
        raise ValueError(
            f"model/data shape mismatch: loss_fn(model(x), y) failed for x of shape {tuple(x.shape)} "
            f"and y of shape {tuple(y.shape)}: {err}"
        ) from err
    if value.ndim != 0:
        raise ValueError(
            f"loss_fn must return the mean loss as a scalar, got shape {tuple(value.shape)}; use reduction='mean'"
        )
    if not torch.isfinite(value):
        _raise_nonfinite_loss(potential, float(value), x, y)
    bad = _gradient(potential, x, y).isnan()
    if bool(bad.any()):
        # The loss is finite but autograd is not: typically 0·∞ in the derivative of a factor like
        # w⁰ at w = 0, whose true derivative is 0. Everywhere else the gradient is finite, so the
        # NaN entries are taken as 0 (the limit) rather than letting every chain diverge at step 0.
        potential.nan_grad_to_zero = True
        warnings.warn(
            f"the gradient of the loss at w* is NaN in {potential.block_names(bad)} although the loss is finite "
            f"({float(value):.4g}); NaN gradient entries are taken as 0 (the limit of a removable singularity "
            "such as d/dw w^0 at w = 0).",
            RuntimeWarning,
            stacklevel=3,
        )
    potential.verify_linear_layers(x)


def _gradient(potential: Potential, x: Tensor, y: Tensor) -> Tensor:
    """The plain autograd gradient of the loss on one batch at w*, NaNs kept.

    Args:
        potential: The potential.
        x: Inputs of one batch.
        y: Its targets.

    Returns:
        (d,) gradient.
    """
    with torch.enable_grad():
        leaf = potential.w_star.detach().clone().requires_grad_()
        (g,) = torch.autograd.grad(potential.loss(leaf, x, y), leaf, allow_unused=True, materialize_grads=True)
    return g


def _raise_nonfinite_loss(potential: Potential, value: float, x: Tensor, y: Tensor) -> None:
    """A loss that is NaN/inf at w* itself: no chain can start there. Say which parameters produced it.

    Args:
        potential: The potential.
        value: The loss at w*.
        x: Inputs of the batch that gave it.
        y: Its targets.

    Raises:
        ValueError: Always, naming non-finite parameters or those the NaN flows through.
    """
    bad_values = potential.block_names(~torch.isfinite(potential.w_star))
    if bad_values:
        culprit = f"non-finite values in the parameters {bad_values}"
    else:
        try:
            touched = potential.block_names(~torch.isfinite(_gradient(potential, x, y)))
        except RuntimeError:
            touched = []
        culprit = (f"the NaN flows through the parameters {touched}" if touched
                   else f"all parameters {potential.names} are finite, so the model or loss_fn produces it")
    raise ValueError(
        f"the loss at w* is {value} ({culprit}); the chains start at w*, so the loss must be finite there: "
        "check the model's parameters and loss_fn(model(x), y) at w*"
    )


@torch.no_grad()
def _init_loss(potential: Potential, source: DataSource, batch_size: int) -> tuple[float, float]:
    """:math:`L_n(w^*)` over the full data in batches of m, and the sd of the full batches' means.

    Args:
        potential: The potential.
        source: The samples.
        batch_size: m.

    Returns:
        :math:`L_n(w^*)`, and the sd of the batch means (0 with fewer than two full batches).
    """
    means = []
    for idx in source.chunks(batch_size):
        x, y = source.batch(idx)
        means.append((float(potential.loss(potential.w_star, x, y)), len(idx)))
    init_loss = sum(v * k for v, k in means) / source.n
    full = [v for v, k in means if k == batch_size]
    return init_loss, float(np.std(full)) if len(full) > 1 else 0.0


def checked_init_loss(
    potential: Potential, source: DataSource, batch_size: int, full: bool
) -> tuple[float, float]:
    r""":math:`L_n(w^*)` and the minibatch loss's sd :math:`\sigma_m`, checked to be finite.

    Args:
        potential: The potential.
        source: The samples.
        batch_size: m (for full batch: n, computed in batches of up to 4096).
        full: Exact full batch.

    Returns:
        :math:`L_n(w^*)` and :math:`\sigma_m` (0 for full batch).

    Raises:
        ValueError: If :math:`L_n(w^*)` is NaN or infinite, naming the parameters involved.
    """
    init_loss, sigma_m = _init_loss(potential, source, min(batch_size, 4096) if full else batch_size)
    if not math.isfinite(init_loss):
        idx = next(source.chunks(min(batch_size, 4096)))
        _raise_nonfinite_loss(potential, init_loss, *source.batch(idx))  # raises ValueError
    return init_loss, 0.0 if full else sigma_m


