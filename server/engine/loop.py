"""The DeepDream ascent over ONNX Runtime: the octave loop. It knows nothing of gRPC.

The algorithm is the original DeepDream's: the picture is dreamed at a few
scales (octaves), smallest first. At each octave a number of gradient ascent
steps run, each on a randomly rolled copy of the picture (jitter) that is
rolled back afterwards, moving the pixels by `step_size` times the gradient
normalised by its mean absolute value and clipping them to [0, 1]. What an
octave added (its "detail") is scaled up and added to the next, larger, octave
of the original picture, so the result keeps the original's sharpness.

One step is one Run of the model's fused step graph (see `steppers` and
`dreamstream.modeldir`): roll, gradient, roll back, normalise, add, clip; the
controls that reshape the gradient run the gradient graph instead (see
`GradientSteps`). The dream controls around the ascent: channels ranked on the
picture (`objectives`), octaves above the picture's size brought back to it,
original colours on every frame (`colours`), and `repeat` rounds, each
dreaming the result of the one before.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from dreamstream.modeldir import CHANNEL_MEANS, CHANNEL_WEIGHTS, GUIDE, IMAGE, LAYER_WEIGHTS
from dreamstream.server.engine.colours import keep_original_colours
from dreamstream.server.engine.fitting import SizeFit, fitted_stepper
from dreamstream.server.engine.limits import DEFAULT_LIMITS, Limits
from dreamstream.server.engine.normalise import ascent_direction
from dreamstream.server.engine.objectives import channel_weights, ranking_picture
from dreamstream.server.engine.octaves import resize
from dreamstream.server.engine.plan import DreamPlan, plan_dream
from dreamstream.server.engine.request import DreamSpec
from dreamstream.server.engine.steppers import (
    BoundSteps,
    GradientSteps,
    HostSteps,
    Stepper,
    run_options,
    step_constants,
)
from dreamstream.server.engine.tiling import TiledSteps, untiled_limit
from dreamstream.server.models import Model, ModelRepository
from dreamstream.server.refusals import ModelCannotRun, TimeLimit

_UINT64 = 2**64 - 1
# What ONNX Runtime raises when a graph cannot run on its input (a shape its ops cannot take).
_ORT_FAILURES = (
    ort.capi.onnxruntime_pybind11_state.Fail,
    ort.capi.onnxruntime_pybind11_state.InvalidArgument,
    ort.capi.onnxruntime_pybind11_state.RuntimeException,
)


def seeded_generator(seed: int) -> np.random.Generator:
    """The random generator of a dream's `seed`: any int64 (the .proto says so); numpy wants it unsigned."""
    return np.random.default_rng(seed & _UINT64)


class DreamCancelled(Exception):
    """The dream was stopped between two steps because its cancel flag was set."""


@dataclass(frozen=True)
class Step:
    """One ascent step done. Octaves and steps count from 1."""

    octave: int
    octaves: int
    step: int
    steps: int
    loss: float  # the objective before this step
    elapsed: float  # seconds since the dream started
    done: float  # fraction of the dream's work done, steps weighted by their octave's pixels
    round: int = 1  # with repeat: which round, from 1
    tiles: int = 1  # the tiles this step's gradient was computed in (see `tiling`)


@dataclass(frozen=True)
class Octave:
    """The picture at the end of an octave: `image` is HxWx3 float32 RGB in [0, 1]."""

    octave: int
    octaves: int
    image: np.ndarray = field(repr=False)
    final: bool
    elapsed: float
    round: int = 1  # with repeat: which round, from 1


DreamEvent = Step | Octave


class DreamEngine:
    """Plans and runs dreams on the models of a repository; safe to use from several threads."""

    def __init__(
        self, models: ModelRepository, keep_on_device: bool | None = None, limits: Limits = DEFAULT_LIMITS
    ) -> None:
        """`keep_on_device`: hold the picture in an OrtValue for a whole octave (IOBinding).

        None (the default) does so on CUDA only, where it saves a host copy per step;
        on the CPU plain numpy feeding is as fast. True forces it (tests use it on CPU).
        """
        self.models = models
        self.limits = limits
        self._keep_on_device = keep_on_device
        self._steps_run = 0
        self._count_lock = threading.Lock()

    @property
    def steps_run(self) -> int:
        """Steps run since the engine started, over all dreams."""
        return self._steps_run

    def plan(self, spec: DreamSpec) -> DreamPlan:
        """Check `spec` (see `plan_dream`): cheap, opens no session, decodes no pixel."""
        return plan_dream(spec, self.models, self.limits)

    def untiled_limit(self, model: Model) -> int:
        """The longest side of a square picture `model` dreams in one piece here; larger ones are tiled."""
        return untiled_limit(model.manifest, self.limits)

    def run(self, plan: DreamPlan, cancel: threading.Event | None = None) -> Iterator[DreamEvent]:
        """Dream `plan`, yielding a Step after every step and an Octave after every octave.

        The picture is decoded here, in the caller's thread. Setting `cancel` stops the
        dream before its next step with DreamCancelled.
        """
        rng = seeded_generator(plan.params.seed)
        clock = _Clock(plan)
        original = np.ascontiguousarray(plan.start.pixels(rng).transpose(2, 0, 1), np.float32)
        guide = plan.guide.pixels() if plan.guide is not None else None
        picture = original
        # Counted among the dreams running while it runs: each step's session takes its
        # share of the CPUs from that count (see providers.CpuShare).
        with self.models.cpu.dreaming():
            for round_number in range(1, plan.params.rounds + 1):
                picture = yield from self._round(plan, picture, original, guide, round_number, rng, clock, cancel)

    def _round(
        self,
        plan: DreamPlan,
        picture: np.ndarray,
        original: np.ndarray,
        guide: np.ndarray | None,
        round_number: int,
        rng: np.random.Generator,
        clock: _Clock,
        cancel: threading.Event | None,
    ) -> Generator[DreamEvent, None, np.ndarray]:
        """One pass of the octaves over `picture` (3xHxW); returns the round's result.

        `original` is the input picture, whose colours original_colors keeps.
        """
        params = plan.params
        octaves = len(plan.sizes)
        last_round = round_number == params.rounds
        weights = plan.channel_weights
        if plan.channels.ranked and not plan.channels.per_octave:
            weights = self._ranked_weights(plan, resize(picture, *plan.sizes[0]))
        detail: np.ndarray | None = None
        for octave, (height, width) in enumerate(plan.sizes, start=1):
            base = resize(picture, height, width)
            image = np.clip(base if detail is None else base + resize(detail, height, width), 0, 1)
            if plan.channels.ranked and plan.channels.per_octave:
                weights = self._ranked_weights(plan, image)
            fit = SizeFit.of(plan.model.manifest)
            fitted = fit.size((height, width))  # the size the octave is stepped at, padded
            stepper = fitted_stepper(self._stepper(plan, weights, guide), (height, width), fit)
            stepper = _Refusing(stepper, plan.model.name, fitted)
            stepper.start(image)
            tiles = plan.tiling.count(*fitted) if plan.tiling else 1
            for step in range(1, params.steps_per_octave + 1):
                if cancel is not None and cancel.is_set():
                    raise DreamCancelled(f"cancelled at octave {octave}, step {step}")
                self._check_time(clock.elapsed, plan, octave, step)
                jitter = rng.integers(-params.jitter, params.jitter + 1, size=2, dtype=np.int64)
                # The step graphs roll by 0 <= shift < size; a roll by -3 is a roll by size - 3.
                shift = jitter % np.array([height, width], np.int64)
                loss = stepper.step(shift, release=step == params.steps_per_octave)
                with self._count_lock:
                    self._steps_run += 1
                clock.work += height * width
                yield Step(
                    octave=octave,
                    octaves=octaves,
                    step=step,
                    steps=params.steps_per_octave,
                    loss=loss,
                    elapsed=clock.elapsed,
                    done=clock.done,
                    round=round_number,
                    tiles=tiles,
                )
            image = stepper.result()
            detail = image - base if octave < octaves else None
            if octave == octaves:  # the round's result, at the result's size
                image = resize(image, *plan.size)
            if params.original_colors:
                image = _with_colours_of(image, original)
            yield Octave(
                octave=octave,
                octaves=octaves,
                image=image.transpose(1, 2, 0),
                final=last_round and octave == octaves,
                elapsed=clock.elapsed,
                round=round_number,
            )
        return image

    def _check_time(self, elapsed: float, plan: DreamPlan, octave: int, step: int) -> None:
        limit = self.limits.max_dream_seconds
        if elapsed > limit:
            raise TimeLimit(
                f"the dream ran past this server's limit of {limit:g} s per dream (stopped after {elapsed:.1f} s "
                f"at octave {octave}/{len(plan.sizes)}, step {step}/{plan.params.steps_per_octave}): "
                "ask for fewer steps_per_octave, octaves or a smaller max_size",
                field="steps_per_octave",
            )

    def _ranked_weights(self, plan: DreamPlan, image: np.ndarray) -> np.ndarray:
        """Channel weights with the channel mode's layers ranked on `image` (3xHxW)."""
        session = plan.model.session(plan.model.graph_for(plan.params.layers))
        manifest = plan.model.manifest
        picture = SizeFit.of(manifest).resized(ranking_picture(image, plan.tiling, manifest.min_size))
        feeds = {
            IMAGE: np.ascontiguousarray(picture[None], np.float32),
            LAYER_WEIGHTS: plan.layer_weights,
            CHANNEL_WEIGHTS: np.ones(manifest.channel_total, np.float32),
        }
        (means,) = session.run([CHANNEL_MEANS], feeds, run_options(release=True))
        return channel_weights(manifest, plan.channels, means[0])

    def _stepper(self, plan: DreamPlan, channel_weights: np.ndarray, guide: np.ndarray | None) -> Stepper:
        params = plan.params
        if plan.gradient_graph is not None or plan.tiling is not None:
            feeds = {LAYER_WEIGHTS: plan.layer_weights, CHANNEL_WEIGHTS: channel_weights}
            if guide is not None:
                feeds[GUIDE] = guide
            # Asked for at every step: its threads follow the dreams running (see steppers).
            session = plan.model.session_source(plan.gradient_graph or plan.model.graph_for(params.layers))
            direction = functools.partial(ascent_direction, lap_levels=params.lap_levels, tv_weight=params.tv_weight)
            if plan.tiling is not None:
                reshaped = params.lap_levels or params.tv_weight
                return TiledSteps(session, feeds, params.step_size, plan.tiling, direction if reshaped else None)
            return GradientSteps(session, feeds, params.step_size, direction)
        device = plan.model.device.kind
        keep = self._keep_on_device if self._keep_on_device is not None else device == "cuda"
        constants = step_constants(plan.layer_weights, channel_weights, params.step_size)
        if keep:  # the picture bound to one session's device memory for the whole octave
            return BoundSteps(plan.model.session(plan.step_graph), constants, device)
        return HostSteps(plan.model.session_source(plan.step_graph), constants)


class _Refusing:
    """A stepper whose ONNX Runtime failures are a refusal that says what to do, not an internal error:
    the export probes the sizes a model runs on, so only a model exported before it (or a
    graph broken since) fails here."""

    def __init__(self, inner: Stepper, model: str, size: tuple[int, int]) -> None:
        self._inner = inner
        self._model = model
        self._size = size

    def start(self, image: np.ndarray) -> None:
        self._inner.start(image)

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        try:
            return self._inner.step(shift, release)
        except _ORT_FAILURES as error:
            height, width = self._size
            detail = str(error).split("Status Message: ")[-1].splitlines()[0][:200]
            raise ModelCannotRun(
                f"model {self._model} cannot run on a {width}x{height} px octave ({detail}): re-export it with "
                "this version of dreamstream, which records the sizes it runs on, or dream another max_size",
                field="model",
            ) from error

    def result(self) -> np.ndarray:
        return self._inner.result()


def _with_colours_of(image: np.ndarray, original: np.ndarray) -> np.ndarray:
    """`image` (3xHxW) with the chroma of `original` at the same size."""
    reference = resize(original, *image.shape[1:]).transpose(1, 2, 0)
    return keep_original_colours(image.transpose(1, 2, 0), reference).transpose(2, 0, 1)


class _Clock:
    """Time since the dream began, and the fraction of its work done (steps weighted by
    their octave's pixels, over every round)."""

    def __init__(self, plan: DreamPlan) -> None:
        self.began = time.perf_counter()
        self.total = plan.params.rounds * plan.params.steps_per_octave * sum(h * w for h, w in plan.sizes)
        self.work = 0

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.began

    @property
    def done(self) -> float:
        return self.work / self.total
