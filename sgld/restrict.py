r"""The restricted (weight-refined) posterior: which parameter tensors a chain samples.

Sampling a selection S of the parameters with the rest held at :math:`w^*` gives the posterior of
the restricted model :math:`w_S \mapsto L_n(w_S, w^*_{\bar S})`, and its λ̂ is
:math:`n\beta(\mathbb E[L_n(w)] - L_n(w^*))` with :math:`w = w^*` outside S: the "weight-refined"
LLC of a layer, block or head (Wang et al. 2024, "Differentiation and specialization of attention
heads via the refined local learning coefficient", arXiv:2410.02984). Two exact values test it
(``tests/sgld/test_restrict.py``): in the minimally singular model, sampling S gives
:math:`|S \cap \text{active}|/2`; in a deep linear network at a true parameter, sampling layer k
alone is a regular quadratic with :math:`\lambda = \operatorname{rank}(W_N \cdots W_{k+1})
\operatorname{rank}(W_{k-1} \cdots W_1)/2` (full-rank input covariance).

A selection (``restrict``) is given by parameter tensor, with the names of
``model.named_parameters()``:

* ``None``: every trainable parameter (the unrestricted posterior);
* a pattern or a list of patterns, matched with :func:`fnmatch.fnmatchcase` (``"layer3.*"``,
  ``["net.0.weight", "fc.*"]``); every pattern must match a trainable parameter;
* a boolean mask: ``{name: bool}`` (names left out are not sampled) or a sequence of bools, one per
  trainable parameter tensor in ``named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase

from torch import nn

__all__ = ["Restrict", "restrict_record", "select_parameters"]

Restrict = str | Sequence[str] | Mapping[str, bool] | Sequence[bool] | None


def select_parameters(model: nn.Module, restrict: Restrict) -> list[str]:
    """The names of the trainable parameters a selection samples, in ``named_parameters()`` order.

    Args:
        model: The model; its trainable parameters (tied ones once) are the candidates.
        restrict: The selection (see the module docstring).

    Returns:
        The selected names; all trainable names for ``None``.

    Raises:
        ValueError: If a pattern or name matches no trainable parameter, a mask has the wrong length
            or a non-bool entry, or the selection is empty; the message lists the parameter names.
        TypeError: If ``restrict`` is of another type.

    >>> select_parameters(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)), "2.*")
    ['2.weight', '2.bias']
    """
    names = [name for name, p in model.named_parameters() if p.requires_grad]
    if restrict is None:
        return names
    if isinstance(restrict, str):
        restrict = [restrict]
    if isinstance(restrict, (Mapping, Sequence)) and len(restrict) == 0:
        raise ValueError(f"restrict is empty: nothing to sample; the trainable parameters are {names}")
    if isinstance(restrict, Mapping):
        unknown = sorted(set(restrict) - set(names))
        if unknown:
            raise ValueError(f"restrict names unknown parameter {unknown[0]!r}; the trainable parameters are {names}")
        _check_bools(restrict.values(), names)
        chosen = [name for name in names if restrict.get(name, False)]
    elif isinstance(restrict, Sequence) and restrict and all(isinstance(v, str) for v in restrict):
        for pattern in restrict:
            if not any(fnmatchcase(name, pattern) for name in names):
                raise ValueError(f"restrict pattern {pattern!r} matches no trainable parameter; "
                                 f"the trainable parameters are {names}")
        chosen = [name for name in names if any(fnmatchcase(name, pattern) for pattern in restrict)]
    elif isinstance(restrict, Sequence):
        if len(restrict) != len(names):
            raise ValueError(f"restrict mask has {len(restrict)} entries but the model has {len(names)} trainable "
                             f"parameter tensors {names}; give one bool per tensor, or patterns")
        _check_bools(restrict, names)
        chosen = [name for name, keep in zip(names, restrict, strict=True) if keep]
    else:
        raise TypeError(f"restrict must be None, a name pattern, a list of patterns, a {{name: bool}} dict or a "
                        f"list of bools; got {type(restrict).__name__}")
    if not chosen:
        raise ValueError(f"restrict {restrict!r} selects no parameter: nothing to sample; "
                         f"the trainable parameters are {names}")
    return chosen


def _check_bools(values, names: list[str]) -> None:
    """Raise unless every mask entry is a bool.

    Raises:
        ValueError: Naming the first entry that is not a bool.
    """
    for v in values:
        if not isinstance(v, bool):
            raise ValueError(f"restrict mask entries must be bools, got {v!r}; the trainable parameters are {names}")


def restrict_record(restrict: Restrict) -> str | list | dict | None:
    """The selection as given, as plain JSON-serialisable values for ``LLCResult.restrict``.

    Args:
        restrict: The selection.

    Returns:
        None, a pattern, a list of patterns or bools, or a ``{name: bool}`` dict.
    """
    if restrict is None or isinstance(restrict, str):
        return restrict
    if isinstance(restrict, Mapping):
        return {str(k): bool(v) for k, v in restrict.items()}
    return list(restrict)
