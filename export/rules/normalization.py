"""Normalisation: BatchNormalization (inference mode), LRN (emitted in parts the backward reuses),
LayerNormalization (its forward also returns its statistics) and InstanceNormalization."""

from __future__ import annotations

import numpy as np
import onnx

from dreamstream.export.graph import GraphBuilder
from dreamstream.export.rules.context import (
    Grads,
    RuleContext,
    StaticShapes,
    UnsupportedOperator,
    attr,
    only_inputs,
    rank_of,
)


def batch_norm(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    if attr(node, "training_mode", 0):
        raise UnsupportedOperator(node, "BatchNormalization in training mode is not supported")
    scale = ctx.require_constant(node, 1)
    variance = ctx.require_constant(node, 4)
    factor = scale / np.sqrt(variance + attr(node, "epsilon", 1e-5))
    rank = ctx.shapes.rank(node.input[0]) or 4
    factor = factor.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2))
    return {0: ctx.builder.op("Mul", dy[0], ctx.builder.const(factor), hint="batchnorm_grad")}


def _lrn_scale(y: str) -> str:
    return f"{y}::lrn_scale"


def _lrn_factor(y: str) -> str:
    return f"{y}::lrn_factor"


def _channel_window_sum(builder: GraphBuilder, x: str, before: int, after: int, hint: str) -> str:
    """The mean over the channels c - before .. c + after of an NCHW tensor (zeros past its
    channels), times the window's size: an AveragePool over a 5-D view with the channels as
    depth. On the CPU it is three times faster than the 1x1 Conv with a banded channel
    matrix it replaces (192 channels at 128x128, one thread: 4.8 ms against 14.9 ms), which
    multiplies the C x C matrix's zeros too."""
    depth = builder.op("Unsqueeze", x, builder.ints([1]), hint=f"{hint}_depth")
    window = before + after + 1
    mean = builder.op(
        "AveragePool",
        depth,
        hint=hint,
        kernel_shape=[window, 1, 1],
        pads=[before, 0, 0, after, 0, 0],
        count_include_pad=1,
    )
    return builder.op("Squeeze", mean, builder.ints([1]), hint=f"{hint}_mean")


def decompose_lrn(
    node: onnx.NodeProto, builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Emit LRN as y = x * s^-beta, s = bias + alpha/size * (window sum of x^2).

    The window sum runs along the channels (see `_channel_window_sum`). On the CPU this
    runs faster than ONNX Runtime's own LRN kernel, and the backward reads s and s^-beta
    from the forward instead of computing them again.
    """
    x, y = node.input[0], node.output[0]
    if shapes.rank(x) != 4:
        raise UnsupportedOperator(node, "LRN is differentiated on NCHW tensors only")
    size = attr(node, "size")
    alpha, beta, bias = attr(node, "alpha", 1e-4), attr(node, "beta", 0.75), attr(node, "bias", 1.0)
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2
    start = len(builder.nodes)
    square = builder.op("Mul", x, x, hint="lrn_square")
    # The window's mean times alpha is alpha/size times its sum.
    mean = _channel_window_sum(builder, square, low, high, "lrn_window")
    scaled = builder.op("Mul", mean, builder.const(float(alpha)), hint="lrn_scaled")
    builder.op_into("Add", [scaled, builder.const(float(bias))], [_lrn_scale(y)])
    if beta == 0.75:  # Caffe's and torchvision's LRN: two square roots are twice as fast as Pow
        root = builder.op("Sqrt", _lrn_scale(y), hint="lrn_root")
        builder.op_into("Reciprocal", [builder.op("Mul", root, builder.op("Sqrt", root))], [_lrn_factor(y)])
    else:
        builder.op_into("Pow", [_lrn_scale(y), builder.const(-beta)], [_lrn_factor(y)])
    builder.op_into("Mul", [x, _lrn_factor(y)], [y])
    emitted = builder.nodes[start:]
    del builder.nodes[start:]
    return [node], emitted


def lrn(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y_c = x_c p_c with p = s^-beta and s_c = bias + alpha/size sum_{j in window(c)} x_j^2, so
    # dx_j = dy_j p_j - 2 beta alpha/size x_j sum_{c: j in window(c)} dy_c y_c / s_c: the window
    # of c runs from c - low to c + high, so the c whose window holds j run from j - high to j + low.
    x, y = node.input[0], node.output[0]
    beta, alpha, size = attr(node, "beta", 0.75), attr(node, "alpha", 1e-4), attr(node, "size")
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2
    g = ctx.builder
    direct = g.op("Mul", dy[0], _lrn_factor(y), hint="lrn_direct")
    ratio = g.op("Div", g.op("Mul", dy[0], y), _lrn_scale(y), hint="lrn_ratio")
    spread = _channel_window_sum(g, ratio, high, low, "lrn_spread")  # the mean: alpha/size * sum is alpha * it
    cross = g.op("Mul", g.op("Mul", x, spread), g.const(2.0 * beta * alpha), hint="lrn_cross")
    return {0: g.op("Sub", direct, cross, hint="lrn_grad")}


def _layer_norm_stats(y: str) -> tuple[str, str]:
    return f"{y}::mean", f"{y}::inv_std"


def add_layer_norm_statistics(
    node: onnx.NodeProto, builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """Ask the forward LayerNormalization for its mean and inverse standard deviation too."""
    prepared = onnx.NodeProto()
    prepared.CopyFrom(node)
    del prepared.output[:]
    mean, inv_std = _layer_norm_stats(node.output[0])
    builder.reserve([mean, inv_std])
    prepared.output.extend([node.output[0], mean, inv_std])
    return [prepared], [prepared]


def layer_norm(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x = node.input[0]
    rank = rank_of(ctx, node, x)
    axes = list(range(attr(node, "axis", -1) % rank, rank))
    mean, inv_std = node.output[1], node.output[2]
    g = ctx.builder
    normalized = g.op("Mul", g.op("Sub", x, mean), inv_std, hint="ln_normalized")
    scaled = g.op("Mul", dy[0], node.input[1], hint="ln_scaled_grad")
    return {0: _normalized_grad(ctx, scaled, normalized, inv_std, axes)}


def instance_norm(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    x = node.input[0]
    rank = rank_of(ctx, node, x)
    axes = list(range(2, rank))
    scale = ctx.require_constant(node, 1).astype(np.float32).reshape((1, -1) + (1,) * (rank - 2))
    g = ctx.builder
    centred = g.op("Sub", x, g.op("ReduceMean", x, axes=axes, keepdims=1), hint="in_centred")
    variance = g.op("ReduceMean", g.op("Mul", centred, centred), axes=axes, keepdims=1)
    inv_std = g.op("Reciprocal", g.op("Sqrt", g.op("Add", variance, g.const(attr(node, "epsilon", 1e-5)))))
    normalized = g.op("Mul", centred, inv_std, hint="in_normalized")
    scaled = g.op("Mul", dy[0], g.const(scale), hint="in_scaled_grad")
    return {0: _normalized_grad(ctx, scaled, normalized, inv_std, axes)}


def _normalized_grad(ctx: RuleContext, dz: str, z: str, inv_std: str, axes: list[int]) -> str:
    """The gradient of x from that of z = (x - mean(x)) / std(x) over `axes`:
    (dz - mean(dz) - z mean(dz z)) / std."""
    g = ctx.builder
    mean_dz = g.op("ReduceMean", dz, axes=axes, keepdims=1)
    mean_dz_z = g.op("ReduceMean", g.op("Mul", dz, z), axes=axes, keepdims=1)
    centred = g.op("Sub", g.op("Sub", dz, mean_dz), g.op("Mul", z, mean_dz_z))
    return g.op("Mul", centred, inv_std, hint="norm_grad")
