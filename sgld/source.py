"""The n training samples behind one interface: minibatches of any index shape, and the data in order.

Accepts a pair of tensors ``(x, y)``, a ``TensorDataset`` of two tensors, any object with ``__len__``
and ``get_batch(idx) -> (x, y)`` (synthetic data made on the fly), or a generic torch ``Dataset``
of ``(x, y)`` items (correct but slow: one item at a time).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor

__all__ = ["Data", "DataSource"]

Data = Any  # (x, y) tensors, a torch Dataset, or an object with __len__ and get_batch(idx)


class DataSource:
    """Uniform minibatch access to tensors, Datasets, or objects with ``get_batch``.

    Args:
        data: The samples, in one of the forms of the module docstring.
        device: Where batches are returned (tensors are moved there once).

    Raises:
        ValueError: For another form, x and y of different lengths, or no samples.
    """

    def __init__(self, data: Data, device: torch.device) -> None:
        self.source = data
        if isinstance(data, (tuple, list)):
            if len(data) != 2 or not all(isinstance(t, Tensor) for t in data):
                raise ValueError("data must be a pair of tensors (x, y), a torch Dataset, or an object with get_batch")
            x, y = data
            if len(x) != len(y):
                raise ValueError(f"data: x and y must have the same length, got {len(x)} and {len(y)}")
            self.x, self.y = x.to(device), y.to(device)
        elif isinstance(data, torch.utils.data.TensorDataset) and len(data.tensors) == 2:
            self.x, self.y = (t.to(device) for t in data.tensors)
        elif hasattr(data, "get_batch"):
            self.fetch = lambda idx: tuple(t.to(device) for t in data.get_batch(idx))
        elif hasattr(data, "__getitem__") and hasattr(data, "__len__"):
            self.fetch = self._stack_items
        else:
            raise ValueError(
                f"data must be a pair of tensors (x, y), a torch Dataset, or have get_batch; got {type(data).__name__}"
            )
        self.n = len(data[0]) if isinstance(data, (tuple, list)) else len(data)
        self.device = device
        if self.n == 0:
            raise ValueError("data is empty: estimate_llc needs at least 2 samples")

    def _stack_items(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        # Generic Dataset: one item at a time. Correct but slow; prefer tensors or get_batch.
        items = [self.source[int(i)] for i in idx.reshape(-1).tolist()]
        x = torch.stack([torch.as_tensor(it[0]) for it in items]).to(self.device)
        y = torch.stack([torch.as_tensor(it[1]) for it in items]).to(self.device)
        return x.reshape(*idx.shape, *x.shape[1:]), y.reshape(*idx.shape, *y.shape[1:])

    def batch(self, idx: Tensor) -> tuple[Tensor, Tensor]:
        """The samples at some indices.

        Args:
            idx: Indices of any shape S.

        Returns:
            ``(x, y)`` of shapes (*S, ...).
        """
        flat = idx.reshape(-1)
        if hasattr(self, "x"):  # index_select: about half the cost of x[idx] for small batches on CPU
            x, y = self.x.index_select(0, flat), self.y.index_select(0, flat)
        else:
            x, y = self.fetch(flat)
        return x.reshape(*idx.shape, *x.shape[1:]), y.reshape(*idx.shape, *y.shape[1:])

    def chunks(self, size: int) -> Iterator[Tensor]:
        """Consecutive index blocks covering the data once.

        Args:
            size: Indices per block (the last may be shorter).

        Yields:
            Index tensors ``[start, start + size)``.
        """
        for start in range(0, self.n, size):
            yield torch.arange(start, min(start + size, self.n), device=self.device)

