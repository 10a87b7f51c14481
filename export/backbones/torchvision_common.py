"""What the torchvision recipes (vgg, resnet, inception-v3, googlenet) share.

Their weights are torchvision state dicts, read by key exactly as torchvision
names them; every batch norm is folded into the convolution before it. Pretrained
vgg and resnet expect ImageNet-normalised RGB; inception-v3 and googlenet are
published with `transform_input=True`, which turns that normalisation into
(x - 0.5) / 0.5, so their graphs take that directly.
"""

from __future__ import annotations

from dreamstream.export.backbone import Backbone
from dreamstream.export.backbones.layers import batchnorm_params, conv, fold_batchnorm, relu
from dreamstream.export.backbones.net import NetBuilder
from dreamstream.modeldir import Preprocessing

IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), bgr=False, scale=1.0)
TRANSFORM_INPUT = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), bgr=False, scale=1.0)
# torchvision's BasicConv2d (inception-v3, googlenet) builds its batch norm with eps 0.001.
BASIC_CONV_BN_EPS = 1e-3
LICENSE = "torchvision weights: BSD-3-Clause code, trained on ImageNet (check its terms)"


class TorchvisionNet(NetBuilder):
    """A torchvision network being built: convolutions with their batch norms folded in."""

    def conv_bn(
        self,
        x: str,
        conv_key: str,
        bn_key: str,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int],
        eps: float,
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> str:
        """A bias-free convolution `conv_key` with the batch norm `bn_key` folded into it."""
        kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
        weight = self.source.get(f"{conv_key}.weight", (out_ch, in_ch, kh, kw))
        folded = fold_batchnorm(weight, None, *batchnorm_params(self.source, bn_key, out_ch), eps)
        return conv(self.g, x, conv_key, *folded, stride=stride, padding=padding)

    def basic_conv(
        self,
        x: str,
        name: str,
        in_ch: int,
        out_ch: int,
        kernel: int | tuple[int, int],
        stride: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> str:
        """torchvision's BasicConv2d `name`: `name.conv`, `name.bn`, then ReLU."""
        y = self.conv_bn(
            x,
            f"{name}.conv",
            f"{name}.bn",
            in_ch,
            out_ch,
            kernel,
            BASIC_CONV_BN_EPS,
            stride,
            padding,
        )
        return relu(self.g, y, name)

    def backbone(
        self, name: str, preprocessing: Preprocessing, default_layers: dict[str, float], license: str = LICENSE
    ) -> Backbone:
        return super().backbone(name, preprocessing, default_layers, license)
