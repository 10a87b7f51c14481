"""What a model's network sees in a picture: its ImageNet classes, most probable first.

For models exported with their classifier head (`Manifest.classifier`): the
picture is decoded, squashed to the square the network was trained to classify
at, and run once through the classifier graph. A user sees what the network
sees before choosing what to amplify. Nothing of gRPC.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamstream.modeldir import IMAGE, PROBABILITIES
from dreamstream.server import imaging
from dreamstream.server.engine.limits import DEFAULT_LIMITS, Limits
from dreamstream.server.engine.octaves import resize
from dreamstream.server.models import ModelRepository
from dreamstream.server.providers import releasing_run
from dreamstream.server.refusals import InvalidRequest, NoClassifier

DEFAULT_TOP = 5


@dataclass(frozen=True)
class ClassProbability:
    """One class the network sees, with its probability; `index` is its output position."""

    label: str
    probability: float
    index: int


@dataclass(frozen=True)
class Classification:
    model: str
    classes: tuple[ClassProbability, ...]  # most probable first


def classify(
    models: ModelRepository, image: bytes, model_name: str = "", top: int | None = None, limits: Limits = DEFAULT_LIMITS
) -> Classification:
    """The `top` (default DEFAULT_TOP) most probable classes of `image` for the model called
    `model_name` (the default model for ""); raises a Refusal that says what to change."""
    model = models.get(model_name)
    classifier = model.manifest.classifier
    if classifier is None:
        raise NoClassifier(model.name, [other.name for other in models if other.manifest.classifier])
    labels = _labels(model.directory / classifier.labels)
    top = top or DEFAULT_TOP
    if not 1 <= top <= len(labels):
        raise InvalidRequest(
            f"top {top} is out of range: use 1 to {len(labels)} (the model's classes)",
            reason="OUT_OF_RANGE",
            field="top",
        )
    if not image:
        raise InvalidRequest("the request has no image: send the picture to classify", field="image")
    # Decoded at twice the network's side at most (cheap for a large JPEG), then squashed
    # to its square, as the network was trained.
    pixels = imaging.decode(image, 2 * classifier.size, limits.max_input_pixels)
    square = resize(np.ascontiguousarray(pixels.transpose(2, 0, 1)), classifier.size, classifier.size)
    feeds = {IMAGE: np.ascontiguousarray(square[None], np.float32)}
    (probabilities,) = model.session(classifier.graph).run([PROBABILITIES], feeds, releasing_run())
    order = np.argsort(probabilities[0])[::-1][:top]
    return Classification(
        model=model.name,
        classes=tuple(ClassProbability(labels[index], float(probabilities[0, index]), int(index)) for index in order),
    )


@functools.lru_cache(maxsize=32)
def _labels(path: Path) -> tuple[str, ...]:
    return tuple(path.read_text().splitlines())
