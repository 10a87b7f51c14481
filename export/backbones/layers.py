"""Building blocks the built-in recipes assemble networks from.

Batch normalisation is folded into the preceding convolution at export time
(inference only), so the graphs hold plain Conv + bias: fewer ops to run and
to differentiate.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.graph import GraphBuilder


def fold_batchnorm(
    weight: np.ndarray,
    bias: np.ndarray | None,
    gamma: np.ndarray,
    beta: np.ndarray,
    mean: np.ndarray,
    var: np.ndarray,
    eps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Conv weights and bias equivalent to conv followed by inference-mode batch norm."""
    factor = (gamma / np.sqrt(var + eps)).astype(np.float32)
    folded_weight = weight * factor.reshape(-1, 1, 1, 1)
    base = bias if bias is not None else np.zeros_like(mean)
    folded_bias = (base - mean) * factor + beta
    return folded_weight.astype(np.float32), folded_bias.astype(np.float32)


def batchnorm_params(source: WeightSource, prefix: str, channels: int) -> tuple[np.ndarray, ...]:
    """(gamma, beta, running mean, running var) of a torch BatchNorm2d state dict entry."""
    return tuple(
        source.get(f"{prefix}.{part}", (channels,)) for part in ("weight", "bias", "running_mean", "running_var")
    )


def conv(
    g: GraphBuilder,
    x: str,
    name: str,
    weight: np.ndarray,
    bias: np.ndarray | None,
    stride: int = 1,
    padding: int | Sequence[int] | str = 0,
    group: int = 1,
) -> str:
    """A 2-D convolution. `padding` is symmetric pixels per side, (h, w), or "same" (TensorFlow)."""
    inputs = [x, g.weight(f"{name}.weight", weight)]
    if bias is not None:
        inputs.append(g.weight(f"{name}.bias", bias))
    kernel = list(weight.shape[2:])
    attrs: dict = {"kernel_shape": kernel, "strides": [stride, stride], "group": group}
    if padding == "same":
        if stride == 1 and all(k % 2 == 1 for k in kernel):
            attrs["pads"] = [(k - 1) // 2 for k in kernel] * 2
        else:
            # Depends on the input size, which changes every octave: let the op compute it.
            attrs["auto_pad"] = "SAME_UPPER"
    else:
        pad_h, pad_w = (padding, padding) if isinstance(padding, int) else padding
        attrs["pads"] = [pad_h, pad_w, pad_h, pad_w]
    return g.op("Conv", *inputs, hint=name, **attrs)


def relu(g: GraphBuilder, x: str, name: str | None = None) -> str:
    return g.op("Relu", x, hint=name or "relu")


def relu6(g: GraphBuilder, x: str, name: str | None = None) -> str:
    return g.op("Clip", x, g.const(0.0), g.const(6.0), hint=name or "relu6")


def max_pool(
    g: GraphBuilder, x: str, kernel: int, stride: int, padding: int = 0, ceil: bool = False, name: str | None = None
) -> str:
    return g.op(
        "MaxPool",
        x,
        hint=name or "maxpool",
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[padding] * 4,
        ceil_mode=int(ceil),
    )


def avg_pool(g: GraphBuilder, x: str, kernel: int, stride: int, padding: int = 0, name: str | None = None) -> str:
    """Average pooling counting the zero padding, as torch's avg_pool2d does by default."""
    return g.op(
        "AveragePool",
        x,
        hint=name or "avgpool",
        kernel_shape=[kernel, kernel],
        strides=[stride, stride],
        pads=[padding] * 4,
        count_include_pad=1,
    )


def concat(g: GraphBuilder, parts: Sequence[str], name: str | None = None) -> str:
    return g.op("Concat", *parts, hint=name or "concat", axis=1)
