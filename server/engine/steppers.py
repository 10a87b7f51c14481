"""Run a model's fused step graph over one octave: one Run is one whole ascent step.

`HostSteps` feeds numpy arrays (on the CPU the picture lives in host memory
anyway); `BoundSteps` keeps the picture in device memory for a whole octave
through IOBinding, so on CUDA a step copies nothing but its shift in and its
loss out. `GradientSteps` runs the gradient graph instead and does the rest of
the step on the host, for the controls that reshape the gradient (a guide's
graph, Laplacian normalisation, TV regularisation; see `normalise`).

A step told to `release` is the octave's last: its Run hands the CPU arena's free
memory back (see `providers.releasing_run`), before the next octave's larger one.

On the CPU a stepper asks for its session at every step (a `SessionSource`): the
threads a dream runs on follow the dreams running at that moment (providers.CpuShare),
so a dream that began alone gives half its CPUs back within a step of a second one
starting, rather than at its next octave.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, TypeAlias

import numpy as np
import onnxruntime as ort

from dreamstream.modeldir import CHANNEL_WEIGHTS, GRAD, IMAGE, IMAGE_OUT, LAYER_WEIGHTS, LOSS, SHIFT, STEP_SIZE
from dreamstream.server.providers import releasing_run

# The session for the next Run: a fixed one, or a function choosing it then.
SessionSource: TypeAlias = ort.InferenceSession | Callable[[], ort.InferenceSession]


def session_of(source: SessionSource) -> Callable[[], ort.InferenceSession]:
    """`source` as a function that gives the session for the next Run."""
    if isinstance(source, ort.InferenceSession):
        return lambda: source
    return source


class Stepper(Protocol):
    """Runs the steps of one octave at a time on a 3xHxW picture."""

    def start(self, image: np.ndarray) -> None: ...

    def step(self, shift: np.ndarray, release: bool = False) -> float: ...

    def result(self) -> np.ndarray: ...


def step_constants(layer_weights: np.ndarray, channel_weights: np.ndarray, step_size: float) -> dict[str, np.ndarray]:
    """The step graph's inputs that stay the same for a whole dream."""
    return {
        LAYER_WEIGHTS: layer_weights,
        CHANNEL_WEIGHTS: channel_weights,
        STEP_SIZE: np.array([step_size], np.float32),
    }


def run_options(release: bool) -> ort.RunOptions | None:
    """The options of a step's Run: the releasing ones for an octave's last step."""
    return releasing_run() if release else None


class HostSteps:
    """Feeds numpy arrays: on the CPU the picture lives in host memory anyway."""

    def __init__(self, session: SessionSource, constants: dict[str, np.ndarray]) -> None:
        self._session = session_of(session)
        self._feeds = dict(constants)

    def start(self, image: np.ndarray) -> None:
        self._feeds[IMAGE] = np.ascontiguousarray(image[None], np.float32)

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        self._feeds[SHIFT] = shift
        image, loss = self._session().run([IMAGE_OUT, LOSS], self._feeds, run_options(release))
        self._feeds[IMAGE] = image
        return float(loss[0])

    def result(self) -> np.ndarray:
        return self._feeds[IMAGE][0]


class BoundSteps:
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

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        self._binding.bind_cpu_input(SHIFT, shift)
        self._binding.bind_ortvalue_input(IMAGE, self._image)
        self._binding.bind_ortvalue_output(IMAGE_OUT, self._spare)
        self._session.run_with_iobinding(self._binding, run_options(release))
        self._image, self._spare = self._spare, self._image
        return float(self._loss.numpy()[0])

    def result(self) -> np.ndarray:
        return self._image.numpy()[0]


class GradientSteps:
    """One Run of the gradient graph per step; the roll, the step and the clip in numpy.

    `direction(grad, image)` turns the gradient (rolled back) into what the step adds
    before `step_size`; `feeds` are the graph's inputs other than the picture.
    """

    def __init__(
        self,
        session: SessionSource,
        feeds: dict[str, np.ndarray],
        step_size: float,
        direction: Callable[[np.ndarray, np.ndarray], np.ndarray],
    ) -> None:
        self._session = session_of(session)
        self._feeds = dict(feeds)
        self._step_size = step_size
        self._direction = direction
        self._image: np.ndarray | None = None

    def start(self, image: np.ndarray) -> None:
        self._image = np.ascontiguousarray(image, np.float32)

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        axes = (1, 2)
        rolled = np.roll(self._image, tuple(shift), axis=axes)
        loss, grad = self._session().run([LOSS, GRAD], {**self._feeds, IMAGE: rolled[None]}, run_options(release))
        grad = np.roll(grad[0], tuple(-shift), axis=axes)
        moved = self._image + self._step_size * self._direction(grad, self._image)
        self._image = np.clip(moved, 0.0, 1.0).astype(np.float32)
        return float(loss[0])

    def result(self) -> np.ndarray:
        return self._image
