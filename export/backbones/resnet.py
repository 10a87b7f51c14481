"""ResNet-50 (torchvision's `resnet50`, the v1.5 variant).

A 7x7 stride-2 stem (`conv1`, `bn1`, ReLU), a 3x3 stride-2 max pool, then four
stages (`layer1`..`layer4`) of bottleneck blocks: 1x1 reduce, 3x3 (carrying the
stage's stride, as in v1.5), 1x1 expand to four times the width, each with a
batch norm (eps 1e-5, folded into its convolution); the first block of a stage
projects its shortcut with `downsample.0` (1x1 conv) and `downsample.1` (batch
norm). A block's name is its output after the final ReLU; the blocks of a stage
form one group, so each stage is one graph cut. The network stops at `layer4.2`.
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import max_pool, relu
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.backbones.torchvision_common import IMAGENET, TorchvisionNet

BN_EPS = 1e-5
STEM_CHANNELS = 64
EXPANSION = 4
# (width, blocks, stride of the first block) per stage.
STAGES = [(64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)]
DEFAULT_LAYERS = {"layer3.5": 1.0}


def build(source: WeightSource) -> Backbone:
    net = TorchvisionNet(source)
    x = net.conv_bn(net.input, "conv1", "bn1", 3, STEM_CHANNELS, 7, BN_EPS, stride=2, padding=3)
    net.stride *= 2
    x = net.record("conv1", relu(net.g, x, "conv1"), STEM_CHANNELS)
    x = max_pool(net.g, x, 3, 2, 1, name="maxpool")
    net.stride *= 2
    x = net.record("maxpool", x, STEM_CHANNELS)

    channels = STEM_CHANNELS
    for stage, (width, blocks, first_stride) in enumerate(STAGES, 1):
        for block in range(blocks):
            stride = first_stride if block == 0 else 1
            name = f"layer{stage}.{block}"
            x = _bottleneck(net, x, name, channels, width, stride)
            net.stride *= stride
            channels = width * EXPANSION
            net.record(name, x, channels, group=f"layer{stage}")
    return net.backbone("resnet50", IMAGENET, DEFAULT_LAYERS)


def _bottleneck(net: TorchvisionNet, x: str, name: str, in_ch: int, width: int, stride: int) -> str:
    out_ch = width * EXPANSION
    h = relu(net.g, net.conv_bn(x, f"{name}.conv1", f"{name}.bn1", in_ch, width, 1, BN_EPS))
    h = net.conv_bn(h, f"{name}.conv2", f"{name}.bn2", width, width, 3, BN_EPS, stride=stride, padding=1)
    h = net.conv_bn(relu(net.g, h), f"{name}.conv3", f"{name}.bn3", width, out_ch, 1, BN_EPS)
    shortcut = x
    if stride != 1 or in_ch != out_ch:
        down = f"{name}.downsample"
        shortcut = net.conv_bn(x, f"{down}.0", f"{down}.1", in_ch, out_ch, 1, BN_EPS, stride=stride)
    return relu(net.g, net.g.op("Add", h, shortcut, hint=f"{name}.sum"), name)
