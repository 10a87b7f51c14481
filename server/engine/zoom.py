"""The zoom animation: each frame is the previous dream moved (zoomed, turned, shifted) and dreamed
again. It knows nothing of gRPC.

The first frame is the dream of the request's picture (or noise); every next
frame starts from the last dream moved by the same affine step, so the dream
keeps growing out of itself as the camera flies into it. A few ascent steps per
frame are enough: each frame inherits all the dreaming of the frames before it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

from dreamstream.server.engine.loop import DreamEngine
from dreamstream.server.engine.motion import affine
from dreamstream.server.engine.plan import DreamPlan
from dreamstream.server.engine.request import DreamSpec
from dreamstream.server.engine.video import DreamedFrame, StepListener, final_image, starting_from
from dreamstream.server.refusals import InvalidRequest

DEFAULT_ZOOM = 1.05
MIN_ZOOM, MAX_ZOOM = 0.5, 2.0
MAX_FRAMES = 1000
MAX_ROTATE = 180.0


@dataclass(frozen=True)
class ZoomSpec:
    """A zoom animation as asked for; None means the default."""

    dream: DreamSpec
    frames: int
    zoom: float | None = None
    rotate: float = 0.0
    shift: tuple[float, float] = (0.0, 0.0)  # (x, y) pixels the view moves per frame


@dataclass(frozen=True)
class ZoomPlan:
    """A checked zoom animation: the first frame's dream plan and the move between frames."""

    first: DreamPlan
    frames: int
    zoom: float
    rotate: float
    shift: tuple[float, float]


def plan_zoom(spec: ZoomSpec, engine: DreamEngine) -> ZoomPlan:
    """Check `spec`; raises a Refusal that says what to change."""
    if not (1 <= spec.frames <= MAX_FRAMES):
        raise InvalidRequest(
            f"frames {spec.frames} is out of range: make 1 to {MAX_FRAMES} frames",
            reason="OUT_OF_RANGE",
            field="frames",
        )
    zoom = DEFAULT_ZOOM if spec.zoom is None else spec.zoom
    if not (MIN_ZOOM <= zoom <= MAX_ZOOM):
        raise InvalidRequest(
            f"zoom {zoom} is out of range: use {MIN_ZOOM} to {MAX_ZOOM} (above 1 zooms in)",
            reason="OUT_OF_RANGE",
            field="zoom",
        )
    if not (-MAX_ROTATE <= spec.rotate <= MAX_ROTATE):
        raise InvalidRequest(
            f"rotate {spec.rotate} is out of range: use -{MAX_ROTATE:g} to {MAX_ROTATE:g} degrees",
            reason="OUT_OF_RANGE",
            field="rotate",
        )
    first = engine.plan(spec.dream)
    height, width = first.size
    for name, value, side in (("shift_x", spec.shift[0], width), ("shift_y", spec.shift[1], height)):
        if not (math.isfinite(value) and abs(value) < side):
            raise InvalidRequest(
                f"{name} {value} is out of range: move less than the picture's {side} px per frame",
                reason="OUT_OF_RANGE",
                field=name,
            )
    return ZoomPlan(first=first, frames=spec.frames, zoom=zoom, rotate=spec.rotate, shift=spec.shift)


def zoom_frames(
    engine: DreamEngine, plan: ZoomPlan, cancel: threading.Event | None = None, on_step: StepListener | None = None
) -> Iterator[DreamedFrame]:
    """Dream the frames one after the other, each as soon as it is made; `on_step` hears each step."""
    layers = dict(plan.first.params.layers)
    image = None
    for index in range(plan.frames):
        began = time.perf_counter()
        dream = plan.first
        if image is not None:
            dream = starting_from(plan.first, affine(image, plan.zoom, plan.rotate, plan.shift))
        image = final_image(engine.run(dream, cancel), on_step)
        yield DreamedFrame(index=index, image=image, blend=0.0, layers=layers, elapsed=time.perf_counter() - began)
