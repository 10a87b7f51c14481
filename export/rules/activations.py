"""Activations: pointwise functions whose slope is read from the forward's own input or output."""

from __future__ import annotations

import onnx

from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    attr,
    only_inputs,
)

# Masks are built with Sign on float tensors rather than Greater + Where: ONNX Runtime's
# CPU kernels for bool tensors are about three times slower.


def relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = g.op("Sign", node.output[0], hint="relu_mask")  # y >= 0: 1 where y > 0, else 0
    return {0: g.op("Mul", dy[0], positive, hint="relu_grad")}


def leaky_relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = g.op("Greater", node.input[0], g.const(0.0))
    leaked = g.op("Mul", dy[0], g.const(attr(node, "alpha", 0.01)))
    return {0: g.op("Where", positive, dy[0], leaked, hint="leaky_relu_grad")}


def clip(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # The gradient passes where min < x < max, that is where min < y < max for y = clip(x):
    # there (y - min) * (max - y) > 0, elsewhere it is 0, and its Sign is the mask.
    only_inputs(node, wanted, {0})
    y = node.output[0]
    g = ctx.builder
    factors = []
    if len(node.input) > 1 and node.input[1]:
        low = ctx.constant(node.input[1])
        at_zero = low is not None and low.size == 1 and float(low.reshape(())) == 0.0
        factors.append(y if at_zero else g.op("Sub", y, node.input[1]))
    if len(node.input) > 2 and node.input[2]:
        factors.append(g.op("Sub", node.input[2], y, hint="clip_headroom"))
    if not factors:
        return {0: dy[0]}
    inside = factors[0] if len(factors) == 1 else g.op("Mul", *factors)
    return {0: g.op("Mul", dy[0], g.op("Sign", inside, hint="clip_mask"), hint="clip_grad")}


def sigmoid(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    slope = g.op("Mul", y, g.op("Sub", g.const(1.0), y), hint="sigmoid_slope")
    return {0: g.op("Mul", dy[0], slope, hint="sigmoid_grad")}


def tanh(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    slope = g.op("Sub", g.const(1.0), g.op("Mul", y, y), hint="tanh_slope")
    return {0: g.op("Mul", dy[0], slope, hint="tanh_grad")}


def hard_sigmoid(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    inside = g.op("And", g.op("Greater", y, g.const(0.0)), g.op("Less", y, g.const(1.0)))
    scaled = g.op("Mul", dy[0], g.const(attr(node, "alpha", 0.2)))
    return {0: g.op("Where", inside, scaled, g.const(0.0), hint="hard_sigmoid_grad")}


def hard_swish(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y = x * clip(x/6 + 1/2, 0, 1): slope x/3 + 1/2 inside (-3, 3), 1 above, 0 below.
    g = ctx.builder
    x = node.input[0]
    slope = g.op("Add", g.op("Mul", x, g.const(1.0 / 3.0)), g.const(0.5))
    inner = g.op("Where", g.op("Less", x, g.const(3.0)), slope, g.const(1.0))
    full = g.op("Where", g.op("Greater", x, g.const(-3.0)), inner, g.const(0.0))
    return {0: g.op("Mul", dy[0], full, hint="hard_swish_grad")}
