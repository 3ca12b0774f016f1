"""Argument checks for the estimator's entry points: a ``ValueError`` that names the argument and its range."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["check_int", "check_nonnegative", "check_positive"]


def check_positive(name: str, value: float) -> None:
    """Accept a finite number > 0.

    Args:
        name: The argument's name, for the message.
        value: Its value.

    Raises:
        ValueError: If ``value`` is not a finite number > 0.
    """
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def check_nonnegative(name: str, value: float) -> None:
    """Accept a finite number >= 0.

    Args:
        name: The argument's name, for the message.
        value: Its value.

    Raises:
        ValueError: If ``value`` is not a finite number >= 0.
    """
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


def check_int(name: str, value: int, low: int, high: int | None = None) -> None:
    """Accept an integer (not a bool) in ``[low, high]``.

    Args:
        name: The argument's name, for the message.
        value: Its value.
        low: Smallest accepted value.
        high: Largest accepted value; None for no bound.

    Raises:
        ValueError: If ``value`` is not an integer in range.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
        high is not None and value > high
    ):
        accepted = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ValueError(f"{name} must be an integer {accepted}, got {value!r}")
