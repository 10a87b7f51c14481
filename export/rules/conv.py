"""Conv: the gradient of its input, a stride-1 flipped convolution or a transposed one.

Rules emit only ops that ONNX Runtime's CUDA provider implements with the
attributes used: the input gradient of a strided or asymmetrically padded Conv
is a ConvTranspose without padding followed by a Slice (ConvTranspose with
asymmetric pads would fall back to the CPU). The pooling rules reuse the
transposed form (`transposed_window_grad`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx

from dreamstream.export.graph import DERIVED_PREFIX
from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    UnsupportedOperator,
    attr,
    only_inputs,
    spatial_dims,
)


def _crop_to_input(ctx: RuleContext, grad: str, x: str, start: Sequence[int] | str, strides: Sequence[int]) -> str:
    """Cut the input's window out of a transposed-convolution result.

    The transposed convolution covers the padded input up to its last position
    used by any window; positions after it (at most stride-1 of them) received no
    gradient, so zero rows are appended before the slice.
    """
    g = ctx.builder
    if any(s > 1 for s in strides):
        extra = [0, 0, 0, 0, 0, 0, strides[0] - 1, strides[1] - 1]
        grad = g.op("Pad", grad, g.ints(extra), hint="grad_pad_end")
    starts = g.ints(start) if not isinstance(start, str) else start
    ends = g.op("Add", starts, spatial_dims(ctx, x), hint="crop_end")
    return g.op("Slice", grad, starts, ends, g.ints([2, 3]), hint="grad_crop")


def _same_pad_begin(ctx: RuleContext, x: str, kernel, strides, dilations, upper: bool) -> str:
    """int64 [2]: the top/left padding of auto_pad SAME_* for the run-time input size."""
    g = ctx.builder
    size = spatial_dims(ctx, x)
    stride = g.ints(strides)
    effective = g.ints([d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True)])
    out = g.op("Div", g.op("Add", size, g.ints([s - 1 for s in strides])), stride)  # ceil(size / stride)
    needed = g.op("Sub", g.op("Add", g.op("Mul", g.op("Sub", out, g.ints([1, 1])), stride), effective), size)
    total = g.op("Max", needed, g.ints([0, 0]))
    half = g.op("Div", total, g.ints([2, 2]))
    return half if upper else g.op("Sub", total, half)


def conv(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x, w = node.input[0], node.input[1]
    weight = ctx.require_constant(node, 1)
    if weight.ndim != 4:
        raise UnsupportedOperator(node, "only 2-D convolutions are supported")
    kernel = list(weight.shape[2:])
    strides = list(attr(node, "strides", [1, 1]))
    dilations = list(attr(node, "dilations", [1, 1]))
    group = attr(node, "group", 1)
    auto_pad = attr(node, "auto_pad", "NOTSET")
    transpose = {"strides": strides, "dilations": dilations, "group": group, "kernel_shape": kernel}
    g = ctx.builder

    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        full = g.op("ConvTranspose", dy[0], w, hint="conv_grad", **transpose)
        start = _same_pad_begin(ctx, x, kernel, strides, dilations, upper=auto_pad == "SAME_UPPER")
        return {0: _crop_to_input(ctx, full, x, start, strides)}

    pads = list(attr(node, "pads", [0, 0, 0, 0])) if auto_pad == "NOTSET" else [0, 0, 0, 0]
    if strides == [1, 1] and pads[:2] == pads[2:]:
        return {0: _flipped_conv_grad(ctx, node, dy[0], weight, group, pads, dilations)}
    return {0: transposed_window_grad(ctx, dy[0], w, x, pads, strides, transpose, "conv_grad")}


def _flipped_conv_grad(
    ctx: RuleContext,
    node: onnx.NodeProto,
    dy: str,
    weight: np.ndarray,
    group: int,
    pads: list[int],
    dilations: list[int],
) -> str:
    """A stride-1 convolution's adjoint is a convolution with each group's kernel transposed
    (input and output channels swapped) and flipped in space.

    ONNX Runtime's CPU runs Conv in its blocked NCHWc layout alongside the forward's,
    and has a depthwise Conv kernel where its ConvTranspose has none (ten times faster
    on a 5x5 depthwise layer).
    """
    g = ctx.builder
    name = f"{DERIVED_PREFIX}{node.input[1]}/adjoint"
    out_channels, in_per_group, *kernel = weight.shape
    if name not in g.initializers:
        grouped = weight.reshape(group, out_channels // group, in_per_group, *kernel)
        swapped = grouped.transpose(0, 2, 1, 3, 4).reshape(group * in_per_group, out_channels // group, *kernel)
        g.weight(name, np.ascontiguousarray(swapped[:, :, ::-1, ::-1]))
    adjoint_pads = [d * (k - 1) - p for k, d, p in zip(kernel, dilations, pads[:2], strict=True)] * 2
    return g.op(
        "Conv",
        dy,
        name,
        hint="conv_adjoint",
        kernel_shape=kernel,
        dilations=dilations,
        group=group,
        pads=adjoint_pads,
    )


def transposed_window_grad(
    ctx: RuleContext, dy: str, weight: str, x: str, pads: list[int], strides: list[int], attrs: dict, hint: str
) -> str:
    """The adjoint of a strided, padded window op: ConvTranspose, then the input's window.

    With stride 1 and symmetric padding the transposed convolution removes the
    padding itself and its output is exactly the input's size. Otherwise its
    `pads` would also cut real input positions at the end (when the windows do
    not tile the input exactly), so it runs unpadded and the crop is explicit;
    unpadded also keeps it on the CUDA provider, which has no asymmetric pads.
    """
    g = ctx.builder
    if pads[:2] == pads[2:] and all(s == 1 for s in strides):
        return g.op("ConvTranspose", dy, weight, hint=hint, pads=pads, **attrs)
    full = g.op("ConvTranspose", dy, weight, hint=hint, **attrs)
    return _crop_to_input(ctx, full, x, pads[:2], strides)
