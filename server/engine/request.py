"""A dream as asked for (`DreamSpec`) and its checked parameters (`DreamParams`).

`DreamSpec` is the transport-free form of a request: whatever the caller left
out is None, meaning "the default". `DreamParams` holds every value resolved
and in range; its defaults and limits are the ones written in dream.proto and
the README.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dreamstream.server.refusals import InvalidRequest
from dreamstream.wire import DEFAULT_FORMAT, ImageFormat

DEFAULT_OCTAVES = 4
DEFAULT_OCTAVE_SCALE = 1.4
DEFAULT_STEPS_PER_OCTAVE = 10
DEFAULT_STEP_SIZE = 0.01
DEFAULT_JITTER = 32
DEFAULT_MAX_SIZE = 1024

MAX_OCTAVES = 12
MAX_STEPS_PER_OCTAVE = 1000
MAX_OCTAVE_SCALE = 4.0
MAX_STEP_SIZE = 1.0
MAX_JITTER = 1024


@dataclass(frozen=True)
class DreamSpec:
    """What a caller asks for. None (or an empty string) means the default.

    The picture is `image` (encoded bytes, decoded only once the dream is admitted),
    or `pixels` (an HxWx3 float32 RGB array in [0, 1], for callers in the same
    process), or neither, with `noise_size` (height, width) to dream on seeded noise.
    """

    image: bytes | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)
    noise_size: tuple[int, int] | None = None
    model: str = ""
    layers: Mapping[str, float] | None = None
    octaves: int | None = None
    octave_scale: float | None = None
    steps_per_octave: int | None = None
    step_size: float | None = None
    jitter: int | None = None
    seed: int = 0
    max_size: int | None = None
    frame_format: ImageFormat = DEFAULT_FORMAT


@dataclass(frozen=True)
class DreamParams:
    """How to dream, every value resolved and checked. `layers` maps layer names to weights."""

    layers: Mapping[str, float]
    octaves: int = DEFAULT_OCTAVES
    octave_scale: float = DEFAULT_OCTAVE_SCALE
    steps_per_octave: int = DEFAULT_STEPS_PER_OCTAVE
    step_size: float = DEFAULT_STEP_SIZE
    jitter: int = DEFAULT_JITTER
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("octaves", self.octaves, 1, MAX_OCTAVES)
        _check_range("octave_scale", self.octave_scale, 1.0, MAX_OCTAVE_SCALE)
        _check_range("steps_per_octave", self.steps_per_octave, 1, MAX_STEPS_PER_OCTAVE, "steps per octave")
        _check_range("jitter", self.jitter, 0, MAX_JITTER)
        if not (0 < self.step_size <= MAX_STEP_SIZE):
            raise InvalidRequest(
                f"step_size {self.step_size} is out of range: use a value above 0 and at most "
                f"{MAX_STEP_SIZE} (default {DEFAULT_STEP_SIZE})",
                reason="OUT_OF_RANGE",
                field="step_size",
            )


def _check_range(field_name: str, value: float, low: float, high: float, label: str | None = None) -> None:
    # `not (low <= value <= high)` also refuses NaN.
    if not (low <= value <= high):
        raise InvalidRequest(
            f"{label or field_name} {value} is out of range: use {low} to {high}",
            reason="OUT_OF_RANGE",
            field=field_name,
        )


def resolve_params(spec: DreamSpec, default_layers: Mapping[str, float]) -> DreamParams:
    """The spec's parameters with every default filled in; DreamParams checks the ranges."""

    def chosen(value, default):
        return default if value is None else value

    return DreamParams(
        layers=dict(spec.layers or default_layers),
        octaves=chosen(spec.octaves, DEFAULT_OCTAVES),
        octave_scale=chosen(spec.octave_scale, DEFAULT_OCTAVE_SCALE),
        steps_per_octave=chosen(spec.steps_per_octave, DEFAULT_STEPS_PER_OCTAVE),
        step_size=chosen(spec.step_size, DEFAULT_STEP_SIZE),
        jitter=chosen(spec.jitter, DEFAULT_JITTER),
        seed=spec.seed,
    )
