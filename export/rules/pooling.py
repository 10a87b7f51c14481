"""Pooling and reductions: MaxPool, AveragePool, the global pools, ReduceMean, ReduceMax, ReduceSum.

A MaxPool's gradient is a scatter-add of the output gradient through the indices
the forward MaxPool computed (its preparer asks the forward for them), not a
MaxUnpool, which the CUDA provider lacks. The indices follow torch's rule for ties
(the window's first maximum in raster order; a clipped, flat part of a picture has
ties). Tried and measured instead: a 2-D max-pool as two 1-D ones, each differentiated
from comparisons of its input with its output at every tap, with the same tie rule.
For a stride-1 pool it halved the pool's own time (forward and backward of 3x3 over
256x64x64, one thread: 26.1 -> 13.2 ms) and made the googlenet-bvlc step 3-6 % cheaper,
but it keeps each pool's input alive for the backward and makes full-size
temporaries: the 512 px dream's peak memory rose 46 MiB (all pools that way: 13x
slower MaxPool with indices gone, 83 MiB more), too much against the server's budget.

An AveragePool with TensorFlow's 'same' padding (auto_pad), ceil_mode, or over 1-D
or 3-D windows (torch's dynamo exporter writes LocalResponseNorm as a 3-D
AveragePool over a 5-D view) takes the general rule, which works out the padding
at run time and measures each window's count rather than restating ONNX's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper

from dreamstream.export.graph import GraphBuilder
from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    StaticShapes,
    UnsupportedOperator,
    attr,
    only_inputs,
    rank_of,
    spatial_dims,
)
from dreamstream.export.rules.conv import transposed_window_grad


def add_maxpool_indices(
    node: onnx.NodeProto, builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    if attr(node, "storage_order", 0) != 0:
        raise UnsupportedOperator(node, "MaxPool with storage_order=1 is not supported")
    if len(node.output) > 1 and node.output[1]:
        return [node], [node]
    prepared = onnx.NodeProto()
    prepared.CopyFrom(node)
    del prepared.output[:]
    prepared.output.extend([node.output[0], builder.fresh(f"{node.output[0]}_indices")])
    return [prepared], [prepared]


def max_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # The forward MaxPool also returned the flat index (into the whole input tensor) of
    # each window's maximum; overlapping windows may pick the same input, hence the add.
    x, indices = node.input[0], node.output[1]
    g = ctx.builder
    shape = ctx.shape_of(x)
    count = g.op("ReduceProd", shape, hint="numel", keepdims=1)
    flat_zero = ctx.zeros_like_shape(count)
    flat_indices = g.op("Reshape", indices, g.ints([-1]), hint="flat_indices")
    flat_grad = g.op("Reshape", dy[0], g.ints([-1]), hint="flat_dy")
    scattered = g.op(
        "ScatterElements", flat_zero, flat_indices, flat_grad, hint="maxpool_grad", axis=0, reduction="add"
    )
    return {0: g.op("Reshape", scattered, shape, hint="maxpool_grad_shape")}


def average_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    window = _Window.of(node, len(kernel))
    channels = ctx.shapes.dim(x, 1)
    general = window.auto_pad != "NOTSET" or window.ceil_mode or window.dilations != [1, 1]
    if len(kernel) != 2 or general or channels is None:
        return {0: _general_average_pool_grad(ctx, node, dy[0], window)}
    strides, pads = window.strides, window.pads
    g = ctx.builder
    area = float(kernel[0] * kernel[1])
    if attr(node, "count_include_pad", 0) or not any(pads):
        scaled = g.op("Mul", dy[0], g.const(1.0 / area), hint="avgpool_scale")
    else:
        # Border windows average fewer inputs: divide by each window's own count.
        ones = g.op("ConstantOfShape", ctx.shape_of(x), value=helper.make_tensor("v", 1, [1], [1.0]))
        fraction = g.op("AveragePool", ones, kernel_shape=kernel, strides=strides, pads=pads, count_include_pad=1)
        scaled = g.op("Div", dy[0], g.op("Mul", fraction, g.const(area)), hint="avgpool_scale")
    ones_kernel = g.const(np.ones((channels, 1, *kernel), np.float32))
    transpose = {"strides": strides, "group": channels, "kernel_shape": kernel}
    return {0: transposed_window_grad(ctx, scaled, ones_kernel, x, pads, strides, transpose, "avgpool_grad")}


@dataclass(frozen=True)
class _Window:
    """A pooling node's windows over its spatial axes, whatever the attributes say them with."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]  # begins then ends, as the node declares them (auto_pad NOTSET)
    auto_pad: str
    ceil_mode: bool

    @classmethod
    def of(cls, node: onnx.NodeProto, spatial: int) -> _Window:
        return cls(
            kernel=list(attr(node, "kernel_shape")),
            strides=list(attr(node, "strides", [1] * spatial)),
            dilations=list(attr(node, "dilations", [1] * spatial)),
            pads=list(attr(node, "pads", [0] * 2 * spatial)),
            auto_pad=attr(node, "auto_pad", "NOTSET"),
            ceil_mode=bool(attr(node, "ceil_mode", 0)),
        )

    @property
    def extents(self) -> list[int]:
        """Input positions one window spans along each axis, dilation included."""
        return [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]

    def pad_begin(self, ctx: RuleContext, x: str) -> str:
        """int64 [spatial]: the padding before the input on each axis, for the run-time input size.

        With it, every window of the node starts at output index * stride on the padded
        input: auto_pad's SAME padding depends on the input's size; the end padding (and
        ceil_mode's windows that hang past it) need no number, the output's size says it.
        """
        g = ctx.builder
        spatial = len(self.kernel)
        if self.auto_pad == "VALID":
            return g.ints([0] * spatial)
        if self.auto_pad == "NOTSET":
            return g.ints(self.pads[:spatial])
        size = g.op("Shape", x, hint="pool_in", start=2)
        stride = g.ints(self.strides)
        out = g.op("Div", g.op("Add", size, g.ints([s - 1 for s in self.strides])), stride)  # ceil(size / stride)
        last_start = g.op("Mul", g.op("Sub", out, g.ints([1] * spatial)), stride)
        needed = g.op("Sub", g.op("Add", last_start, g.ints(self.extents)), size)
        total = g.op("Max", needed, g.ints([0] * spatial))
        half = g.op("Div", total, g.ints([2] * spatial))
        return half if self.auto_pad == "SAME_UPPER" else g.op("Sub", total, half)


def _general_average_pool_grad(ctx: RuleContext, node: onnx.NodeProto, dy: str, window: _Window) -> str:
    """Any AveragePool's input gradient: auto_pad, ceil_mode, either count_include_pad, 1-D to 3-D
    (torch's dynamo exporter writes LocalResponseNorm as a 3-D AveragePool over a 5-D view).

    Each output is its window's sum divided by a count that depends on the attributes and on
    the window's place (border windows count fewer inputs, or their padding too, or not
    ceil_mode's overhang). Rather than restating those rules, the count is measured: the node
    itself pooling ones gives real inputs / count, and the windows' sum of ones (over the
    input padded with zeros) gives the real inputs; their ratio is 1 / count. The adjoint of the
    windows' sum is a transposed convolution with a kernel of ones, cut to the input.
    """
    x = node.input[0]
    g = ctx.builder
    spatial = len(window.kernel)
    if window.dilations != [1] * spatial:  # opset 17's AveragePool has no dilations (see onnx_opset)
        raise UnsupportedOperator(node, "AveragePool with dilations is not supported")
    ones = g.op("ConstantOfShape", ctx.shape_of(x), value=helper.make_tensor("v", 1, [1], [1.0]))
    own_attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    pooled_ones = g.op("AveragePool", ones, hint="avgpool_ones", **own_attributes)
    begin = window.pad_begin(ctx, x)
    # Zeros after the input up to the last window's end: (output - 1) * stride + extent.
    out_size = g.op("Shape", node.output[0], hint="pool_out", start=2)
    last_start = g.op("Mul", g.op("Sub", out_size, g.ints([1] * spatial)), g.ints(window.strides))
    covered = g.op("Add", last_start, g.ints(window.extents))
    in_size = g.op("Shape", x, hint="pool_in", start=2)
    end = g.op("Max", g.op("Sub", g.op("Sub", covered, in_size), begin), g.ints([0] * spatial))
    pads = g.op("Concat", g.ints([0, 0]), begin, g.ints([0, 0]), end, axis=0)
    padded_ones = g.op("Pad", ones, pads, hint="avgpool_padded_ones")
    window_attrs = {"kernel_shape": window.kernel, "strides": window.strides}
    area = float(np.prod(window.kernel))
    real = g.op("Mul", g.op("AveragePool", padded_ones, **window_attrs), g.const(area), hint="avgpool_real")
    inverse_count = g.op("Div", pooled_ones, g.op("Max", real, g.const(1.0)), hint="avgpool_inverse_count")
    scaled = g.op("Mul", dy, inverse_count, hint="avgpool_scale")
    full = _windows_sum_adjoint(ctx, scaled, x, window_attrs)
    return _cut_to_input(ctx, full, x, begin, spatial)


def _windows_sum_adjoint(ctx: RuleContext, scaled: str, x: str, window_attrs: dict) -> str:
    """The adjoint of summing each channel's windows: a transposed convolution with a kernel of
    ones, channel by channel. With the channel count known only at run time (torch's TorchScript
    LocalResponseNorm pools a view whose shape is computed), each channel is a map of its own."""
    g = ctx.builder
    kernel = window_attrs["kernel_shape"]
    channels = ctx.shapes.dim(x, 1)
    if channels is not None:
        ones_kernel = g.const(np.ones((channels, 1, *kernel), np.float32))
        return g.op("ConvTranspose", scaled, ones_kernel, hint="avgpool_grad", group=channels, **window_attrs)
    maps = g.op("Concat", g.ints([-1, 1]), g.op("Shape", scaled, start=2), axis=0)
    one_channel = g.op("Reshape", scaled, maps, hint="avgpool_channel_maps")
    ones_kernel = g.const(np.ones((1, 1, *kernel), np.float32))
    full = g.op("ConvTranspose", one_channel, ones_kernel, hint="avgpool_grad", **window_attrs)
    shape = g.op("Concat", g.op("Shape", scaled, start=0, end=2), g.op("Shape", full, start=2), axis=0)
    return g.op("Reshape", full, shape, hint="avgpool_grad_channels")


def _cut_to_input(ctx: RuleContext, full: str, x: str, begin: str, spatial: int) -> str:
    """The input's part of a gradient over the padded input's windows: from `begin` on each spatial
    axis, as long as the input, zeros where no window reached."""
    g = ctx.builder
    in_size = g.op("Shape", x, hint="pool_in", start=2)
    reach = g.op("Shape", full, hint="pool_reach", start=2)
    short = g.op("Max", g.op("Sub", g.op("Add", begin, in_size), reach), g.ints([0] * spatial))
    zeros = g.ints([0] * (spatial + 2))
    grown = g.op("Pad", full, g.op("Concat", zeros, g.ints([0, 0]), short, axis=0), hint="pool_grad_pad_end")
    axes = g.ints(list(range(2, spatial + 2)))
    return g.op("Slice", grown, begin, g.op("Add", begin, in_size), axes, hint="pool_grad_crop")


def global_average_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    g = ctx.builder
    area = g.op("Cast", g.op("ReduceProd", spatial_dims(ctx, x), keepdims=1), to=onnx.TensorProto.FLOAT)
    spread = g.op("Expand", dy[0], ctx.shape_of(x), hint="gap_spread")
    return {0: g.op("Div", spread, area, hint="gap_grad")}


def reduce_mean(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    rank = ctx.shapes.rank(x)
    axes = attr(node, "axes")
    if rank is None or axes is None:
        raise UnsupportedOperator(node, "ReduceMean needs explicit axes and a known rank")
    axes = sorted(a % rank for a in axes)
    g = ctx.builder
    grad = dy[0]
    if not attr(node, "keepdims", 1):
        grad = g.op("Unsqueeze", grad, g.ints(axes))
    shape = ctx.shape_of(x)
    count = g.op("ReduceProd", g.op("Gather", shape, g.ints(axes)), keepdims=1)
    spread = g.op("Expand", grad, shape)
    return {0: g.op("Div", spread, g.op("Cast", count, to=onnx.TensorProto.FLOAT), hint="mean_grad")}


def global_max_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    rank = rank_of(ctx, node, node.input[0])
    return {0: _to_maxima(ctx, node, dy[0], node.output[0], list(range(2, rank)))}


def reduce_max(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    rank = rank_of(ctx, node, x)
    axes = sorted(a % rank for a in (attr(node, "axes") or range(rank)))
    grad, y = dy[0], node.output[0]
    if not attr(node, "keepdims", 1):
        g = ctx.builder
        grad = g.op("Unsqueeze", grad, g.ints(axes))
        y = g.op("Unsqueeze", y, g.ints(axes))
    return {0: _to_maxima(ctx, node, grad, y, axes)}


def _to_maxima(ctx: RuleContext, node: onnx.NodeProto, dy: str, y: str, axes: list[int]) -> str:
    """The gradient of a max over `axes` (dy and y with those axes kept as 1): shared evenly by the
    positions that hold the maximum, as torch's amax does; in general there is one."""
    g = ctx.builder
    x = node.input[0]
    at_max = g.op("Cast", g.op("Equal", x, y), hint="max_mask", to=onnx.TensorProto.FLOAT)
    count = g.op("ReduceSum", at_max, g.ints(axes), hint="max_count", keepdims=1)
    return g.op("Mul", at_max, g.op("Div", dy, count), hint="max_grad")


def reduce_sum(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x = node.input[0]
    rank = rank_of(ctx, node, x)
    g = ctx.builder
    has_axes = len(node.input) > 1 and node.input[1]
    if not has_axes and attr(node, "noop_with_empty_axes", 0):
        return {0: dy[0]}
    axes = sorted(int(a) % rank for a in ctx.require_constant(node, 1)) if has_axes else list(range(rank))
    grad = dy[0] if attr(node, "keepdims", 1) else g.op("Unsqueeze", dy[0], g.ints(axes))
    return {0: g.op("Expand", grad, ctx.shape_of(x), hint="sum_grad")}
