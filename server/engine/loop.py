"""The DeepDream ascent over ONNX Runtime: the octave loop. It knows nothing of gRPC.

The algorithm is the original DeepDream's: the picture is dreamed at a few
scales (octaves), smallest first. At each octave a number of gradient ascent
steps run, each on a randomly rolled copy of the picture (jitter) that is
rolled back afterwards, moving the pixels by `step_size` times the gradient
normalised by its mean absolute value and clipping them to [0, 1]. What an
octave added (its "detail") is scaled up and added to the next, larger, octave
of the original picture, so the result keeps the original's sharpness.

One step is one Run of the model's fused step graph (see `steppers` and
`dreamstream.modeldir`): roll, gradient, roll back, normalise, add, clip.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from dreamstream.server.engine.limits import DEFAULT_LIMITS, Limits
from dreamstream.server.engine.octaves import resize
from dreamstream.server.engine.plan import DreamPlan, plan_dream
from dreamstream.server.engine.request import DreamSpec
from dreamstream.server.engine.steppers import BoundSteps, HostSteps, Stepper, step_constants
from dreamstream.server.models import ModelRepository
from dreamstream.server.refusals import TimeLimit

_UINT64 = 2**64 - 1


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


@dataclass(frozen=True)
class Octave:
    """The picture at the end of an octave: `image` is HxWx3 float32 RGB in [0, 1]."""

    octave: int
    octaves: int
    image: np.ndarray = field(repr=False)
    final: bool
    elapsed: float


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

    def run(self, plan: DreamPlan, cancel: threading.Event | None = None) -> Iterator[DreamEvent]:
        """Dream `plan`, yielding a Step after every step and an Octave after every octave.

        The picture is decoded here, in the caller's thread. Setting `cancel` stops the
        dream before its next step with DreamCancelled.
        """
        params = plan.params
        # Any int64 seeds a dream (the .proto says so); numpy wants it unsigned.
        rng = np.random.default_rng(params.seed & _UINT64)
        began = time.perf_counter()
        original = np.ascontiguousarray(plan.start.pixels(rng).transpose(2, 0, 1), np.float32)
        stepper = self._stepper(plan)
        total_work = params.steps_per_octave * sum(h * w for h, w in plan.sizes)
        work = 0
        detail: np.ndarray | None = None
        for octave, (height, width) in enumerate(plan.sizes, start=1):
            base = resize(original, height, width)
            image = base if detail is None else base + resize(detail, height, width)
            stepper.start(np.clip(image, 0, 1))
            for step in range(1, params.steps_per_octave + 1):
                if cancel is not None and cancel.is_set():
                    raise DreamCancelled(f"cancelled at octave {octave}, step {step}")
                self._check_time(time.perf_counter() - began, plan, octave, step)
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
                    steps=params.steps_per_octave,
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

    def _check_time(self, elapsed: float, plan: DreamPlan, octave: int, step: int) -> None:
        limit = self.limits.max_dream_seconds
        if elapsed > limit:
            raise TimeLimit(
                f"the dream ran past this server's limit of {limit:g} s per dream (stopped after {elapsed:.1f} s "
                f"at octave {octave}/{len(plan.sizes)}, step {step}/{plan.params.steps_per_octave}): "
                "ask for fewer steps_per_octave, octaves or a smaller max_size",
                field="steps_per_octave",
            )

    def _stepper(self, plan: DreamPlan) -> Stepper:
        session: ort.InferenceSession = plan.model.session(plan.step_graph)
        device = plan.model.device.kind
        keep = self._keep_on_device if self._keep_on_device is not None else device == "cuda"
        constants = step_constants(plan.layer_weights, plan.channel_weights, plan.params.step_size)
        if keep:
            return BoundSteps(session, constants, device)
        return HostSteps(session, constants)
