"""The error every weight reader raises, and the check the recipes run on each weight they take."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence

import numpy as np


class WeightsError(ValueError):
    """A weight file cannot be read, or does not hold the weights a backbone needs."""


def require(
    weights: Mapping[str, np.ndarray],
    key: str,
    shape: Sequence[int | None],
    source: str | None = None,
) -> np.ndarray:
    """Return `weights[key]` after checking that it exists and has `shape`.

    A `None` in `shape` accepts any size on that axis. Raises `WeightsError`
    naming the missing key (with the closest keys present), or
    "layer KEY: expected shape (...), got (...)". `source`, when given (a file
    name), starts the message.
    """
    prefix = f"{source}: " if source else ""
    if key not in weights:
        close = difflib.get_close_matches(key, list(weights), n=3)
        hint = f" (closest present: {', '.join(close)})" if close else ""
        raise WeightsError(f"{prefix}missing weight {key!r}, expected shape {_format_shape(tuple(shape))}{hint}")
    array = weights[key]
    expected = tuple(shape)
    if array.ndim != len(expected) or any(
        e is not None and e != got for e, got in zip(expected, array.shape, strict=False)
    ):
        raise WeightsError(
            f"{prefix}layer {key}: expected shape {_format_shape(expected)}, got {_format_shape(array.shape)}"
        )
    return array


def _format_shape(shape: Sequence[int | None]) -> str:
    dims = ["?" if d is None else str(d) for d in shape]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
