"""A corpus of image classifiers written here in torch, as users bring them (tests only).

Tiny widths, real topologies: each network follows its paper's block structure
(AlexNet, SqueezeNet 1.0 and 1.1, DenseNet-121, ShuffleNet v1 and v2,
MobileNet v2 and v3, Inception v2 with batch norm (and with Caffe2's grid
reductions, which line up at some sizes only), GoogLeNet with LRN, ResNeXt, Wide ResNet,
RegNetY, MNASNet, EfficientNet-B0, ConvNeXt-T, and a few shapes of network
those lack: a U-Net-style decoder with Resize, an attention block with MatMul
and Softmax, an Xception with PReLU/ELU/LeakyReLU, a style network with
InstanceNorm). `forward` returns (mid, deep, logits): two feature maps to dream
on and the classifier output, so that an ONNX export names them.

Random weights with sensible scales: torch's default initialisation, batch
norms with running statistics, gains and shifts away from the identity.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def conv_bn(
    cin: int, cout: int, k: int = 3, s: int = 1, groups: int = 1, act: Callable | None = nn.ReLU
) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, s, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """stem -> mid blocks -> deep blocks -> global pool -> linear; returns (mid, deep, logits)."""

    def __init__(self, stem: nn.Module, mid: nn.Module, deep: nn.Module, channels: int, classes: int = 10) -> None:
        super().__init__()
        self.stem, self.mid, self.deep = stem, mid, deep
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mid = self.mid(self.stem(x))
        deep = self.deep(mid)
        return mid, deep, self.fc(torch.flatten(F.adaptive_avg_pool2d(deep, 1), 1))


# --- AlexNet, SqueezeNet ---


def alexnet() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 16, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2))
    mid = nn.Sequential(nn.Conv2d(16, 24, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2))
    deep = nn.Sequential(
        nn.Conv2d(24, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 24, 3, padding=1), nn.ReLU(),
        nn.Conv2d(24, 24, 3, padding=1), nn.ReLU(),
    )  # fmt: skip
    return Classifier(stem, mid, deep, 24)


class Fire(nn.Module):
    def __init__(self, cin: int, squeeze: int, expand: int) -> None:
        super().__init__()
        self.squeeze = nn.Sequential(nn.Conv2d(cin, squeeze, 1), nn.ReLU())
        self.e1 = nn.Sequential(nn.Conv2d(squeeze, expand, 1), nn.ReLU())
        self.e3 = nn.Sequential(nn.Conv2d(squeeze, expand, 3, padding=1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        s = self.squeeze(x)
        return torch.cat([self.e1(s), self.e3(s)], 1)


def squeezenet(version: str) -> nn.Module:
    pool = lambda: nn.MaxPool2d(3, 2, ceil_mode=True)  # noqa: E731
    if version == "1.0":
        stem = nn.Sequential(nn.Conv2d(3, 16, 7, 2), nn.ReLU(), pool())
        mid = nn.Sequential(Fire(16, 4, 8), Fire(16, 4, 8), Fire(16, 8, 16), pool())
    else:
        stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2), nn.ReLU(), pool())
        mid = nn.Sequential(Fire(16, 4, 8), Fire(16, 4, 8), pool(), Fire(16, 8, 16))
    deep = nn.Sequential(Fire(32, 8, 16), Fire(32, 8, 16), pool(), Fire(32, 8, 16))
    return Classifier(stem, mid, deep, 32)


# --- DenseNet-121 ---


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 2 * growth, 1, bias=False),
            nn.BatchNorm2d(2 * growth), nn.ReLU(), nn.Conv2d(2 * growth, growth, 3, padding=1, bias=False),
        )  # fmt: skip

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], 1)


def _dense_block(cin: int, layers: int, growth: int) -> tuple[nn.Sequential, int]:
    blocks = []
    for _ in range(layers):
        blocks.append(DenseLayer(cin, growth))
        cin += growth
    return nn.Sequential(*blocks), cin


def _transition(cin: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, cin // 2, 1, bias=False), nn.AvgPool2d(2, 2))


def densenet121() -> nn.Module:
    growth, channels = 4, 8
    stem = nn.Sequential(conv_bn(3, channels, 7, 2), nn.MaxPool2d(3, 2, 1))
    parts = []
    for index, count in enumerate((6, 12, 24, 16)):  # DenseNet-121's block sizes: 120 convolutions
        block, channels = _dense_block(channels, count, growth)
        parts.append(block)
        if index < 3:
            parts.append(_transition(channels))
            channels //= 2
    mid = nn.Sequential(*parts[:4])
    deep = nn.Sequential(*parts[4:], nn.BatchNorm2d(channels), nn.ReLU())
    return Classifier(stem, mid, deep, channels)


# --- ShuffleNet v1 and v2 ---


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class ShuffleV1Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        branch = cout - cin if stride == 2 else cout
        mid = branch // 2
        self.reduce = conv_bn(cin, mid, 1, groups=groups)
        self.depthwise = conv_bn(mid, mid, 3, stride, groups=mid, act=None)
        self.expand = conv_bn(mid, branch, 1, groups=groups, act=None)

    def forward(self, x: Tensor) -> Tensor:
        y = self.expand(self.depthwise(channel_shuffle(self.reduce(x), self.groups)))
        if self.stride == 2:
            return F.relu(torch.cat([F.avg_pool2d(x, 3, 2, 1), y], 1))
        return F.relu(x + y)


def shufflenet_v1() -> nn.Module:
    stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
    mid = nn.Sequential(ShuffleV1Unit(8, 16, 2), ShuffleV1Unit(16, 16, 1))
    deep = nn.Sequential(ShuffleV1Unit(16, 32, 2), ShuffleV1Unit(32, 32, 1))
    return Classifier(stem, mid, deep, 32)


class ShuffleV2Unit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        half = cout // 2
        if stride == 2:
            self.left = nn.Sequential(conv_bn(cin, cin, 3, 2, groups=cin, act=None), conv_bn(cin, half, 1))
            source = cin
        else:
            source = half
        self.right = nn.Sequential(
            conv_bn(source, half, 1), conv_bn(half, half, 3, stride, groups=half, act=None), conv_bn(half, half, 1)
        )

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == 2:
            out = torch.cat([self.left(x), self.right(x)], 1)
        else:
            left, right = x.chunk(2, dim=1)
            out = torch.cat([left, self.right(right)], 1)
        return channel_shuffle(out, 2)


def shufflenet_v2() -> nn.Module:
    stem = nn.Sequential(conv_bn(3, 8, 3, 2), nn.MaxPool2d(3, 2, 1))
    mid = nn.Sequential(ShuffleV2Unit(8, 16, 2), ShuffleV2Unit(16, 16, 1))
    deep = nn.Sequential(ShuffleV2Unit(16, 32, 2), ShuffleV2Unit(32, 32, 1), conv_bn(32, 48, 1))
    return Classifier(stem, mid, deep, 48)


# --- MobileNet v2 and v3, MNASNet, EfficientNet-B0 ---


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduced: int, gate: Callable = nn.Sigmoid, act: Callable = nn.ReLU) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(channels, reduced, 1), act(), nn.Conv2d(reduced, channels, 1), gate())

    def forward(self, x: Tensor) -> Tensor:
        return x * self.body(x.mean((2, 3), keepdim=True))


class InvertedResidual(nn.Module):
    def __init__(
        self,
        cin: int,
        cout: int,
        stride: int,
        expand: int,
        k: int = 3,
        act: Callable = nn.ReLU6,
        se: Callable | None = None,
    ) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [conv_bn(cin, hidden, 1, act=act)] if expand != 1 else []
        layers.append(conv_bn(hidden, hidden, k, stride, groups=hidden, act=act))
        if se is not None:
            layers.append(se(hidden))
        layers.append(conv_bn(hidden, cout, 1, act=None))
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def mobilenet_v2() -> nn.Module:
    stem = conv_bn(3, 8, 3, 2, act=nn.ReLU6)
    mid = nn.Sequential(InvertedResidual(8, 8, 1, 1), InvertedResidual(8, 12, 2, 6), InvertedResidual(12, 12, 1, 6))
    deep = nn.Sequential(
        InvertedResidual(12, 16, 2, 6), InvertedResidual(16, 16, 1, 6), conv_bn(16, 64, 1, act=nn.ReLU6)
    )
    return Classifier(stem, mid, deep, 64)


def mobilenet_v3() -> nn.Module:
    se = lambda c: SqueezeExcite(c, max(4, c // 4), gate=nn.Hardsigmoid)  # noqa: E731
    stem = conv_bn(3, 8, 3, 2, act=nn.Hardswish)
    mid = nn.Sequential(
        InvertedResidual(8, 8, 2, 1, act=nn.ReLU, se=se), InvertedResidual(8, 12, 2, 4, act=nn.ReLU),
        InvertedResidual(12, 12, 1, 3, act=nn.ReLU),
    )  # fmt: skip
    deep = nn.Sequential(
        InvertedResidual(12, 16, 2, 4, 5, act=nn.Hardswish, se=se),
        InvertedResidual(16, 16, 1, 3, 5, act=nn.Hardswish, se=se), conv_bn(16, 48, 1, act=nn.Hardswish),
    )  # fmt: skip
    return Classifier(stem, mid, deep, 48)


def mnasnet() -> nn.Module:
    stem = nn.Sequential(conv_bn(3, 8, 3, 2), conv_bn(8, 8, 3, groups=8), conv_bn(8, 8, 1, act=None))
    mid = nn.Sequential(InvertedResidual(8, 12, 2, 3, act=nn.ReLU), InvertedResidual(12, 16, 2, 3, 5, act=nn.ReLU))
    deep = nn.Sequential(
        InvertedResidual(16, 16, 1, 6, 5, act=nn.ReLU), InvertedResidual(16, 24, 2, 6, 5, act=nn.ReLU),
        conv_bn(24, 48, 1),
    )  # fmt: skip
    return Classifier(stem, mid, deep, 48)


class SamePadConv(nn.Module):
    """TensorFlow's SAME padding, as ported EfficientNets write it: an asymmetric F.pad before the conv."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, k, stride, 0, groups=groups, bias=False)
        self.k, self.stride = k, stride

    def forward(self, x: Tensor) -> Tensor:
        total = max(self.k - self.stride, 0)  # exact for even sizes, as the ports assume
        return self.conv(F.pad(x, [total // 2, total - total // 2, total // 2, total - total // 2]))


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int, k: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.body = nn.Sequential(
            *([conv_bn(cin, hidden, 1, act=nn.SiLU)] if expand != 1 else []),
            SamePadConv(hidden, hidden, k, stride, groups=hidden), nn.BatchNorm2d(hidden), nn.SiLU(),
            SqueezeExcite(hidden, max(2, cin // 4), act=nn.SiLU), conv_bn(hidden, cout, 1, act=None),
        )  # fmt: skip
        self.residual = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = self.body(x)
        return x + y if self.residual else y


def efficientnet_b0() -> nn.Module:
    stem = nn.Sequential(SamePadConv(3, 8, 3, 2), nn.BatchNorm2d(8), nn.SiLU())
    mid = nn.Sequential(MBConv(8, 8, 1, 1, 3), MBConv(8, 12, 2, 6, 3), MBConv(12, 16, 2, 6, 5))
    deep = nn.Sequential(MBConv(16, 16, 1, 6, 5), MBConv(16, 24, 2, 6, 3), conv_bn(24, 64, 1, act=nn.SiLU))
    return Classifier(stem, mid, deep, 64)


# --- Inception v2 (BN-Inception) ---


class InceptionV2Block(nn.Module):
    def __init__(
        self, cin: int, b1: int, b3: tuple[int, int], bd: tuple[int, int], pool: int, avg: bool = True
    ) -> None:
        super().__init__()
        self.b1 = conv_bn(cin, b1, 1)
        self.b3 = nn.Sequential(conv_bn(cin, b3[0], 1), conv_bn(b3[0], b3[1], 3))
        self.bd = nn.Sequential(conv_bn(cin, bd[0], 1), conv_bn(bd[0], bd[1], 3), conv_bn(bd[1], bd[1], 3))
        self.pool = nn.AvgPool2d(3, 1, 1) if avg else nn.MaxPool2d(3, 1, 1)
        self.bp = conv_bn(cin, pool, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.bd(x), self.bp(self.pool(x))], 1)


def inception_v2() -> nn.Module:
    stem = nn.Sequential(
        conv_bn(3, 8, 7, 2), nn.MaxPool2d(3, 2, ceil_mode=True), conv_bn(8, 8, 1), conv_bn(8, 16, 3),
        nn.MaxPool2d(3, 2, ceil_mode=True),
    )  # fmt: skip
    mid = nn.Sequential(
        InceptionV2Block(16, 4, (4, 8), (4, 8), 4), InceptionV2Block(24, 8, (4, 8), (4, 8), 8, avg=False)
    )
    deep = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), InceptionV2Block(32, 8, (8, 8), (8, 8), 8))
    return Classifier(stem, mid, deep, 32)


class Reduction(nn.Module):
    """BN-Inception's grid reduction as Caffe2 converted it: a strided convolution beside a
    ceil-mode pool. Their maps line up only at sides of the right parity: the network runs
    at some sizes only (every 8 px with two of them after a strided stem)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = conv_bn(cin, cout, 3, 2)
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.conv(x), self.pool(x)], 1)


def aligned_inception() -> nn.Module:
    stem = conv_bn(3, 8, 7, 2)
    mid = nn.Sequential(Reduction(8, 8), InceptionV2Block(16, 4, (4, 8), (4, 8), 4))
    deep = nn.Sequential(Reduction(24, 8), conv_bn(32, 32, 3))
    return Classifier(stem, mid, deep, 32)


class InceptionBlock(nn.Module):
    """GoogLeNet's inception block: 1x1, 3x3, 5x5 and a pooled projection, concatenated."""

    def __init__(self, cin: int, b1: int, b3: int, b5: int, pool: int) -> None:
        super().__init__()
        self.b1 = nn.Sequential(nn.Conv2d(cin, b1, 1), nn.ReLU())
        self.b3 = nn.Sequential(nn.Conv2d(cin, b3, 1), nn.ReLU(), nn.Conv2d(b3, b3, 3, 1, 1), nn.ReLU())
        self.b5 = nn.Sequential(nn.Conv2d(cin, b5, 1), nn.ReLU(), nn.Conv2d(b5, b5, 5, 1, 2), nn.ReLU())
        self.bp = nn.Sequential(nn.MaxPool2d(3, 1, 1, ceil_mode=True), nn.Conv2d(cin, pool, 1), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], 1)


def googlenet_lrn() -> nn.Module:
    """BVLC GoogLeNet's shape: ceil-mode pools and LocalResponseNorm after the stem."""
    stem = nn.Sequential(
        nn.Conv2d(3, 8, 7, 2, 3), nn.ReLU(), nn.MaxPool2d(3, 2, ceil_mode=True), nn.LocalResponseNorm(5, 1e-2, 0.75),
        nn.Conv2d(8, 16, 3, 1, 1), nn.ReLU(), nn.LocalResponseNorm(4, 1e-2, 0.75, 2.0),
        nn.MaxPool2d(3, 2, ceil_mode=True),
    )  # fmt: skip
    mid = InceptionBlock(16, 8, 8, 4, 4)
    deep = nn.Sequential(nn.MaxPool2d(3, 2, ceil_mode=True), InceptionBlock(24, 8, 16, 4, 4))
    return Classifier(stem, mid, deep, 32)


# --- ResNeXt, Wide ResNet, RegNetY ---


class Bottleneck(nn.Module):
    def __init__(self, cin: int, width: int, cout: int, stride: int, groups: int, se: bool = False) -> None:
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(cin, width, 1), conv_bn(width, width, 3, stride, groups=groups),
            *([SqueezeExcite(width, max(2, cin // 4))] if se else []), conv_bn(width, cout, 1, act=None),
        )  # fmt: skip
        self.shortcut = conv_bn(cin, cout, 1, stride, act=None) if stride != 1 or cin != cout else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def resnext() -> nn.Module:
    stem = nn.Sequential(conv_bn(3, 16, 7, 2), nn.MaxPool2d(3, 2, 1))
    mid = nn.Sequential(Bottleneck(16, 16, 32, 1, groups=4), Bottleneck(32, 16, 32, 1, groups=4))
    deep = nn.Sequential(Bottleneck(32, 32, 64, 2, groups=4), Bottleneck(64, 32, 64, 1, groups=4))
    return Classifier(stem, mid, deep, 64)


def regnet_y() -> nn.Module:
    stem = conv_bn(3, 8, 3, 2)
    mid = nn.Sequential(Bottleneck(8, 8, 8, 2, groups=2, se=True), Bottleneck(8, 16, 16, 2, groups=4, se=True))
    deep = nn.Sequential(Bottleneck(16, 32, 32, 2, groups=8, se=True), Bottleneck(32, 32, 32, 1, groups=8, se=True))
    return Classifier(stem, mid, deep, 32)


class WideBlock(nn.Module):
    """Pre-activation basic block (Wide ResNet): BN-ReLU-conv-BN-ReLU-dropout-conv."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.pre = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(0.3),
            nn.Conv2d(cout, cout, 3, 1, 1, bias=False),
        )  # fmt: skip
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: Tensor) -> Tensor:
        activated = self.pre(x)
        return self.body(activated) + (x if self.shortcut is None else self.shortcut(activated))


def wide_resnet() -> nn.Module:
    stem = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
    mid = nn.Sequential(WideBlock(8, 16, 1), WideBlock(16, 16, 1), WideBlock(16, 32, 2))
    deep = nn.Sequential(WideBlock(32, 32, 1), WideBlock(32, 48, 2), nn.BatchNorm2d(48), nn.ReLU())
    return Classifier(stem, mid, deep, 48)


# --- ConvNeXt-T ---


class ChannelsFirstLayerNorm(nn.Module):
    """ConvNeXt's LayerNorm over channels of an NCHW tensor, written out (as its reference code does)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(channels).uniform_(0.5, 1.5))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-0.2, 0.2))

    def forward(self, x: Tensor) -> Tensor:
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-6)
        return self.weight[:, None, None] * x + self.bias[:, None, None]


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.up = nn.Linear(channels, 4 * channels)
        self.down = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.down(F.gelu(self.up(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


def convnext_t() -> nn.Module:
    stem = nn.Sequential(nn.Conv2d(3, 16, 4, 4), ChannelsFirstLayerNorm(16))
    mid = nn.Sequential(ConvNeXtBlock(16), ConvNeXtBlock(16))
    deep = nn.Sequential(ChannelsFirstLayerNorm(16), nn.Conv2d(16, 32, 2, 2), ConvNeXtBlock(32), ConvNeXtBlock(32))
    return Classifier(stem, mid, deep, 32)


# --- Shapes the classics lack: decoder with Resize, attention, other activations, InstanceNorm ---


class UNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down1, self.down2 = conv_bn(3, 8, 3, 2), conv_bn(8, 16, 3, 2)
        self.lateral = conv_bn(8, 16, 1)
        self.fuse = conv_bn(32, 16, 3)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        a = self.down1(x)
        b = self.down2(a)
        # To the lateral's own size, as U-Nets do: odd sizes work, and the sizes are computed at run time.
        up = F.interpolate(b, size=a.shape[2:], mode="nearest")
        smooth = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)[
            :, :, : a.shape[2], : a.shape[3]
        ]
        deep = self.fuse(torch.cat([up + smooth, self.lateral(a)], 1))
        return b, deep, self.fc(deep.amax((2, 3)))


class Attention(nn.Module):
    """Self-attention over the positions of a feature map (a ViT block on a conv stem)."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 16, 3, 2), conv_bn(16, 16, 3, 2))
        self.qkv = nn.Conv2d(16, 48, 1)
        self.out = nn.Conv2d(16, 16, 1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mid = self.stem(x)
        n, c, h, w = mid.shape
        q, k, v = self.qkv(mid).flatten(2).chunk(3, dim=1)  # [n, c, hw] each
        weights = torch.softmax(q.transpose(1, 2) @ k / 4.0, dim=-1)  # [n, hw, hw]
        attended = (v @ weights.transpose(1, 2)).reshape(n, c, h, w)
        deep = mid + self.out(attended)
        return mid, deep, self.fc(deep.mean((2, 3)))


def xception() -> nn.Module:
    def separable(cin: int, cout: int, act: Callable) -> nn.Sequential:
        return nn.Sequential(
            act(), nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False), conv_bn(cin, cout, 1, act=None)
        )

    stem = nn.Sequential(conv_bn(3, 8, 3, 2, act=lambda: nn.PReLU(8)), conv_bn(8, 16, 3, act=nn.ELU))
    mid = nn.Sequential(separable(16, 16, nn.LeakyReLU), separable(16, 24, nn.SELU), nn.MaxPool2d(3, 2, 1))
    deep = nn.Sequential(separable(24, 32, nn.Softplus), separable(32, 32, nn.Tanh), nn.ELU())
    return Classifier(stem, mid, deep, 32)


def style_net() -> nn.Module:
    def block(cin: int, cout: int, stride: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.InstanceNorm2d(cout, affine=True), nn.ReLU())

    stem = block(3, 8, 1)
    mid = nn.Sequential(block(8, 16, 2), nn.ReflectionPad2d(0), block(16, 16, 1))
    deep = nn.Sequential(block(16, 32, 2), nn.Upsample(scale_factor=2, mode="nearest"), block(32, 16, 1))
    return Classifier(stem, mid, deep, 16)


ARCHITECTURES: dict[str, Callable[[], nn.Module]] = {
    "alexnet": alexnet,
    "squeezenet1.0": lambda: squeezenet("1.0"),
    "squeezenet1.1": lambda: squeezenet("1.1"),
    "densenet121": densenet121,
    "shufflenet_v1": shufflenet_v1,
    "shufflenet_v2": shufflenet_v2,
    "mobilenet_v2": mobilenet_v2,
    "mobilenet_v3": mobilenet_v3,
    "inception_v2": inception_v2,
    "resnext": resnext,
    "wide_resnet": wide_resnet,
    "regnet_y": regnet_y,
    "mnasnet": mnasnet,
    "efficientnet_b0": efficientnet_b0,
    "convnext_t": convnext_t,
    "unet": UNetish,
    "attention": Attention,
    "xception": xception,
    "style_net": style_net,
    "aligned_inception": aligned_inception,
    "googlenet_lrn": googlenet_lrn,
}


def build(arch: str, seed: int = 0) -> nn.Module:
    """The architecture in eval mode with seeded random weights of sensible scales."""
    torch.manual_seed(seed)
    model = ARCHITECTURES[arch]()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 1.5)
            elif isinstance(module, nn.InstanceNorm2d) and module.affine:
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
    return model.eval()
