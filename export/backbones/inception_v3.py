"""Inception-v3 (torchvision's `inception_v3`).

Every convolution is a BasicConv2d (`<name>.conv`, `<name>.bn` with eps 0.001,
ReLU). The stem is five of them with two unpadded 3x3 stride-2 max pools; then
come the mixed blocks: three InceptionA (`Mixed_5b`..`Mixed_5d`), the grid
reduction InceptionB (`Mixed_6a`), four InceptionC with factorised 7x7
convolutions (`Mixed_6b`..`Mixed_6e`), the reduction InceptionD (`Mixed_7a`) and
two InceptionE (`Mixed_7b`, `Mixed_7c`). The `branch_pool` of A, C and E
averages 3x3 windows with stride 1 and padding 1, counting the padding, before
its 1x1 convolution; B and D pool 3x3 with stride 2. A block's name is its
concatenated output. The auxiliary classifier (`AuxLogits`) and everything after
`Mixed_7c` are left out. Needs at least 75x75 pixels.
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import avg_pool, concat, max_pool
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.backbones.torchvision_common import TRANSFORM_INPUT, TorchvisionNet

DEFAULT_LAYERS = {"Mixed_6c": 1.0}
# Stem convolutions: name, in, out, kernel, stride, padding; "maxpoolN" entries are pools.
STEM = [
    ("Conv2d_1a_3x3", 3, 32, 3, 2, 0),
    ("Conv2d_2a_3x3", 32, 32, 3, 1, 0),
    ("Conv2d_2b_3x3", 32, 64, 3, 1, 1),
    ("maxpool1",),
    ("Conv2d_3b_1x1", 64, 80, 1, 1, 0),
    ("Conv2d_4a_3x3", 80, 192, 3, 1, 0),
    ("maxpool2",),
]
# Horizontal and vertical halves of a factorised kxk convolution: (kernel, padding).
ROW7, COL7 = ((1, 7), (0, 3)), ((7, 1), (3, 0))
ROW3, COL3 = ((1, 3), (0, 1)), ((3, 1), (1, 0))
# What a mixed block returns: its output, its channels and its stride.
Block = tuple[str, int, int]


def build(source: WeightSource) -> Backbone:
    net = TorchvisionNet(source)
    x, channels = net.input, 3
    for name, *spec in STEM:
        if spec:
            in_ch, channels, kernel, stride, padding = spec
            x = net.basic_conv(x, name, in_ch, channels, kernel, stride, padding)
        else:
            x = max_pool(net.g, x, 3, 2, name=name)
            stride = 2
        net.stride *= stride
        net.record(name, x, channels)

    blocks = [
        ("Mixed_5b", _inception_a, {"pool_features": 32}),
        ("Mixed_5c", _inception_a, {"pool_features": 64}),
        ("Mixed_5d", _inception_a, {"pool_features": 64}),
        ("Mixed_6a", _inception_b, {}),
        ("Mixed_6b", _inception_c, {"channels_7x7": 128}),
        ("Mixed_6c", _inception_c, {"channels_7x7": 160}),
        ("Mixed_6d", _inception_c, {"channels_7x7": 160}),
        ("Mixed_6e", _inception_c, {"channels_7x7": 192}),
        ("Mixed_7a", _inception_d, {}),
        ("Mixed_7b", _inception_e, {}),
        ("Mixed_7c", _inception_e, {}),
    ]
    for name, block, options in blocks:
        x, channels, stride = block(net, x, name, channels, **options)
        net.stride *= stride
        net.record(name, x, channels)
    return net.backbone("inception-v3", TRANSFORM_INPUT, DEFAULT_LAYERS)


def _chain(net: TorchvisionNet, x: str, name: str, in_ch: int, convs: list[tuple]) -> tuple[str, int]:
    """BasicConv2d `name_1`, `name_2`, ... in a row; each is (out, kernel[, padding[, stride]])."""
    for number, (out_ch, kernel, *rest) in enumerate(convs, 1):
        padding = rest[0] if rest else 0
        stride = rest[1] if len(rest) > 1 else 1
        x = net.basic_conv(x, f"{name}_{number}", in_ch, out_ch, kernel, stride, padding)
        in_ch = out_ch
    return x, in_ch


def _pool_branch(net: TorchvisionNet, x: str, name: str, in_ch: int, out_ch: int) -> str:
    pooled = avg_pool(net.g, x, 3, 1, 1, name=f"{name}.pool")
    return net.basic_conv(pooled, f"{name}.branch_pool", in_ch, out_ch, 1)


def _inception_a(net: TorchvisionNet, x: str, name: str, in_ch: int, pool_features: int) -> Block:
    one = net.basic_conv(x, f"{name}.branch1x1", in_ch, 64, 1)
    five, _ = _chain(net, x, f"{name}.branch5x5", in_ch, [(48, 1), (64, 5, 2)])
    three, _ = _chain(net, x, f"{name}.branch3x3dbl", in_ch, [(64, 1), (96, 3, 1), (96, 3, 1)])
    pool = _pool_branch(net, x, name, in_ch, pool_features)
    return concat(net.g, [one, five, three, pool], name), 64 + 64 + 96 + pool_features, 1


def _inception_b(net: TorchvisionNet, x: str, name: str, in_ch: int) -> Block:
    three = net.basic_conv(x, f"{name}.branch3x3", in_ch, 384, 3, stride=2)
    double, _ = _chain(net, x, f"{name}.branch3x3dbl", in_ch, [(64, 1), (96, 3, 1), (96, 3, 0, 2)])
    pool = max_pool(net.g, x, 3, 2, name=f"{name}.pool")
    return concat(net.g, [three, double, pool], name), 384 + 96 + in_ch, 2


def _inception_c(net: TorchvisionNet, x: str, name: str, in_ch: int, channels_7x7: int) -> Block:
    c7 = channels_7x7
    one = net.basic_conv(x, f"{name}.branch1x1", in_ch, 192, 1)
    seven, _ = _chain(net, x, f"{name}.branch7x7", in_ch, [(c7, 1), (c7, *ROW7), (192, *COL7)])
    double, _ = _chain(
        net,
        x,
        f"{name}.branch7x7dbl",
        in_ch,
        [(c7, 1), (c7, *COL7), (c7, *ROW7), (c7, *COL7), (192, *ROW7)],
    )
    pool = _pool_branch(net, x, name, in_ch, 192)
    return concat(net.g, [one, seven, double, pool], name), 4 * 192, 1


def _inception_d(net: TorchvisionNet, x: str, name: str, in_ch: int) -> Block:
    three, _ = _chain(net, x, f"{name}.branch3x3", in_ch, [(192, 1), (320, 3, 0, 2)])
    seven, _ = _chain(net, x, f"{name}.branch7x7x3", in_ch, [(192, 1), (192, *ROW7), (192, *COL7), (192, 3, 0, 2)])
    pool = max_pool(net.g, x, 3, 2, name=f"{name}.pool")
    return concat(net.g, [three, seven, pool], name), 320 + 192 + in_ch, 2


def _inception_e(net: TorchvisionNet, x: str, name: str, in_ch: int) -> Block:
    one = net.basic_conv(x, f"{name}.branch1x1", in_ch, 320, 1)
    reduced = net.basic_conv(x, f"{name}.branch3x3_1", in_ch, 384, 1)
    three = _split_3x3(net, reduced, f"{name}.branch3x3_2", 384)
    double, _ = _chain(net, x, f"{name}.branch3x3dbl", in_ch, [(448, 1), (384, 3, 1)])
    double = _split_3x3(net, double, f"{name}.branch3x3dbl_3", 384)
    pool = _pool_branch(net, x, name, in_ch, 192)
    return concat(net.g, [one, three, double, pool], name), 320 + 2 * 384 + 2 * 384 + 192, 1


def _split_3x3(net: TorchvisionNet, x: str, name: str, in_ch: int) -> str:
    """InceptionE's 1x3 (`name`a) and 3x1 (`name`b) convolutions side by side, concatenated."""
    (row_kernel, row_padding), (column_kernel, column_padding) = ROW3, COL3
    row = net.basic_conv(x, f"{name}a", in_ch, 384, row_kernel, padding=row_padding)
    column = net.basic_conv(x, f"{name}b", in_ch, 384, column_kernel, padding=column_padding)
    return concat(net.g, [row, column], f"{name}.concat")
