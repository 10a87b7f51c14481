"""VGG16 and VGG19 (torchvision's `vgg16`, `vgg19`, without batch norm).

torchvision keeps the convolutional part in one `features` Sequential: each
convolution (3x3, padding 1, with bias) is followed by a ReLU, and each stage
ends in a 2x2 max pool of stride 2, so `features.N` counts convolutions, ReLUs
and pools alike. Layer names are the classic Caffe ones: `convS_I` is the
activation after the ReLU of the I-th convolution of stage S, `poolS` the pool
closing stage S. The network stops at `pool5` (no classifier).
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import conv, max_pool, relu
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.backbones.torchvision_common import IMAGENET, TorchvisionNet

STAGE_CHANNELS = (64, 128, 256, 512, 512)
CONVS_PER_STAGE = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
DEFAULT_LAYERS = {"conv4_3": 1.0}


def build_vgg16(source: WeightSource) -> Backbone:
    return _build("vgg16", source)


def build_vgg19(source: WeightSource) -> Backbone:
    return _build("vgg19", source)


def _build(arch: str, source: WeightSource) -> Backbone:
    net = TorchvisionNet(source)
    g = net.g
    x, in_ch, index = net.input, 3, 0
    for stage, (channels, convs) in enumerate(zip(STAGE_CHANNELS, CONVS_PER_STAGE[arch], strict=True), 1):
        for number in range(1, convs + 1):
            key = f"features.{index}"
            weight = source.get(f"{key}.weight", (channels, in_ch, 3, 3))
            bias = source.get(f"{key}.bias", (channels,))
            x = relu(g, conv(g, x, key, weight, bias, padding=1), f"conv{stage}_{number}")
            net.record(f"conv{stage}_{number}", x, channels)
            in_ch, index = channels, index + 2  # the convolution and its ReLU
        x = max_pool(g, x, 2, 2, name=f"pool{stage}")
        net.stride *= 2
        net.record(f"pool{stage}", x, channels)
        index += 1
    return net.backbone(arch, IMAGENET, DEFAULT_LAYERS)
