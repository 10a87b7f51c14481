"""Dreaming a video, frame by frame, so that the dream stays put. It knows nothing of gRPC.

Each frame is dreamed like a picture, but it starts from the input frame blended
with the previous dreamed frame (`blend` is the previous dream's share): what the
last frame hallucinated is carried into the next, so the patterns persist
instead of flickering. With `flow`, the previous dream is first warped onto the
new frame along the dense optical flow between the two input frames, so the
patterns also move with the scene. The blend may be fixed, move back and forth
(`loop`) or be drawn at random, as the DeepDream video scripts do; a layer
schedule dreams frame i on the i-th layer of a list, round and round.

Every frame is planned on its own (`plan_dream`), so every limit of a dream
(picture size, model limits) applies to each frame.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from dreamstream.server.engine.loop import DreamEngine, DreamEvent, Octave, Step, seeded_generator
from dreamstream.server.engine.motion import dense_flow, warp
from dreamstream.server.engine.plan import DreamPlan, Start
from dreamstream.server.engine.request import DreamSpec
from dreamstream.server.refusals import InvalidRequest
from dreamstream.wire import ImageFormat

DEFAULT_WINDOW = 4
MAX_WINDOW = 32
MAX_BLEND = 0.95  # at 1 the input would never reach the output again
# `loop` and `random` keep the new frame's share between 1 and 0.5, as the video scripts do.
VARYING_BLEND_MAX = 0.5
LOOP_BLEND_STEP = 0.1  # `loop` moves the share this much per frame: 0, 0.1, ... 0.5, 0.4, ... 0


# Told of every ascent step of every frame, in the dreaming thread (progress, metrics).
StepListener = Callable[[Step], None]


class BlendMode(enum.Enum):
    """How the previous dream's share in each frame's start is chosen."""

    FIXED = "fixed"  # VideoSpec.blend for every frame
    LOOP = "loop"  # back and forth between 0 and VARYING_BLEND_MAX
    RANDOM = "random"  # drawn for each frame, uniformly in [0, VARYING_BLEND_MAX]


@dataclass(frozen=True)
class VideoSpec:
    """A video dream as asked for: the dream of every frame (without a picture) and how frames follow."""

    dream: DreamSpec
    blend: float | None = None
    blend_mode: BlendMode = BlendMode.FIXED
    flow: bool = False
    layer_schedule: tuple[str, ...] = ()
    window: int | None = None


@dataclass(frozen=True)
class VideoPlan:
    """A checked video dream: every value resolved; frames are planned as they come."""

    dream: DreamSpec
    blend: float
    blend_mode: BlendMode
    flow: bool
    layer_schedule: tuple[str, ...]
    window: int
    frame_format: ImageFormat

    def layers_of(self, index: int) -> Mapping[str, float] | None:
        """The layers frame `index` dreams on (None: the dream's own, or the model's default)."""
        if not self.layer_schedule:
            return self.dream.layers
        return {self.layer_schedule[index % len(self.layer_schedule)]: 1.0}

    def frame_spec(self, index: int, data: bytes) -> DreamSpec:
        """The dream of frame `index`, encoded as `data`, from its input alone."""
        return replace(self.dream, image=data, layers=self.layers_of(index))


@dataclass(frozen=True)
class DreamedFrame:
    """One dreamed frame of a video or an animation: `image` is HxWx3 float32 RGB in [0, 1]."""

    index: int  # from 0
    image: np.ndarray = field(repr=False)
    blend: float  # the previous dream's share in this frame's start
    layers: Mapping[str, float]
    elapsed: float  # seconds spent dreaming this frame


def plan_video(spec: VideoSpec, engine: DreamEngine) -> VideoPlan:
    """Check `spec` before any frame arrives; raises a Refusal that says what to change."""
    dream = spec.dream
    if dream.image is not None or dream.pixels is not None or dream.noise_size is not None:
        raise InvalidRequest(
            "the video settings carry a picture: leave image, width and height empty and send the frames",
            field="settings.dream.image",
        )
    blend = 0.0 if spec.blend is None else spec.blend
    if not (0.0 <= blend <= MAX_BLEND):  # also refuses NaN
        raise InvalidRequest(
            f"blend {blend} is out of range: use 0 (every frame alone) to {MAX_BLEND}",
            reason="OUT_OF_RANGE",
            field="settings.blend",
        )
    window = DEFAULT_WINDOW if not spec.window else spec.window
    if not (1 <= window <= MAX_WINDOW):
        raise InvalidRequest(
            f"window {window} is out of range: use 1 to {MAX_WINDOW} (0 for the default, {DEFAULT_WINDOW})",
            reason="OUT_OF_RANGE",
            field="settings.window",
        )
    plan = VideoPlan(
        dream=dream,
        blend=blend,
        blend_mode=spec.blend_mode,
        flow=spec.flow,
        layer_schedule=tuple(spec.layer_schedule),
        window=window,
        frame_format=dream.frame_format,
    )
    # Every other value, and each layer of the schedule, is checked now as a dream on the
    # smallest noise the model takes would be: planning opens no session and decodes nothing.
    side = engine.models.get(dream.model).manifest.min_size
    for index in range(max(1, len(plan.layer_schedule))):
        engine.plan(replace(dream, noise_size=(side, side), layers=plan.layers_of(index)))
    return plan


def final_image(events: Iterable[DreamEvent], on_step: StepListener | None = None) -> np.ndarray:
    """Run a dream's events to the end and return its final picture; `on_step` hears each step."""
    image = None
    for event in events:
        if isinstance(event, Octave) and event.final:
            image = event.image
        elif on_step is not None and isinstance(event, Step):
            on_step(event)
    if image is None:
        raise RuntimeError("the dream ended without its final octave")
    return image


class VideoDreamer:
    """Dreams the frames of one video in order, keeping the previous input and dreamed frame."""

    def __init__(self, engine: DreamEngine, plan: VideoPlan) -> None:
        self._engine = engine
        self._plan = plan
        # The blend's own generator: the dream's seed also drives the jitter, which must not
        # change with the blend mode.
        self._blend_rng = seeded_generator(plan.dream.seed)

    def dream_frames(
        self, frames: Iterable[bytes], cancel: threading.Event | None = None, on_step: StepListener | None = None
    ) -> Iterator[DreamedFrame]:
        """Dream each encoded frame of `frames` in turn; setting `cancel` stops before the next step,
        and `on_step` hears each step."""
        previous: tuple[np.ndarray, np.ndarray] | None = None  # (input, dreamed) of the last frame
        for index, data in enumerate(frames):
            began = time.perf_counter()
            plan = self._engine.plan(self._plan.frame_spec(index, data))
            rng = seeded_generator(self._plan.dream.seed)
            pixels = plan.start.pixels(rng)
            blend = 0.0
            start = pixels
            if previous is not None:
                start, blend = self._blended(index, pixels, *previous)
            dreamed = final_image(self._engine.run(starting_from(plan, start), cancel), on_step)
            previous = (pixels, dreamed)
            yield DreamedFrame(
                index=index,
                image=dreamed,
                blend=blend,
                layers=dict(plan.params.layers),
                elapsed=time.perf_counter() - began,
            )

    def _blended(
        self, index: int, pixels: np.ndarray, previous_input: np.ndarray, previous_dream: np.ndarray
    ) -> tuple[np.ndarray, float]:
        """The start of frame `index`: its input blended with the previous dream; and the blend."""
        if pixels.shape != previous_input.shape:
            height, width = pixels.shape[:2]
            was_height, was_width = previous_input.shape[:2]
            raise InvalidRequest(
                f"frame {index} is {width}x{height} px after scaling, the frames before it "
                f"{was_width}x{was_height}: send every frame of a video at the same size",
                reason="FRAME_SIZE_CHANGED",
                field="frame",
            )
        blend = self._blend(index)
        if self._plan.flow:
            previous_dream = warp(previous_dream, dense_flow(previous_input, pixels))
        return (blend * previous_dream + (1.0 - blend) * pixels).astype(np.float32), blend

    def _blend(self, index: int) -> float:
        mode = self._plan.blend_mode
        if mode is BlendMode.LOOP:
            period = 2 * round(VARYING_BLEND_MAX / LOOP_BLEND_STEP)
            phase = index % period
            return LOOP_BLEND_STEP * min(phase, period - phase)
        if mode is BlendMode.RANDOM:
            return float(self._blend_rng.uniform(0.0, VARYING_BLEND_MAX))
        return self._plan.blend


def starting_from(plan: DreamPlan, pixels: np.ndarray) -> DreamPlan:
    """`plan` with its starting picture replaced by `pixels` (of the same size)."""
    return replace(plan, start=Start(plan.size, array=pixels))
