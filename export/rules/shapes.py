"""Ops that move values without changing them: Identity, Reshape and friends, Transpose, Concat, Pad,
Gather, Slice, Split, Expand, Tile, Where."""

from __future__ import annotations

import numpy as np
import onnx

from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    UnsupportedOperator,
    attr,
    only_inputs,
    rank_of,
    unbroadcast,
)


def identity(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    return {0: dy[0]}


def reshape(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x = node.input[0]
    return {0: ctx.builder.op("Reshape", dy[0], ctx.shape_of(x), hint="reshape_grad")}


def transpose(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    perm = attr(node, "perm")
    if perm is None:  # the default reverses the axes
        perm = list(reversed(range(rank_of(ctx, node, node.input[0]))))
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
        constant_pads = ctx.constant(node.input[1])
        if constant_pads is not None and not constant_pads.any():
            return {0: dy[0]}  # no padding at all, in any mode
        raise UnsupportedOperator(node, "only constant (zero) padding is supported, not reflect or edge")
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


def slice_(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    """The output gradient padded with zeros back to the input's shape."""
    only_inputs(node, wanted, {0})
    x, y = node.input[0], node.output[0]
    rank = rank_of(ctx, node, x)
    axes = ctx.require_constant(node, 3) if len(node.input) > 3 and node.input[3] else None
    if axes is None:
        starts_rank = ctx.shapes.rank(node.input[1])
        known = ctx.shapes.dim(node.input[1], 0) if starts_rank == 1 else None
        if known is None:
            raise UnsupportedOperator(node, "Slice without axes needs the number of starts known statically")
        axes = np.arange(known)
    axes = [int(a) % rank for a in axes]
    if len(node.input) > 4 and node.input[4] and (ctx.require_constant(node, 4) != 1).any():
        raise UnsupportedOperator(node, "only Slice with steps of 1 is supported")
    g = ctx.builder
    dims = g.op("Gather", ctx.shape_of(x), g.ints(axes), hint="slice_dims")
    # A start below zero counts from the end; either way it is clamped into [0, dim]. The
    # starts may be computed at run time (torch's chunk of a dynamic-shape export).
    starts = node.input[1]
    zeros = g.ints([0] * len(axes))
    from_end = g.op("Max", g.op("Add", dims, starts), zeros)
    from_begin = g.op("Min", g.op("Max", starts, zeros), dims)
    begin = g.op("Where", g.op("Less", starts, zeros), from_end, from_begin, hint="slice_begin")
    kept = g.op("Gather", ctx.shape_of(y), g.ints(axes), hint="slice_kept")
    end = g.op("Sub", g.op("Sub", dims, begin), kept, hint="slice_end")
    before, after = [], []
    for axis in range(rank):
        if axis in axes:
            position = axes.index(axis)
            before.append(g.op("Slice", begin, g.ints([position]), g.ints([position + 1])))
            after.append(g.op("Slice", end, g.ints([position]), g.ints([position + 1])))
        else:
            before.append(g.ints([0]))
            after.append(g.ints([0]))
    pads = g.op("Concat", *before, *after, hint="slice_pads", axis=0)
    return {0: g.op("Pad", dy[0], pads, hint="slice_grad")}


def split(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    """The output gradients concatenated; an output nobody differentiates contributes zeros."""
    only_inputs(node, wanted, {0})
    g = ctx.builder
    parts = [
        grad if grad is not None else ctx.zeros_like_shape(ctx.shape_of(out))
        for out, grad in zip(node.output, dy, strict=True)
    ]
    return {0: g.op("Concat", *parts, hint="split_grad", axis=attr(node, "axis", 0))}


def expand(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    return {0: unbroadcast(ctx, node, dy[0], node.input[0], node.output[0])}


def tile(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    """The sum of the tiles: dy seen as [r0, d0, r1, d1, ...] summed over the repeat axes."""
    only_inputs(node, wanted, {0})
    repeats = ctx.require_constant(node, 1).astype(np.int64)
    if (repeats == 1).all():
        return {0: dy[0]}
    g = ctx.builder
    dims = ctx.shape_of(node.input[0])
    pieces = []
    for axis, repeat in enumerate(repeats):
        pieces += [g.ints([repeat]), g.op("Slice", dims, g.ints([axis]), g.ints([axis + 1]))]
    tiles = g.op("Reshape", dy[0], g.op("Concat", *pieces, axis=0), hint="tiles")
    axes = list(range(0, 2 * len(repeats), 2))
    return {0: g.op("ReduceSum", tiles, g.ints(axes), hint="tile_grad", keepdims=0)}


def where(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # The condition is boolean: it takes no gradient (comparisons are not differentiated through).
    only_inputs(node, wanted, {1, 2})
    g = ctx.builder
    condition, zero = node.input[0], g.const(0.0)
    grads = {}
    if 1 in wanted:
        picked = g.op("Where", condition, dy[0], zero, hint="where_grad_a")
        grads[1] = unbroadcast(ctx, node, picked, node.input[1], node.output[0])
    if 2 in wanted:
        picked = g.op("Where", condition, zero, dy[0], hint="where_grad_b")
        grads[2] = unbroadcast(ctx, node, picked, node.input[2], node.output[0])
    return grads
