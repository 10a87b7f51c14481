"""The DeepDream ascent over ONNX Runtime. It knows nothing of gRPC.

The algorithm is the original DeepDream's: the picture is dreamed at a few
scales (octaves), smallest first. At each octave a number of gradient ascent
steps run, each on a randomly rolled copy of the picture (jitter) that is
rolled back afterwards, moving the pixels by `step_size` times the gradient
normalised by its mean absolute value and clipping them to [0, 1]. What an
octave added (its "detail") is scaled up and added to the next, larger, octave
of the original picture, so the result keeps the original's sharpness.

One step is one Run of the model's fused step graph (see
`dreamstream.export.manifest`): roll, gradient, roll back, normalise, add,
clip. On CUDA the picture stays on the device for a whole octave.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import onnxruntime as ort

from dreamstream.export.manifest import (
    CHANNEL_WEIGHTS,
    IMAGE,
    IMAGE_OUT,
    LAYER_WEIGHTS,
    LOSS,
    SHIFT,
    STEP_SIZE,
)
from dreamstream.server.models import Model, ModelRepository
from dreamstream.server.octaves import octave_sizes, resize

# The defaults, also written in dream.proto and the README.
DEFAULT_OCTAVES = 4
DEFAULT_OCTAVE_SCALE = 1.4
DEFAULT_STEPS = 10
DEFAULT_STEP_SIZE = 0.01
DEFAULT_JITTER = 32
DEFAULT_MAX_SIZE = 1024

MAX_OCTAVES = 12
MAX_STEPS = 1000
MAX_OCTAVE_SCALE = 4.0
MAX_STEP_SIZE = 1.0
MAX_JITTER = 1024

# Noise to dream on when there is no picture: mid grey with a little texture.
_NOISE_MEAN = 0.5
_NOISE_SPREAD = 0.1


class InvalidParams(ValueError):
    """Parameters the engine cannot dream with; the message says what to change."""


class DreamCancelled(Exception):
    """The dream was stopped between two steps because its cancel flag was set."""


@dataclass(frozen=True)
class DreamParams:
    """How to dream. `layers` maps layer names to weights; None means the model's defaults."""

    layers: Mapping[str, float] | None = None
    octaves: int = DEFAULT_OCTAVES
    octave_scale: float = DEFAULT_OCTAVE_SCALE
    steps: int = DEFAULT_STEPS
    step_size: float = DEFAULT_STEP_SIZE
    jitter: int = DEFAULT_JITTER
    seed: int = 0

    def __post_init__(self) -> None:
        _check_range("octaves", self.octaves, 1, MAX_OCTAVES)
        _check_range("octave_scale", self.octave_scale, 1.0, MAX_OCTAVE_SCALE)
        _check_range("steps per octave", self.steps, 1, MAX_STEPS)
        _check_range("jitter", self.jitter, 0, MAX_JITTER)
        if not (0 < self.step_size <= MAX_STEP_SIZE):
            raise InvalidParams(
                f"step_size {self.step_size} is out of range: use a value above 0 and at most "
                f"{MAX_STEP_SIZE} (default {DEFAULT_STEP_SIZE})"
            )


def _check_range(name: str, value: float, low: float, high: float) -> None:
    # `not (low <= value <= high)` also refuses NaN.
    if not (low <= value <= high):
        raise InvalidParams(f"{name} {value} is out of range: use {low} to {high}")


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


@dataclass(frozen=True)
class Octave:
    """The picture at the end of an octave: `image` is HxWx3 float32 RGB in [0, 1]."""

    octave: int
    octaves: int
    image: np.ndarray = field(repr=False)
    final: bool
    elapsed: float


@dataclass(frozen=True)
class DreamPlan:
    """A checked dream, ready to run: everything `DreamEngine.run` needs."""

    model: Model
    params: DreamParams
    start: np.ndarray | None  # HxWx3 float32 picture, or None to start from noise
    sizes: tuple[tuple[int, int], ...]  # (height, width) of each octave, smallest first
    step_graph: str  # the step graph that runs, chosen by the manifest for the layer weights
    layer_weights: np.ndarray
    channel_weights: np.ndarray

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the result."""
        return self.sizes[-1]


class DreamEngine:
    """Runs dreams on the models of a repository; safe to use from several threads."""

    def __init__(self, models: ModelRepository, keep_on_device: bool | None = None) -> None:
        """`keep_on_device`: hold the picture in an OrtValue for a whole octave (IOBinding).

        None (the default) does so on CUDA only, where it saves a host copy per step;
        on the CPU plain numpy feeding is as fast. True forces it (tests use it on CPU).
        """
        self.models = models
        self._keep_on_device = keep_on_device
        self._steps_run = 0
        self._count_lock = threading.Lock()

    @property
    def steps_run(self) -> int:
        """Steps run since the engine started, over all dreams."""
        return self._steps_run

    def plan(
        self,
        image: np.ndarray | None,
        params: DreamParams,
        model: str = "",
        size: tuple[int, int] | None = None,
    ) -> DreamPlan:
        """Check a dream against its model; raises InvalidParams or UnknownModel.

        `image` is HxWx3 float32 RGB in [0, 1]; when it is None the dream starts from
        seeded noise of `size` (height, width). Cheap: opens no session.
        """
        chosen = self.models.get(model)
        manifest = chosen.manifest
        layers = dict(params.layers or manifest.default_layers)
        known = [layer.name for layer in manifest.layers]
        for name, weight in layers.items():
            if name not in known:
                raise InvalidParams(
                    f"unknown layer {name!r} for model {manifest.name}: its layers are {', '.join(known)}"
                )
            if not math.isfinite(weight):
                raise InvalidParams(f"layer {name!r} has weight {weight}: use a finite number")
        if not any(layers.values()):
            raise InvalidParams("every layer weight is zero: give at least one layer a non-zero weight")

        if image is not None:
            height, width = image.shape[:2]
        elif size is not None:
            height, width = size
        else:
            raise InvalidParams("no picture: send an image, or a width and height to dream on noise")
        if min(height, width) < manifest.min_size:
            raise InvalidParams(
                f"the picture is {width}x{height} px; model {manifest.name} needs at least "
                f"{manifest.min_size} px on each side: send a larger picture"
            )
        if max(height, width) > manifest.max_size:
            raise InvalidParams(
                f"the picture is {width}x{height} px, too many pixels for model {manifest.name}, "
                f"which dreams at most {manifest.max_size} px per side: lower max_size"
            )

        layer_weights = np.zeros(len(manifest.layers), np.float32)
        for name, weight in layers.items():
            layer_weights[manifest.layer_index(name)] = weight
        return DreamPlan(
            model=chosen,
            params=params,
            start=image,
            sizes=octave_sizes(height, width, params.octaves, params.octave_scale, manifest.min_size),
            step_graph=manifest.step_graph_for(layers),
            layer_weights=layer_weights,
            # Every channel counts the same until per-channel dreams arrive; the graphs
            # already take the vector.
            channel_weights=np.ones(manifest.channel_total, np.float32),
        )

    def run(self, plan: DreamPlan, cancel: threading.Event | None = None) -> Iterator[Step | Octave]:
        """Dream `plan`, yielding a Step after every step and an Octave after every octave.

        Setting `cancel` stops the dream before its next step with DreamCancelled.
        """
        params = plan.params
        rng = np.random.default_rng(params.seed)
        if plan.start is None:
            height, width = plan.size
            start = _NOISE_MEAN + rng.uniform(-_NOISE_SPREAD, _NOISE_SPREAD, (height, width, 3))
        else:
            start = plan.start
        original = np.ascontiguousarray(start.transpose(2, 0, 1), np.float32)

        began = time.perf_counter()
        session = plan.model.session(plan.step_graph)
        stepper = self._stepper(session, plan)
        total_work = params.steps * sum(h * w for h, w in plan.sizes)
        work = 0
        detail: np.ndarray | None = None
        for octave, (height, width) in enumerate(plan.sizes, start=1):
            base = resize(original, height, width)
            image = base if detail is None else base + resize(detail, height, width)
            stepper.start(np.clip(image, 0, 1))
            for step in range(1, params.steps + 1):
                if cancel is not None and cancel.is_set():
                    raise DreamCancelled(f"cancelled at octave {octave}, step {step}")
                jitter = rng.integers(-params.jitter, params.jitter + 1, size=2, dtype=np.int64)
                # The step graphs roll by 0 <= shift < size; a roll by -3 is a roll by size - 3.
                shift = jitter % np.array([height, width], np.int64)
                loss = stepper.step(shift)
                with self._count_lock:
                    self._steps_run += 1
                work += height * width
                yield Step(
                    octave=octave,
                    octaves=len(plan.sizes),
                    step=step,
                    steps=params.steps,
                    loss=loss,
                    elapsed=time.perf_counter() - began,
                    done=work / total_work,
                )
            image = stepper.result()
            detail = image - base
            yield Octave(
                octave=octave,
                octaves=len(plan.sizes),
                image=image.transpose(1, 2, 0),
                final=octave == len(plan.sizes),
                elapsed=time.perf_counter() - began,
            )

    def _stepper(self, session: ort.InferenceSession, plan: DreamPlan) -> _Stepper:
        device = plan.model.device.kind
        keep = self._keep_on_device if self._keep_on_device is not None else device == "cuda"
        constants = {
            LAYER_WEIGHTS: plan.layer_weights,
            CHANNEL_WEIGHTS: plan.channel_weights,
            STEP_SIZE: np.array([plan.params.step_size], np.float32),
        }
        if keep:
            return _BoundSteps(session, constants, device)
        return _HostSteps(session, constants)


class _Stepper(Protocol):
    """Runs the steps of one octave at a time on a 3xHxW picture."""

    def start(self, image: np.ndarray) -> None: ...

    def step(self, shift: np.ndarray) -> float: ...

    def result(self) -> np.ndarray: ...


class _HostSteps:
    """Feeds numpy arrays: on the CPU the picture lives in host memory anyway."""

    def __init__(self, session: ort.InferenceSession, constants: dict[str, np.ndarray]) -> None:
        self._session = session
        self._feeds = dict(constants)

    def start(self, image: np.ndarray) -> None:
        self._feeds[IMAGE] = np.ascontiguousarray(image[None], np.float32)

    def step(self, shift: np.ndarray) -> float:
        self._feeds[SHIFT] = shift
        image, loss = self._session.run([IMAGE_OUT, LOSS], self._feeds)
        self._feeds[IMAGE] = image
        return float(loss[0])

    def result(self) -> np.ndarray:
        return self._feeds[IMAGE][0]


class _BoundSteps:
    """Keeps the picture in device memory for a whole octave.

    Two OrtValues of the octave's size take turns as the step's input and output,
    so a step copies nothing but its shift in and its loss out.
    """

    def __init__(self, session: ort.InferenceSession, constants: dict[str, np.ndarray], device: str) -> None:
        self._session = session
        self._device = device
        self._binding = session.io_binding()
        # Bound CPU inputs may be used in place, without a copy: keep them alive.
        self._constants = constants
        for name, value in constants.items():
            self._binding.bind_cpu_input(name, value)
        self._loss = ort.OrtValue.ortvalue_from_shape_and_type([1], np.float32, "cpu")
        self._binding.bind_ortvalue_output(LOSS, self._loss)
        self._image: ort.OrtValue | None = None
        self._spare: ort.OrtValue | None = None

    def start(self, image: np.ndarray) -> None:
        batch = np.ascontiguousarray(image[None], np.float32)
        self._image = ort.OrtValue.ortvalue_from_numpy(batch, self._device, 0)
        self._spare = ort.OrtValue.ortvalue_from_shape_and_type(batch.shape, np.float32, self._device, 0)

    def step(self, shift: np.ndarray) -> float:
        self._binding.bind_cpu_input(SHIFT, shift)
        self._binding.bind_ortvalue_input(IMAGE, self._image)
        self._binding.bind_ortvalue_output(IMAGE_OUT, self._spare)
        self._session.run_with_iobinding(self._binding)
        self._image, self._spare = self._spare, self._image
        return float(self._loss.numpy()[0])

    def result(self) -> np.ndarray:
        return self._image.numpy()[0]
