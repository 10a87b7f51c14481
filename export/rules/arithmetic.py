"""Broadcasting arithmetic: Add, Sub, Sum, Mul, Div, Neg; a gradient is summed back over broadcast axes."""

from __future__ import annotations

import onnx

from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    UnsupportedOperator,
)


def _unbroadcast(ctx: RuleContext, node: onnx.NodeProto, grad: str, index: int) -> str:
    """Sum a gradient over the axes along which input `index` was broadcast to the output's shape.

    Dims that shape inference leaves symbolic are taken to match (in our graphs they
    are N, H and W, shared by both operands).
    """
    target, result = node.input[index], node.output[0]
    target_shape = ctx.shapes.shapes.get(target)
    result_shape = ctx.shapes.shapes.get(result)
    if target_shape is None or result_shape is None:
        raise UnsupportedOperator(node, f"the ranks of {target} and {result} must be known")
    lead = len(result_shape) - len(target_shape)
    axes = list(range(lead))
    for axis, dim in enumerate(target_shape):
        if dim == 1 and result_shape[lead + axis] != 1:
            axes.append(lead + axis)
    if not axes:
        return grad
    g = ctx.builder
    summed = g.op("ReduceSum", grad, g.ints(axes), hint="unbroadcast", keepdims=1)
    if lead:
        summed = g.op("Reshape", summed, ctx.shape_of(target))
    return summed


def add(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    grads = {}
    for index in wanted:
        grad = _unbroadcast(ctx, node, dy[0], index)
        if node.op_type == "Sub" and index == 1:
            grad = ctx.builder.op("Neg", grad, hint="sub_grad")
        grads[index] = grad
    return grads


def mul(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    grads = {}
    for index in wanted:
        other = node.input[1 - index]
        product = g.op("Mul", dy[0], other, hint="mul_grad")
        grads[index] = _unbroadcast(ctx, node, product, index)
    return grads


def div(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    b = node.input[1]
    grads = {}
    if 0 in wanted:
        grads[0] = _unbroadcast(ctx, node, g.op("Div", dy[0], b, hint="div_grad_a"), 0)
    if 1 in wanted:
        # d(a/b)/db = -(a/b)/b = -y/b
        ratio = g.op("Div", g.op("Mul", dy[0], node.output[0]), b)
        grads[1] = _unbroadcast(ctx, node, g.op("Neg", ratio, hint="div_grad_b"), 1)
    return grads


def neg(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    return {0: ctx.builder.op("Neg", dy[0], hint="neg_grad")}
