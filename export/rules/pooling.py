"""Pooling and reductions: MaxPool, AveragePool, the global pools, ReduceMean, ReduceMax, ReduceSum.

A MaxPool's gradient is a scatter-add of the output gradient through the indices
the forward MaxPool computed (its preparer asks the forward for them), not a
MaxUnpool, which the CUDA provider lacks.
"""

from __future__ import annotations

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
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    if attr(node, "storage_order", 0) != 0:
        raise UnsupportedOperator(node, "MaxPool with storage_order=1 is not supported")
    if len(node.output) > 1 and node.output[1]:
        return node, [node]
    prepared = onnx.NodeProto()
    prepared.CopyFrom(node)
    del prepared.output[:]
    prepared.output.extend([node.output[0], builder.fresh(f"{node.output[0]}_indices")])
    return prepared, [prepared]


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
    if len(kernel) != 2:
        raise UnsupportedOperator(node, "only 2-D pooling is supported")
    strides = list(attr(node, "strides", [1, 1]))
    pads = list(attr(node, "pads", [0, 0, 0, 0]))
    if attr(node, "auto_pad", "NOTSET") != "NOTSET" or attr(node, "ceil_mode", 0):
        raise UnsupportedOperator(node, "AveragePool with auto_pad or ceil_mode is not supported")
    channels = ctx.shapes.dim(x, 1)
    if channels is None:
        raise UnsupportedOperator(node, "the channel count must be known statically")
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
