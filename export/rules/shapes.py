"""Ops that move values without changing them: Identity, Reshape and friends, Transpose, Concat, Pad, Gather."""

from __future__ import annotations

import numpy as np
import onnx

from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    UnsupportedOperator,
    attr,
    only_inputs,
)


def identity(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    return {0: dy[0]}


def reshape(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x = node.input[0]
    return {0: ctx.builder.op("Reshape", dy[0], ctx.shape_of(x), hint="reshape_grad")}


def transpose(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    perm = list(attr(node, "perm"))
    inverse = list(np.argsort(perm))
    return {0: ctx.builder.op("Transpose", dy[0], hint="transpose_grad", perm=inverse)}


def concat(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    axis = attr(node, "axis")
    rank = ctx.shapes.rank(node.output[0])
    if rank is None:
        raise UnsupportedOperator(node, "the rank of the output must be known")
    axis %= rank
    g = ctx.builder
    sizes = [ctx.shapes.dim(name, axis) for name in node.input]
    grads = {}
    if all(size is not None for size in sizes):
        offsets = np.cumsum([0, *sizes])
        for index in wanted:
            grads[index] = g.op(
                "Slice",
                dy[0],
                g.ints([offsets[index]]),
                g.ints([offsets[index + 1]]),
                g.ints([axis]),
                hint="concat_grad",
            )
        return grads
    # Sizes along the axis only known at run time (for example a concat along H).
    start = g.ints([0])
    for index, name in enumerate(node.input):
        size = g.op("Shape", name, start=axis, end=axis + 1)
        end = g.op("Add", start, size)
        if index in wanted:
            grads[index] = g.op("Slice", dy[0], start, end, g.ints([axis]), hint="concat_grad")
        start = end
    return grads


def pad(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    if attr(node, "mode", "constant") != "constant":
        raise UnsupportedOperator(node, "only constant padding is supported")
    if len(node.input) > 3 and node.input[3]:
        raise UnsupportedOperator(node, "Pad with an axes input is not supported")
    x, pads = node.input[0], node.input[1]
    rank = ctx.shapes.rank(x)
    if rank is None:
        raise UnsupportedOperator(node, "the rank of the input must be known")
    g = ctx.builder
    constant_pads = ctx.constant(pads)
    if constant_pads is not None:
        if (constant_pads < 0).any():
            raise UnsupportedOperator(node, "negative pads (cropping) are not supported")
        starts = g.ints(constant_pads[:rank])
    else:
        starts = g.op("Slice", pads, g.ints([0]), g.ints([rank]), hint="pad_begin")
    ends = g.op("Add", starts, ctx.shape_of(x))
    return {0: g.op("Slice", dy[0], starts, ends, hint="pad_grad")}


def gather(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # Supported for what preprocessing uses: a constant permutation (RGB -> BGR).
    only_inputs(node, wanted, {0})
    indices = ctx.require_constant(node, 1)
    axis = attr(node, "axis", 0)
    size = ctx.shapes.dim(node.input[0], axis)
    if indices.ndim != 1 or size is None or sorted(indices.tolist()) != list(range(size)):
        raise UnsupportedOperator(node, "only a constant permutation along one axis is supported")
    inverse = np.argsort(indices).astype(np.int64)
    return {0: ctx.builder.op("Gather", dy[0], ctx.builder.ints(inverse), hint="gather_grad", axis=axis)}
