"""Broadcasting arithmetic: Add, Sub, Sum, Mean, Mul, Div, Neg, Max, Min; a gradient is summed back over
broadcast axes."""

from __future__ import annotations

import onnx
from onnx import TensorProto

from dreamstream.export.rules.context import Grads, RuleContext, unbroadcast


def add(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    grads = {}
    for index in wanted:
        grad = unbroadcast(ctx, node, dy[0], node.input[index], node.output[0])
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
        grads[index] = unbroadcast(ctx, node, product, node.input[index], node.output[0])
    return grads


def div(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    b = node.input[1]
    grads = {}
    if 0 in wanted:
        grads[0] = unbroadcast(ctx, node, g.op("Div", dy[0], b, hint="div_grad_a"), node.input[0], node.output[0])
    if 1 in wanted:
        # d(a/b)/db = -(a/b)/b = -y/b
        ratio = g.op("Div", g.op("Mul", dy[0], node.output[0]), b)
        grads[1] = unbroadcast(ctx, node, g.op("Neg", ratio, hint="div_grad_b"), node.input[1], node.output[0])
    return grads


def neg(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    return {0: ctx.builder.op("Neg", dy[0], hint="neg_grad")}


def mean(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    share = ctx.builder.op("Mul", dy[0], ctx.builder.const(1.0 / len(node.input)), hint="mean_share")
    return {index: unbroadcast(ctx, node, share, node.input[index], node.output[0]) for index in wanted}


def extremum(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    """Max and Min of several inputs: the gradient goes to the inputs equal to the result, shared
    evenly where several are (as torch's maximum and minimum do at ties)."""
    g = ctx.builder
    y = node.output[0]
    hits = [g.op("Cast", g.op("Equal", name, y), hint="extremum_hit", to=TensorProto.FLOAT) for name in node.input]
    count = hits[0] if len(hits) == 1 else g.op("Sum", *hits, hint="extremum_count")
    share = g.op("Div", dy[0], count, hint="extremum_share")
    return {index: unbroadcast(ctx, node, g.op("Mul", share, hits[index]), node.input[index], y) for index in wanted}
