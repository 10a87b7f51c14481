"""Activations and other pointwise functions, whose slope is read from the forward's own input or output."""

from __future__ import annotations

import math

import onnx

from dreamstream.export.rules.context import Grads, RuleContext, UnsupportedOperator, attr, only_inputs

# A mask is a float computed in place from the forward's output by HardSigmoid,
# clamp(alpha * p + beta, 0, 1): ONNX Runtime keeps HardSigmoid (and the Mul of the
# gradient by the mask, when both shapes are known to match: see
# `declare_gradient_shapes`) in its blocked NCHWc layout, so the mask costs no layout
# change around it, where Min and Mul by a constant are reordered back to NCHW and
# forth (efficientnet-lite0: 50 of its 107 layout changes, a 512 px step x0.93-0.95 with
# both, one thread). A float mask costs one tensor's
# memory where a comparison's bool and its Cast cost two (31 MiB more peak at 512 px).
# p >= 0 becomes exactly 1 where p > 0 and 0 where p == 0 by two HardSigmoids of slope
# 2^126 (the smallest float, 2^-149, reaches 2^-23, then 2^103 > 1).
_MASK_SCALE = 2.0**126
# The upper bound `high` of a Clip whose mask is one HardSigmoid of slope -k: the
# smallest gap below `high` = m 2^e (0.5 <= m < 1) is 2^(e-25); with k = 2^min(124-e, 126)
# that gap times k is at least 2^2 for |high| >= 2^-100, and high * k < 2^124 stays finite.
_SMALLEST_HIGH = 2.0**-100


def _positive_mask(ctx: RuleContext, nonnegative: str, hint: str) -> str:
    """1 where p > 0, 0 where p == 0, for p >= 0."""
    g = ctx.builder
    scaled = g.op("HardSigmoid", nonnegative, alpha=_MASK_SCALE, beta=0.0)
    return g.op("HardSigmoid", scaled, alpha=_MASK_SCALE, beta=0.0, hint=hint)


def _below_mask(ctx: RuleContext, y: str, high: float, hint: str) -> str:
    """1 where y < high, 0 where y == high, for y <= high and |high| >= _SMALLEST_HIGH."""
    k = 2.0 ** min(124 - math.frexp(abs(high))[1], 126)
    return ctx.builder.op("HardSigmoid", y, alpha=-k, beta=high * k, hint=hint)


def relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = _positive_mask(ctx, node.output[0], "relu_mask")  # y >= 0: 1 where y > 0, else 0
    return {0: g.op("Mul", dy[0], positive, hint="relu_grad")}


def leaky_relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = g.op("Greater", node.input[0], g.const(0.0))
    leaked = g.op("Mul", dy[0], g.const(attr(node, "alpha", 0.01)))
    return {0: g.op("Where", positive, dy[0], leaked, hint="leaky_relu_grad")}


def clip(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # The gradient passes where min < x < max, that is where min < y < max for y = clip(x).
    only_inputs(node, wanted, {0})
    y = node.output[0]
    g = ctx.builder
    low = _bound(node, 1)
    high = _bound(node, 2)
    if low is None and high is None:
        return {0: dy[0]}
    constant_low = None if low is None else ctx.constant(low)
    constant_high = None if high is None else ctx.constant(high)
    low_is_zero = constant_low is not None and constant_low.size == 1 and float(constant_low.reshape(())) == 0.0
    high_value = float(constant_high.reshape(())) if constant_high is not None and constant_high.size == 1 else None
    high_fits = high_value is not None and math.isfinite(high_value) and abs(high_value) >= _SMALLEST_HIGH
    if (low is None or low_is_zero) and (high is None or high_fits):
        # ReLU6 and its kin: masks of y alone, in the blocked layout.
        masks = [] if low is None else [_positive_mask(ctx, y, "clip_low_mask")]
        if high_value is not None:
            masks.append(_below_mask(ctx, y, high_value, "clip_high_mask"))
        inside = masks[0] if len(masks) == 1 else g.op("Mul", *masks, hint="clip_mask")
        return {0: g.op("Mul", dy[0], inside, hint="clip_grad")}
    # Other bounds: y - min > 0 and max - y > 0 inside (a difference of two floats is 0
    # only when they are equal), each made a mask of its own: their product could underflow.
    masks = []
    if low is not None:
        masks.append(_positive_mask(ctx, y if low_is_zero else g.op("Sub", y, low), "clip_low_mask"))
    if high is not None:
        masks.append(_positive_mask(ctx, g.op("Sub", high, y, hint="clip_headroom"), "clip_high_mask"))
    inside = masks[0] if len(masks) == 1 else g.op("Mul", *masks, hint="clip_mask")
    return {0: g.op("Mul", dy[0], inside, hint="clip_grad")}


def _bound(node: onnx.NodeProto, index: int) -> str | None:
    """A Clip's min (1) or max (2) input, None when absent."""
    return node.input[index] if len(node.input) > index and node.input[index] else None


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


def prelu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    g = ctx.builder
    positive = g.op("Greater", node.input[0], g.const(0.0))
    leaked = g.op("Mul", dy[0], node.input[1], hint="prelu_leaked")  # the slope broadcasts to x's shape
    return {0: g.op("Where", positive, dy[0], leaked, hint="prelu_grad")}


def elu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # Below zero y = alpha (e^x - 1), so the slope alpha e^x is y + alpha.
    return {0: _exponential_unit_grad(ctx, node, dy[0], 1.0, attr(node, "alpha", 1.0))}


def selu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y = gamma x above zero, gamma alpha (e^x - 1) below: the slope below is y + gamma alpha.
    gamma = attr(node, "gamma", 1.05070102214813232421875)
    alpha = attr(node, "alpha", 1.67326319217681884765625)
    return {0: _exponential_unit_grad(ctx, node, dy[0], gamma, gamma * alpha)}


def _exponential_unit_grad(ctx: RuleContext, node: onnx.NodeProto, dy: str, above: float, offset: float) -> str:
    g = ctx.builder
    positive = g.op("Greater", node.input[0], g.const(0.0))
    below = g.op("Mul", dy, g.op("Add", node.output[0], g.const(offset)), hint="exp_unit_below")
    above_grad = dy if above == 1.0 else g.op("Mul", dy, g.const(above))
    return g.op("Where", positive, above_grad, below, hint="exp_unit_grad")


def softplus(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    return {0: g.op("Mul", dy[0], g.op("Sigmoid", node.input[0]), hint="softplus_grad")}


def erf(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    x = node.input[0]
    bell = g.op("Exp", g.op("Neg", g.op("Mul", x, x)), hint="erf_bell")
    return {0: g.op("Mul", dy[0], g.op("Mul", bell, g.const(2.0 / math.sqrt(math.pi))), hint="erf_grad")}


def exp(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    return {0: ctx.builder.op("Mul", dy[0], node.output[0], hint="exp_grad")}


def log(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    return {0: ctx.builder.op("Div", dy[0], node.input[0], hint="log_grad")}


def sqrt(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    return {0: g.op("Div", dy[0], g.op("Mul", node.output[0], g.const(2.0)), hint="sqrt_grad")}


def reciprocal(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    return {0: g.op("Neg", g.op("Mul", dy[0], g.op("Mul", y, y)), hint="reciprocal_grad")}


def abs_(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    return {0: g.op("Mul", dy[0], g.op("Sign", node.input[0]), hint="abs_grad")}


def pow_(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    exponent = ctx.require_constant(node, 1)
    if exponent.size != 1:
        raise UnsupportedOperator(node, "only a scalar constant exponent is supported")
    b = float(exponent.reshape(()))
    g = ctx.builder
    x = node.input[0]
    power = x if b == 2.0 else g.op("Pow", x, g.const(b - 1.0), hint="pow_lower")
    return {0: g.op("Mul", dy[0], g.op("Mul", power, g.const(b)), hint="pow_grad")}


def softmax(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # dx = y (dy - sum(dy y)) along the axis.
    g = ctx.builder
    y = node.output[0]
    axis = attr(node, "axis", -1)
    inner = g.op("ReduceSum", g.op("Mul", dy[0], y), g.ints([axis]), hint="softmax_inner", keepdims=1)
    return {0: g.op("Mul", y, g.op("Sub", dy[0], inner), hint="softmax_grad")}


def log_softmax(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # dx = dy - softmax(x) sum(dy) along the axis, softmax(x) = e^y.
    g = ctx.builder
    axis = attr(node, "axis", -1)
    total = g.op("ReduceSum", dy[0], g.ints([axis]), hint="log_softmax_total", keepdims=1)
    return {0: g.op("Sub", dy[0], g.op("Mul", g.op("Exp", node.output[0]), total), hint="log_softmax_grad")}


def cast(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # float to float passes the gradient; to an integer or bool the result is piecewise constant.
    if attr(node, "to") == onnx.TensorProto.FLOAT:
        return {0: dy[0]}
    return {}
