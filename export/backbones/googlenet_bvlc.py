"""BVLC GoogLeNet from Caffe: the network the original DeepDream ran on.

Layer names are Caffe's tops exactly as in its deploy.prototxt
(`inception_4c/output`, `conv2/3x3`, ...). Caffe's ReLUs run in place, so a
convolution's name is its activation after the ReLU. Input convention: BGR,
0..255, minus the per-channel mean; max pools round up (ceil mode); LRN with
local_size 5, alpha 1e-4, beta 0.75, k 1 (alpha divided by local_size, as ONNX
does). Weights come from a `.caffemodel` or an `.npz` of `<layer>/weight`,
`<layer>/bias` arrays in Caffe layout.
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import concat, conv, max_pool, relu
from dreamstream.export.backbones.net import NetBuilder
from dreamstream.export.backbones.source import WeightSource
from dreamstream.modeldir import Preprocessing

PREPROCESSING = Preprocessing(mean=(104.0, 117.0, 123.0), std=(1.0, 1.0, 1.0), bgr=True, scale=255.0)
DEFAULT_LAYERS = {"inception_4c/output": 1.0}
LRN = {"size": 5, "alpha": 1e-4, "beta": 0.75, "bias": 1.0}
# Inception blocks: name, then output channels of 1x1, 3x3_reduce, 3x3, 5x5_reduce, 5x5, pool_proj.
# A max pool (3x3, stride 2) comes before the blocks named in POOL_BEFORE.
INCEPTION = [
    ("inception_3a", 64, 96, 128, 16, 32, 32),
    ("inception_3b", 128, 128, 192, 32, 96, 64),
    ("inception_4a", 192, 96, 208, 16, 48, 64),
    ("inception_4b", 160, 112, 224, 24, 64, 64),
    ("inception_4c", 128, 128, 256, 24, 64, 64),
    ("inception_4d", 112, 144, 288, 32, 64, 64),
    ("inception_4e", 256, 160, 320, 32, 128, 128),
    ("inception_5a", 256, 160, 320, 32, 128, 128),
    ("inception_5b", 384, 192, 384, 48, 128, 128),
]
POOL_BEFORE = {"inception_4a": "pool3/3x3_s2", "inception_5a": "pool4/3x3_s2"}


class _Net(NetBuilder):
    """Builds the graph top by top, recording each top as a dream layer."""

    def conv_relu(
        self,
        x: str,
        name: str,
        in_ch: int,
        out_ch: int,
        kernel: int,
        pad: int,
        stride: int = 1,
        group: str | None = None,
    ) -> str:
        weight = self.source.get(f"{name}/weight", (out_ch, in_ch, kernel, kernel))
        bias = self.source.get(f"{name}/bias", (out_ch,))
        y = relu(self.g, conv(self.g, x, name, weight, bias, stride=stride, padding=pad), name)
        self.stride *= stride
        return self.record(name, y, out_ch, group)

    def pool(
        self, x: str, name: str, channels: int, kernel: int = 3, stride: int = 2, pad: int = 0, group: str | None = None
    ) -> str:
        y = max_pool(self.g, x, kernel, stride, pad, ceil=True, name=name)
        self.stride *= stride
        return self.record(name, y, channels, group)

    def lrn(self, x: str, name: str, channels: int) -> str:
        return self.record(name, self.g.op("LRN", x, hint=name, **LRN), channels)

    def inception(self, x: str, in_ch: int, spec: tuple) -> tuple[str, int]:
        name, c1, c3r, c3, c5r, c5, cp = spec
        one = self.conv_relu(x, f"{name}/1x1", in_ch, c1, 1, 0, group=name)
        reduce3 = self.conv_relu(x, f"{name}/3x3_reduce", in_ch, c3r, 1, 0, group=name)
        three = self.conv_relu(reduce3, f"{name}/3x3", c3r, c3, 3, 1, group=name)
        reduce5 = self.conv_relu(x, f"{name}/5x5_reduce", in_ch, c5r, 1, 0, group=name)
        five = self.conv_relu(reduce5, f"{name}/5x5", c5r, c5, 5, 2, group=name)
        pooled = self.pool(x, f"{name}/pool", in_ch, kernel=3, stride=1, pad=1, group=name)
        proj = self.conv_relu(pooled, f"{name}/pool_proj", in_ch, cp, 1, 0, group=name)
        out_ch = c1 + c3 + c5 + cp
        output = concat(self.g, [one, three, five, proj], f"{name}/output")
        return self.record(f"{name}/output", output, out_ch, group=name), out_ch


def build(source: WeightSource) -> Backbone:
    net = _Net(source, input_name="data")
    x = net.conv_relu(net.input, "conv1/7x7_s2", 3, 64, 7, 3, stride=2)
    x = net.pool(x, "pool1/3x3_s2", 64)
    x = net.lrn(x, "pool1/norm1", 64)
    x = net.conv_relu(x, "conv2/3x3_reduce", 64, 64, 1, 0)
    x = net.conv_relu(x, "conv2/3x3", 64, 192, 3, 1)
    x = net.lrn(x, "conv2/norm2", 192)
    x = net.pool(x, "pool2/3x3_s2", 192)
    channels = 192
    for spec in INCEPTION:
        if spec[0] in POOL_BEFORE:
            x = net.pool(x, POOL_BEFORE[spec[0]], channels)
        x, channels = net.inception(x, channels, spec)
    # Caffe's pool5/7x7_s1 is the global average at 224 px; dropout is the identity at inference.
    net.classifier_head(x, "loss3/classifier/weight", "loss3/classifier/bias", (1000, channels, 1, 1))

    return net.backbone("googlenet-bvlc", PREPROCESSING, DEFAULT_LAYERS, "BVLC model zoo, unrestricted use")
