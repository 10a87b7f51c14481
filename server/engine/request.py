"""A dream as asked for (`DreamSpec`) and its checked parameters (`DreamParams`).

`DreamSpec` is the transport-free form of a request: whatever the caller left
out is None, meaning "the default". `DreamParams` holds every value resolved
and in range; its defaults and limits are the ones written in dream.proto and
the README.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
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
MAX_LAP_LEVELS = 8
MAX_TV_WEIGHT = 100.0
MAX_OCTAVES_ABOVE = 4
MAX_REPEAT = 20
DEFAULT_CHANNEL_COUNT = 10


class ChannelMode(enum.Enum):
    """Which channels of each dreamed layer an automatic selection keeps, ranked by their
    mean activation on the picture (neural-dream's channel modes)."""

    STRONGEST = "strongest"
    WEAKEST = "weakest"
    AVERAGE = "average"  # the middle of the ranking


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
    # The dream controls: objective (guide, channels) and picture (colours, gradient, octaves).
    guide: bytes | None = field(default=None, repr=False)  # an encoded picture
    channels: Mapping[str, Sequence[int]] | None = None  # layer name -> the channels to dream on
    channel_mode: ChannelMode | None = None
    channel_count: int | None = None
    rank_channels_per_octave: bool = False
    original_colors: bool = False
    lap_levels: int | None = None
    tv_weight: float | None = None
    octaves_above: int | None = None
    return_largest: bool = False
    repeat: int | None = None
    # Tiling: None (or 0) lets the server tile pictures too large for its memory by itself.
    tile_size: int | None = None
    tile_overlap: int | None = None


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
    original_colors: bool = False
    lap_levels: int = 0  # 0: the gradient is normalised by its mean absolute value alone
    tv_weight: float = 0.0
    octaves_above: int = 0
    return_largest: bool = False
    repeat: int = 0  # rounds after the first

    @property
    def rounds(self) -> int:
        return self.repeat + 1

    def __post_init__(self) -> None:
        _check_range("octaves", self.octaves, 1, MAX_OCTAVES)
        _check_range("lap_levels", self.lap_levels, 0, MAX_LAP_LEVELS, "lap levels")
        _check_range("tv_weight", self.tv_weight, 0.0, MAX_TV_WEIGHT, "tv weight")
        _check_range("octaves_above", self.octaves_above, 0, MAX_OCTAVES_ABOVE, "octaves above")
        _check_range("repeat", self.repeat, 0, MAX_REPEAT)
        if self.return_largest and not self.octaves_above:
            raise InvalidRequest(
                "return_largest needs octaves_above: without octaves above the picture the largest "
                "octave is the picture's own size",
                field="return_largest",
            )
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
        # Channels chosen for layers the spec does not weigh name the layers to dream on.
        layers=dict(spec.layers or {name: 1.0 for name in spec.channels or {}} or default_layers),
        octaves=chosen(spec.octaves, DEFAULT_OCTAVES),
        octave_scale=chosen(spec.octave_scale, DEFAULT_OCTAVE_SCALE),
        steps_per_octave=chosen(spec.steps_per_octave, DEFAULT_STEPS_PER_OCTAVE),
        step_size=chosen(spec.step_size, DEFAULT_STEP_SIZE),
        jitter=chosen(spec.jitter, DEFAULT_JITTER),
        seed=spec.seed,
        original_colors=spec.original_colors,
        lap_levels=chosen(spec.lap_levels, 0),
        tv_weight=chosen(spec.tv_weight, 0.0),
        octaves_above=chosen(spec.octaves_above, 0),
        return_largest=spec.return_largest,
        repeat=chosen(spec.repeat, 0),
    )
