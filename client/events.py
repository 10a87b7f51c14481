"""What a dream stream and a model listing hold, as typed values shared by both clients."""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from dreamstream.v1 import dream_pb2
from dreamstream.wire import format_named, format_of_enum


@dataclass(frozen=True)
class Started:
    """The first event of a dream: what the server made of the request, every default resolved.

    Sending these values back with the same picture dreams the same picture on the same device.
    """

    request_id: str  # the dream's id in the server's logs
    model: str
    layers: dict[str, float]  # layer name -> weight in effect
    octave_sizes: tuple[tuple[int, int], ...]  # (width, height) each octave is dreamed at, smallest first
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int
    seed: int
    format: str  # of the frames: "png", "jpeg" or "webp"
    output_size: tuple[int, int]  # (width, height) of the final frame


@dataclass(frozen=True)
class Progress:
    """One ascent step done on the server. Octaves and steps count from 1."""

    octave: int
    octaves: int
    step: int
    steps: int
    loss: float  # the dream objective before this step
    elapsed: float  # seconds since the server started this dream
    done: float  # fraction of the dream's work done, in [0, 1]
    round: int = 1  # with the `repeat` option: the round of this step, from 1
    tiles: int = 1  # the tiles the server computed this step's gradient in

    @property
    def seconds_left(self) -> float | None:
        """A time-left estimate from the work done so far, None before any."""
        if self.done <= 0:
            return None
        return self.elapsed * (1 - self.done) / self.done


@dataclass(frozen=True)
class Frame:
    """The picture at the end of one octave, as the server encoded it."""

    octave: int
    octaves: int
    width: int
    height: int
    data: bytes = field(repr=False)
    format: str  # "png", "jpeg" or "webp"
    final: bool  # the last frame: the result at the output size
    round: int = 1  # with the `repeat` option: the round of this frame, from 1

    def image(self) -> Image.Image:
        """The frame decoded into a Pillow image (decoded anew on each call)."""
        picture = Image.open(io.BytesIO(self.data))
        picture.load()
        return picture

    @property
    def suffix(self) -> str:
        """The file name suffix of the frame's format, e.g. ".png"."""
        return format_named(self.format).suffix

    def save(self, path: str | Path) -> Path:
        """Write the encoded bytes as received (no re-encoding) and return the path."""
        path = Path(path)
        path.write_bytes(self.data)
        return path


DreamEvent = Started | Progress | Frame


@dataclass(frozen=True)
class LayerInfo:
    name: str
    channels: int
    stride: int  # input pixels per activation pixel: deeper layers see larger patterns


@dataclass(frozen=True)
class ModelInfo:
    """A model a server can dream with."""

    name: str
    backbone: str
    layers: tuple[LayerInfo, ...]
    default_layers: dict[str, float]
    min_size: int
    max_size: int
    default: bool  # the model used when a dream names none
    supports_guide: bool = False  # exported with guide graphs: the `guide` option works
    max_untiled_size: int = 0  # larger pictures are dreamed in tiles (0: a server from before tiling)
    can_classify: bool = False  # exported with its classifier head: `classify` works


def event_from_response(response: dream_pb2.DreamResponse) -> DreamEvent | None:
    """The event a response holds; None for an event this client does not know (from a newer
    server), which the clients skip."""
    kind = response.WhichOneof("event")
    if kind == "started":
        started = response.started
        return Started(
            request_id=started.request_id,
            model=started.model,
            layers=dict(started.layers),
            octave_sizes=tuple((size.width, size.height) for size in started.octave_sizes),
            octave_scale=started.octave_scale,
            steps_per_octave=started.steps_per_octave,
            step_size=started.step_size,
            jitter=started.jitter,
            seed=started.seed,
            format=format_of_enum(started.format).name,
            output_size=(started.output_size.width, started.output_size.height),
        )
    if kind == "frame":
        frame = response.frame
        return Frame(
            octave=frame.octave,
            octaves=frame.octaves,
            width=frame.width,
            height=frame.height,
            data=frame.image,
            format=format_of_enum(frame.format).name,
            final=frame.final,
            round=frame.round or 1,  # a server from before `repeat` sends none
        )
    if kind != "progress":
        return None
    progress = response.progress
    return Progress(
        octave=progress.octave,
        octaves=progress.octaves,
        step=progress.step,
        steps=progress.steps_per_octave,
        loss=progress.loss,
        elapsed=progress.elapsed_seconds,
        done=progress.done,
        round=progress.round or 1,
        tiles=progress.tiles or 1,
    )


@dataclass(frozen=True)
class ClassProbability:
    """A class the network sees in a picture (Classify), with its probability."""

    label: str  # e.g. "Egyptian cat"
    probability: float  # in [0, 1]
    index: int  # the class's position in the network's output


def classes_from_response(response: dream_pb2.ClassifyResponse) -> list[ClassProbability]:
    return [ClassProbability(cls.label, cls.probability, cls.index) for cls in response.classes]


@dataclass(frozen=True)
class UnavailableModelInfo:
    """A model folder the server found but does not serve, and why."""

    name: str
    problem: str


@dataclass(frozen=True)
class ModelListing:
    """What ListModels says: the models served, and the folders refused at start-up."""

    models: list[ModelInfo]
    unavailable: list[UnavailableModelInfo]


def listing_from_response(response: dream_pb2.ListModelsResponse) -> ModelListing:
    unavailable = [UnavailableModelInfo(model.name, model.problem) for model in response.unavailable_models]
    return ModelListing(models_from_response(response), unavailable)


def models_from_response(response: dream_pb2.ListModelsResponse) -> list[ModelInfo]:
    return [
        ModelInfo(
            name=model.name,
            backbone=model.backbone,
            layers=tuple(LayerInfo(layer.name, layer.channels, layer.stride) for layer in model.layers),
            default_layers=dict(model.default_layers),
            min_size=model.min_size,
            max_size=model.max_size,
            default=model.name == response.default_model,
            supports_guide=model.supports_guide,
            max_untiled_size=model.max_untiled_size,
            can_classify=model.can_classify,
        )
        for model in response.models
    ]
