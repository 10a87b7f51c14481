"""GoogLeNet as torchvision defines it (`googlenet`), with batch norm.

Not the Caffe network of `googlenet_bvlc`: every convolution is a BasicConv2d
(`<name>.conv`, `<name>.bn` with eps 0.001, ReLU), there is no LRN, and each
inception block's "5x5" branch (`branch3`) really uses a 3x3 kernel with
padding 1. Branches: `branch1` 1x1; `branch2.0` 1x1 then `branch2.1` 3x3;
`branch3.0` 1x1 then `branch3.1` 3x3; `branch4` a 3x3 stride-1 max pool
(padding 1) then `branch4.1` 1x1. Max pools round up (ceil mode); `maxpool4`
is 2x2. A block's name is its concatenated output. The auxiliary classifiers
(`aux1`, `aux2`) and everything after `inception5b` are left out.
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.googlenet_bvlc import INCEPTION as BVLC_INCEPTION
from dreamstream.export.backbones.layers import concat, max_pool
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.backbones.torchvision_common import TRANSFORM_INPUT, TorchvisionNet

DEFAULT_LAYERS = {"inception4c": 1.0}
# Inception blocks: name, then output channels of branch1, branch2 reduce, branch2,
# branch3 reduce, branch3, branch4. A max pool (name, kernel) comes after the blocks
# named in POOL_AFTER.
# The same widths as BVLC GoogLeNet's blocks (torchvision's "3x3" third branch included).
INCEPTION = [(f"inception{block[len('inception_') :]}", *widths) for block, *widths in BVLC_INCEPTION]
POOL_AFTER = {"inception3b": ("maxpool3", 3), "inception4e": ("maxpool4", 2)}


def build(source: WeightSource) -> Backbone:
    net = TorchvisionNet(source)
    x = net.basic_conv(net.input, "conv1", 3, 64, 7, stride=2, padding=3)
    net.stride *= 2
    net.record("conv1", x, 64)
    x = _pool(net, x, "maxpool1", 64)
    x = net.record("conv2", net.basic_conv(x, "conv2", 64, 64, 1), 64)
    x = net.record("conv3", net.basic_conv(x, "conv3", 64, 192, 3, padding=1), 192)
    x = _pool(net, x, "maxpool2", 192)
    channels = 192
    for spec in INCEPTION:
        x, channels = _inception(net, x, channels, spec)
        net.record(spec[0], x, channels)
        if spec[0] in POOL_AFTER:
            pool, kernel = POOL_AFTER[spec[0]]
            x = _pool(net, x, pool, channels, kernel)
    return net.backbone("googlenet", TRANSFORM_INPUT, DEFAULT_LAYERS)


def _pool(net: TorchvisionNet, x: str, name: str, channels: int, kernel: int = 3) -> str:
    y = max_pool(net.g, x, kernel, 2, ceil=True, name=name)
    net.stride *= 2
    return net.record(name, y, channels)


def _inception(net: TorchvisionNet, x: str, in_ch: int, spec: tuple) -> tuple[str, int]:
    name, c1, r3, c3, r5, c5, proj = spec
    one = net.basic_conv(x, f"{name}.branch1", in_ch, c1, 1)
    three = _reduce_then_3x3(net, x, f"{name}.branch2", in_ch, r3, c3)
    five = _reduce_then_3x3(net, x, f"{name}.branch3", in_ch, r5, c5)
    pooled = max_pool(net.g, x, 3, 1, 1, ceil=True, name=f"{name}.branch4.0")
    projected = net.basic_conv(pooled, f"{name}.branch4.1", in_ch, proj, 1)
    return concat(net.g, [one, three, five, projected], name), c1 + c3 + c5 + proj


def _reduce_then_3x3(net: TorchvisionNet, x: str, branch: str, in_ch: int, reduced: int, out_ch: int) -> str:
    """`branch.0`, a 1x1 BasicConv2d, then `branch.1`, a 3x3 one with padding 1."""
    h = net.basic_conv(x, f"{branch}.0", in_ch, reduced, 1)
    return net.basic_conv(h, f"{branch}.1", reduced, out_ch, 3, padding=1)
