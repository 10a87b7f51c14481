"""PyTorch reference definitions of the backbones the export tool knows (tests only).

The tests check our ONNX gradient graphs against torch autograd through these
modules, loading the same weights, so each one follows its original exactly:
the same state-dict keys (lukemelas' for EfficientNet-Lite0, Caffe layer names
for BVLC GoogLeNet, torchvision's for the rest; torchvision itself cannot be
installed here, so its architectures are written out below), the same
preprocessing, padding, pooling and normalisation.

Every reference takes the raw image, RGB in [0,1], float32 [N,3,H,W], applies
the backbone's own preprocessing, and `forward(x, layers)` returns the named
activations asked for, computing nothing past the deepest of them.
`layer_names(backbone)` lists every name in forward order; `logits(x)` runs the
classifier, for sanity checks on real weights.

`random_state_dict(arch, seed)` makes a full state dict of plausible random
values (He-initialised convolutions, batch norms with positive running
variances), so tests can run without downloaded weights, and
`save_state_dict` writes one with torch.save, as a user's weight file would be.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

TORCHVISION_ARCHS = ("vgg16", "vgg19", "resnet50", "inception-v3", "googlenet")
BACKBONES = ("efficientnet-lite0", "googlenet-bvlc", *TORCHVISION_ARCHS)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Preprocessing:
    """RGB in [0,1] to the backbone's input: reorder, scale, subtract mean, divide by std.

    `mean` and `std` are in the backbone's channel order, after scaling.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        bgr: bool = False,
        scale: float = 1.0,
    ) -> None:
        self.mean, self.std, self.bgr, self.scale = tuple(mean), tuple(std), bgr, scale

    def __call__(self, x: Tensor) -> Tensor:
        if self.bgr:
            x = x.flip(1)
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
        return (x * self.scale - mean) / std


PREPROCESSING: dict[str, Preprocessing] = {
    "efficientnet-lite0": Preprocessing((0.5,) * 3, (0.5,) * 3),
    "googlenet-bvlc": Preprocessing((104.0, 117.0, 123.0), (1.0,) * 3, bgr=True, scale=255.0),
    "vgg16": Preprocessing(IMAGENET_MEAN, IMAGENET_STD),
    "vgg19": Preprocessing(IMAGENET_MEAN, IMAGENET_STD),
    "resnet50": Preprocessing(IMAGENET_MEAN, IMAGENET_STD),
    # torchvision's transform_input: the network sees (x - 0.5) / 0.5
    "inception-v3": Preprocessing((0.5,) * 3, (0.5,) * 3),
    "googlenet": Preprocessing((0.5,) * 3, (0.5,) * 3),
}


class Reference(nn.Module, metaclass=abc.ABCMeta):
    """A backbone whose activations can be read by name.

    Subclasses define `_activations`, a generator of (name, activation) in
    forward order on the preprocessed input, and `_classify`, the classifier
    head applied to the deepest named activation.
    """

    backbone: str

    @abc.abstractmethod
    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        """(name, activation) for every name of `layer_names`, in that order."""

    @abc.abstractmethod
    def _classify(self, deepest: Tensor) -> Tensor:
        """ImageNet class scores from the deepest named activation."""

    def forward(self, x: Tensor, layers: Sequence[str]) -> dict[str, Tensor]:
        known = layer_names(self.backbone)
        unknown = [name for name in layers if name not in known]
        if unknown:
            raise KeyError(f"{self.backbone} has no layer {unknown}; known: {', '.join(known)}")
        remaining = set(layers)
        found: dict[str, Tensor] = {}
        if remaining:
            for name, activation in self._activations(PREPROCESSING[self.backbone](x)):
                if name in remaining:
                    found[name] = activation
                    remaining.discard(name)
                    if not remaining:
                        break  # nothing deeper is computed
        return {name: found[name] for name in layers}

    def logits(self, x: Tensor) -> Tensor:
        """Class scores (before softmax) of the backbone's ImageNet classifier."""
        deepest = layer_names(self.backbone)[-1]
        return self._classify(self(x, [deepest])[deepest])


class _ChainReference(Reference):
    """A network whose named layers are submodules applied one after the other, then
    global average pooling and `fc`."""

    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        for name in layer_names(self.backbone):
            x = getattr(self, name)(x)
            yield name, x

    def _classify(self, deepest: Tensor) -> Tensor:
        return self.fc(deepest.mean((2, 3)))


def _bn(channels: int, eps: float = 1e-5) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=eps)


# ---------------------------------------------------------- EfficientNet-Lite0
# lukemelas/EfficientNet-PyTorch names, Lite variant: no squeeze-excitation,
# ReLU6, stem and head widths fixed, TensorFlow "SAME" padding.

# (kernel, stride, expand ratio, in channels, out channels, repeats) per stage
_LITE0_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_LITE0_BN_EPS = 1e-3


def _pad_same(x: Tensor, kernel: Sequence[int], stride: Sequence[int]) -> Tensor:
    """TensorFlow "SAME": output ceil(size / stride), the odd pixel of padding at bottom/right."""
    pads = []
    for size, k, s in zip(x.shape[-2:], kernel, stride, strict=True):
        total = max((math.ceil(size / s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    (top, bottom), (left, right) = pads
    return F.pad(x, (left, right, top, bottom))


class _SameConv2d(nn.Conv2d):
    def forward(self, x: Tensor) -> Tensor:
        x = _pad_same(x, self.kernel_size, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class _MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int) -> None:
        super().__init__()
        mid = cin * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid, _LITE0_BN_EPS)
        self._depthwise_conv = _SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = _bn(mid, _LITE0_BN_EPS)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout, _LITE0_BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite0(Reference):
    backbone = "efficientnet-lite0"

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = _SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = _bn(32, _LITE0_BN_EPS)
        blocks = []
        for kernel, stride, expand, cin, cout, repeats in _LITE0_STAGES:
            for i in range(repeats):
                first = i == 0
                blocks.append(_MBConv(kernel, stride if first else 1, expand, cin if first else cout, cout))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = nn.Conv2d(320, 1280, 1, bias=False)
        self._bn1 = _bn(1280, _LITE0_BN_EPS)
        self._fc = nn.Linear(1280, 1000)

    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        yield "stem", x
        for i, block in enumerate(self._blocks):
            x = block(x)
            yield f"block{i}", x
        yield "head", F.relu6(self._bn1(self._conv_head(x)))

    def _classify(self, deepest: Tensor) -> Tensor:
        return self._fc(deepest.mean((2, 3)))


# ------------------------------------------------------------ BVLC GoogLeNet
# The Caffe deploy.prototxt topology; parameters are named by Caffe layer,
# `<layer>/weight` (out, in, kh, kw) and `<layer>/bias`, like the npz and the
# caffemodel reader. ReLUs are in place in Caffe, so a convolution's top is
# its post-ReLU activation.

# (name, in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj); shared with torchvision's
_INCEPTIONS = (
    ("3a", 192, 64, 96, 128, 16, 32, 32),
    ("3b", 256, 128, 128, 192, 32, 96, 64),
    ("4a", 480, 192, 96, 208, 16, 48, 64),
    ("4b", 512, 160, 112, 224, 24, 64, 64),
    ("4c", 512, 128, 128, 256, 24, 64, 64),
    ("4d", 512, 112, 144, 288, 32, 64, 64),
    ("4e", 528, 256, 160, 320, 32, 128, 128),
    ("5a", 832, 256, 160, 320, 32, 128, 128),
    ("5b", 832, 384, 192, 384, 48, 128, 128),
)
_BVLC_BRANCH_TOPS = ("1x1", "3x3_reduce", "3x3", "5x5_reduce", "5x5", "pool", "pool_proj", "output")


def _bvlc_convs() -> list[tuple[str, int, int, int]]:
    """(layer, in, out, kernel) of every convolution, and the classifier as a 1x1 one."""
    convs = [("conv1/7x7_s2", 3, 64, 7), ("conv2/3x3_reduce", 64, 64, 1), ("conv2/3x3", 64, 192, 3)]
    for block, cin, c1, r3, c3, r5, c5, proj in _INCEPTIONS:
        p = f"inception_{block}/"
        convs += [
            (p + "1x1", cin, c1, 1),
            (p + "3x3_reduce", cin, r3, 1),
            (p + "3x3", r3, c3, 3),
            (p + "5x5_reduce", cin, r5, 1),
            (p + "5x5", r5, c5, 5),
            (p + "pool_proj", cin, proj, 1),
        ]
    return [*convs, ("loss3/classifier", 1024, 1000, 1)]


class GoogLeNetBVLC(Reference):
    backbone = "googlenet-bvlc"

    def __init__(self) -> None:
        super().__init__()
        for layer, cin, cout, k in _bvlc_convs():
            self.register_parameter(f"{layer}/weight", nn.Parameter(torch.empty(cout, cin, k, k)))
            self.register_parameter(f"{layer}/bias", nn.Parameter(torch.empty(cout)))

    def _conv(self, layer: str, x: Tensor, stride: int = 1) -> Tensor:
        weight = getattr(self, f"{layer}/weight")
        pad = weight.shape[-1] // 2
        return F.relu(F.conv2d(x, weight, getattr(self, f"{layer}/bias"), stride, pad))

    @staticmethod
    def _lrn(x: Tensor) -> Tensor:
        # Caffe's alpha is divided by local_size, as torch does.
        return F.local_response_norm(x, 5, alpha=1e-4, beta=0.75, k=1.0)

    @staticmethod
    def _pool(x: Tensor, stride: int = 2) -> Tensor:
        return F.max_pool2d(x, 3, stride, padding=1 if stride == 1 else 0, ceil_mode=True)

    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = self._conv("conv1/7x7_s2", x, stride=2)
        yield "conv1/7x7_s2", x
        x = self._pool(x)
        yield "pool1/3x3_s2", x
        x = self._lrn(x)
        yield "pool1/norm1", x
        x = self._conv("conv2/3x3_reduce", x)
        yield "conv2/3x3_reduce", x
        x = self._conv("conv2/3x3", x)
        yield "conv2/3x3", x
        x = self._lrn(x)
        yield "conv2/norm2", x
        x = self._pool(x)
        yield "pool2/3x3_s2", x
        for block, *_ in _INCEPTIONS:
            if block in ("4a", "5a"):
                x = self._pool(x)
                yield f"pool{3 if block == '4a' else 4}/3x3_s2", x
            p = f"inception_{block}/"
            b1 = self._conv(p + "1x1", x)
            yield p + "1x1", b1
            r3 = self._conv(p + "3x3_reduce", x)
            yield p + "3x3_reduce", r3
            b3 = self._conv(p + "3x3", r3)
            yield p + "3x3", b3
            r5 = self._conv(p + "5x5_reduce", x)
            yield p + "5x5_reduce", r5
            b5 = self._conv(p + "5x5", r5)
            yield p + "5x5", b5
            pool = self._pool(x, stride=1)
            yield p + "pool", pool
            proj = self._conv(p + "pool_proj", pool)
            yield p + "pool_proj", proj
            x = torch.cat([b1, b3, b5, proj], 1)
            yield p + "output", x

    def _classify(self, deepest: Tensor) -> Tensor:
        pooled = F.avg_pool2d(deepest, 7, stride=1, ceil_mode=True)  # pool5/7x7_s1
        if pooled.shape[-2:] != (1, 1):
            raise ValueError("the BVLC classifier needs a 224x224 input (7x7 at inception_5b)")
        weight = getattr(self, "loss3/classifier/weight").flatten(1)
        return F.linear(pooled.flatten(1), weight, getattr(self, "loss3/classifier/bias"))


# ----------------------------------------------------------------- torchvision


class _BasicConv2d(nn.Module):
    """torchvision's Inception/GoogLeNet unit: conv without bias, BN (eps 0.001), ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = _bn(cout, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


_VGG_DEPTHS = {"vgg16": (2, 2, 3, 3, 3), "vgg19": (2, 2, 4, 4, 4)}
_VGG_WIDTHS = (64, 128, 256, 512, 512)


def _vgg_taps(arch: str) -> dict[int, str]:
    """Index in `features` of each named activation (the ReLUs and the pools)."""
    taps, index = {}, 0
    for block, depth in enumerate(_VGG_DEPTHS[arch], 1):
        for i in range(1, depth + 1):
            taps[index + 1] = f"conv{block}_{i}"  # the ReLU after the conv at `index`
            index += 2
        taps[index] = f"pool{block}"
        index += 1
    return taps


class VGG(Reference):
    def __init__(self, arch: str) -> None:
        super().__init__()
        self.backbone = arch
        layers: list[nn.Module] = []
        cin = 3
        for depth, width in zip(_VGG_DEPTHS[arch], _VGG_WIDTHS, strict=True):
            for _ in range(depth):
                layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU()]
                cin = width
            layers.append(nn.MaxPool2d(2, 2))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 4096),
            nn.ReLU(),
            nn.Dropout(),
            nn.Linear(4096, 1000),
        )
        self._taps = _vgg_taps(arch)

    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        for index, module in enumerate(self.features):
            x = module(x)
            if index in self._taps:
                yield self._taps[index], x

    def _classify(self, deepest: Tensor) -> Tensor:
        return self.classifier(self.avgpool(deepest).flatten(1))


class _Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck: the stride is on the 3x3 convolution."""

    def __init__(self, cin: int, width: int, stride: int) -> None:
        super().__init__()
        cout = width * 4
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _bn(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + identity)


_RESNET50_STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # width, blocks, stride


class ResNet50(Reference):
    backbone = "resnet50"

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = _bn(64)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        cin = 64
        for stage, (width, blocks, stride) in enumerate(_RESNET50_STAGES, 1):
            layer = []
            for i in range(blocks):
                layer.append(_Bottleneck(cin, width, stride if i == 0 else 1))
                cin = width * 4
            setattr(self, f"layer{stage}", nn.Sequential(*layer))
        self.fc = nn.Linear(2048, 1000)

    def _activations(self, x: Tensor) -> Iterator[tuple[str, Tensor]]:
        x = F.relu(self.bn1(self.conv1(x)))
        yield "conv1", x
        x = self.maxpool(x)
        yield "maxpool", x
        for stage in range(1, 5):
            for i, block in enumerate(getattr(self, f"layer{stage}")):
                x = block(x)
                yield f"layer{stage}.{i}", x
            yield f"layer{stage}", x

    def _classify(self, deepest: Tensor) -> Tensor:
        return self.fc(deepest.mean((2, 3)))


def _avg3(x: Tensor) -> Tensor:
    return F.avg_pool2d(x, 3, stride=1, padding=1)  # counts the zero padding, as torchvision


class _InceptionA(nn.Module):
    def __init__(self, cin: int, pool_features: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = _BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = _BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = _BasicConv2d(cin, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


class _InceptionB(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3 = _BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = _BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = _BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = _BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionC(nn.Module):
    def __init__(self, cin: int, c7: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = _BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for conv in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = conv(d)
        d = self.branch7x7dbl_5(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _InceptionD(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch3x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = _BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = _BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = _BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for conv in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = conv(b7)
        return torch.cat([b3, b7, F.max_pool2d(x, 3, stride=2)], 1)


class _InceptionE(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.branch1x1 = _BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = _BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = _BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = _BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = _BasicConv2d(cin, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(_avg3(x))], 1)


class _InceptionV3Aux(nn.Module):
    """Only so that real weight files (which have AuxLogits.*) can be described."""

    def __init__(self) -> None:
        super().__init__()
        self.conv0 = _BasicConv2d(768, 128, 1)
        self.conv1 = _BasicConv2d(128, 768, 5)
        self.fc = nn.Linear(768, 1000)


_INCEPTION_V3_LAYERS = (
    *("Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1"),
    *("Conv2d_4a_3x3", "maxpool2", "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a"),
    *("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"),
)


class InceptionV3(_ChainReference):
    backbone = "inception-v3"

    def __init__(self, aux: bool = False) -> None:
        super().__init__()
        self.Conv2d_1a_3x3 = _BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = _BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = _BasicConv2d(32, 64, 3, padding=1)
        self.maxpool1 = nn.MaxPool2d(3, stride=2)
        self.Conv2d_3b_1x1 = _BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = _BasicConv2d(80, 192, 3)
        self.maxpool2 = nn.MaxPool2d(3, stride=2)
        self.Mixed_5b = _InceptionA(192, pool_features=32)
        self.Mixed_5c = _InceptionA(256, pool_features=64)
        self.Mixed_5d = _InceptionA(288, pool_features=64)
        self.Mixed_6a = _InceptionB(288)
        self.Mixed_6b = _InceptionC(768, c7=128)
        self.Mixed_6c = _InceptionC(768, c7=160)
        self.Mixed_6d = _InceptionC(768, c7=160)
        self.Mixed_6e = _InceptionC(768, c7=192)
        if aux:
            self.AuxLogits = _InceptionV3Aux()
        self.Mixed_7a = _InceptionD(768)
        self.Mixed_7b = _InceptionE(1280)
        self.Mixed_7c = _InceptionE(2048)
        self.fc = nn.Linear(2048, 1000)


class _Inception(nn.Module):
    """torchvision GoogLeNet's inception block; its "5x5" branch uses a 3x3 kernel."""

    def __init__(self, cin: int, c1: int, r3: int, c3: int, r5: int, c5: int, proj: int) -> None:
        super().__init__()
        self.branch1 = _BasicConv2d(cin, c1, 1)
        self.branch2 = nn.Sequential(_BasicConv2d(cin, r3, 1), _BasicConv2d(r3, c3, 3, padding=1))
        self.branch3 = nn.Sequential(_BasicConv2d(cin, r5, 1), _BasicConv2d(r5, c5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True), _BasicConv2d(cin, proj, 1))

    def forward(self, x: Tensor) -> Tensor:
        branches = (self.branch1, self.branch2, self.branch3, self.branch4)
        return torch.cat([branch(x) for branch in branches], 1)


class _GoogLeNetAux(nn.Module):
    """Only so that real weight files (which have aux1.*, aux2.*) can be described."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.conv = _BasicConv2d(cin, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, 1000)


class GoogLeNet(_ChainReference):
    backbone = "googlenet"

    def __init__(self, aux: bool = False) -> None:
        super().__init__()
        self.conv1 = _BasicConv2d(3, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = _BasicConv2d(64, 64, 1)
        self.conv3 = _BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        for block, *channels in _INCEPTIONS:
            setattr(self, f"inception{block}", _Inception(*channels))
            if block == "3b":
                self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
            if block == "4e":
                self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        if aux:
            self.aux1 = _GoogLeNetAux(512)
            self.aux2 = _GoogLeNetAux(528)
        self.fc = nn.Linear(1024, 1000)


# ---------------------------------------------------------------------- API

_CONSTRUCTORS: dict[str, Callable[..., Reference]] = {
    "efficientnet-lite0": lambda aux=False: EfficientNetLite0(),
    "googlenet-bvlc": lambda aux=False: GoogLeNetBVLC(),
    "vgg16": lambda aux=False: VGG("vgg16"),
    "vgg19": lambda aux=False: VGG("vgg19"),
    "resnet50": lambda aux=False: ResNet50(),
    "inception-v3": lambda aux=False: InceptionV3(aux),
    "googlenet": lambda aux=False: GoogLeNet(aux),
}
# Auxiliary classifiers in torchvision's weight files, unused by the references.
_AUX_PREFIXES = {"inception-v3": ("AuxLogits.",), "googlenet": ("aux1.", "aux2.")}


def _check_backbone(backbone: str) -> None:
    if backbone not in _CONSTRUCTORS:
        raise ValueError(f"unknown backbone {backbone!r}; known: {', '.join(BACKBONES)}")


def layer_names(backbone: str) -> list[str]:
    """Every activation name of `backbone`, in forward order."""
    _check_backbone(backbone)
    if backbone == "efficientnet-lite0":
        return ["stem", *(f"block{i}" for i in range(16)), "head"]
    if backbone == "googlenet-bvlc":
        names = ["conv1/7x7_s2", "pool1/3x3_s2", "pool1/norm1", "conv2/3x3_reduce", "conv2/3x3"]
        names += ["conv2/norm2", "pool2/3x3_s2"]
        for block, *_ in _INCEPTIONS:
            if block in ("4a", "5a"):
                names.append(f"pool{3 if block == '4a' else 4}/3x3_s2")
            names += [f"inception_{block}/{top}" for top in _BVLC_BRANCH_TOPS]
        return names
    if backbone in _VGG_DEPTHS:
        return list(_vgg_taps(backbone).values())
    if backbone == "resnet50":
        names = ["conv1", "maxpool"]
        for stage, (_, blocks, _) in enumerate(_RESNET50_STAGES, 1):
            names += [f"layer{stage}.{i}" for i in range(blocks)] + [f"layer{stage}"]
        return names
    if backbone == "inception-v3":
        return list(_INCEPTION_V3_LAYERS)
    names = ["conv1", "maxpool1", "conv2", "conv3", "maxpool2"]
    for block, *_ in _INCEPTIONS:
        names.append(f"inception{block}")
        if block in ("3b", "4e"):
            names.append("maxpool3" if block == "3b" else "maxpool4")
    return names


def state_dict_shapes(arch: str, aux: bool = False) -> dict[str, tuple[int, ...]]:
    """The keys and shapes of `arch`'s state dict, in its order (no memory allocated).

    `aux` adds the auxiliary classifiers that torchvision's inception-v3 and
    googlenet weight files carry.
    """
    _check_backbone(arch)
    with torch.device("meta"):
        model = _CONSTRUCTORS[arch](aux)
    return {key: tuple(t.shape) for key, t in model.state_dict().items()}


def random_state_dict(arch: str, seed: int = 0, aux: bool = False) -> dict[str, np.ndarray]:
    """A full state dict for `arch` with plausible random values, as numpy arrays.

    Convolutions are He-initialised (normal, std sqrt(2 / fan_in)), linear
    layers get std sqrt(1 / fan_in), biases are small; batch norms get scales
    around 1, small shifts and means, running variances in [0.5, 2] and
    `num_batches_tracked` 0, like a trained network's. The last batch norm of
    each ResNet residual branch gets scales in [0.1, 0.4], as trained ResNets
    have, so that activations do not grow block after block.
    """
    _check_backbone(arch)
    with torch.device("meta"):
        model = _CONSTRUCTORS[arch](aux)
    norms = {name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)}
    branch_ends = {f"{name}.bn3" for name, m in model.named_modules() if isinstance(m, _Bottleneck)}
    rng = np.random.default_rng(seed)
    state: dict[str, np.ndarray] = {}
    for key, tensor in model.state_dict().items():
        shape = tuple(tensor.shape)
        owner, _, leaf = key.rpartition(".")
        if owner in norms:
            if leaf == "num_batches_tracked":
                value = np.array(0, dtype=np.int64)
            elif leaf == "weight":
                value = rng.uniform(*((0.1, 0.4) if owner in branch_ends else (0.7, 1.3)), shape)
            elif leaf == "running_var":
                value = rng.uniform(0.5, 2.0, shape)
            else:  # bias, running_mean
                value = 0.1 * rng.standard_normal(shape)
        elif len(shape) >= 2:
            fan_in = math.prod(shape[1:])
            gain = 2.0 if len(shape) == 4 else 1.0
            value = rng.standard_normal(shape, dtype=np.float32) * np.float32(math.sqrt(gain / fan_in))
        else:
            value = 0.05 * rng.standard_normal(shape)
        state[key] = value if value.dtype == np.int64 else value.astype(np.float32, copy=False)
    return state


def save_state_dict(state: Mapping[str, np.ndarray], path: str | Path) -> Path:
    """Write a state dict of numpy arrays with torch.save, as a torchvision weight file."""
    path = Path(path)
    torch.save({key: torch.from_numpy(np.ascontiguousarray(v)) for key, v in state.items()}, path)
    return path


def build_reference(backbone: str, weights: Mapping[str, np.ndarray]) -> Reference:
    """The reference module for `backbone` with `weights` loaded, in eval mode.

    Keys must match exactly (auxiliary classifiers of torchvision files are
    ignored); floating point weights are converted to float32. Parameters do
    not require grad: tests differentiate with respect to the image.
    """
    _check_backbone(backbone)
    skip = _AUX_PREFIXES.get(backbone, ())
    tensors = {}
    for key, value in weights.items():
        if skip and key.startswith(skip):
            continue
        array = np.asarray(value)
        if np.issubdtype(array.dtype, np.floating):
            array = array.astype(np.float32, copy=False)
        tensors[key] = torch.tensor(array)
    with torch.device("meta"):
        model = _CONSTRUCTORS[backbone]()
    model.load_state_dict(tensors, strict=True, assign=True)
    model.requires_grad_(False)
    return model.eval()
