"""One reverse rule per ONNX op: the gradient of a node's inputs from the gradient of its outputs.

Every rule here is tested alone against central finite differences
(tests/test_rules.py). Rules emit only ops that ONNX Runtime's CUDA provider
implements with the attributes used: the input gradient of a strided or
asymmetrically padded Conv is a ConvTranspose without padding followed by a
Slice (ConvTranspose with asymmetric pads would fall back to the CPU), and a
MaxPool's gradient is a scatter-add of the output gradient through the indices
the forward MaxPool computed (no MaxUnpool).

Shapes are dynamic (every octave has another size), so sizes that depend on
the image are computed in the graph from `Shape`; channel counts and kernel
sizes are static and come from shape inference and the weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import helper

from dreamstream.export.autodiff import (
    PREPARERS,
    RuleContext,
    StaticShapes,
    UnsupportedOperator,
    reverse_rule,
)
from dreamstream.export.graph import DERIVED_PREFIX, GraphBuilder

Grads = Sequence[str | None]


def attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def _only(node: onnx.NodeProto, wanted: set[int], allowed: set[int]) -> None:
    """Refuse to differentiate inputs a rule does not handle (say, a Conv's weights)."""
    extra = wanted - allowed
    if extra:
        names = ", ".join(node.input[i] for i in sorted(extra))
        raise UnsupportedOperator(node, f"gradients with respect to {names} are not supported")


def _spatial_dims(ctx: RuleContext, tensor: str) -> str:
    """int64 [2]: H and W of an NCHW tensor at run time."""
    return ctx.builder.op("Shape", tensor, hint="hw", start=2, end=4)


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
    ends = g.op("Add", starts, _spatial_dims(ctx, x), hint="crop_end")
    return g.op("Slice", grad, starts, ends, g.ints([2, 3]), hint="grad_crop")


def _same_pad_begin(ctx: RuleContext, x: str, kernel, strides, dilations, upper: bool) -> str:
    """int64 [2]: the top/left padding of auto_pad SAME_* for the run-time input size."""
    g = ctx.builder
    size = _spatial_dims(ctx, x)
    stride = g.ints(strides)
    effective = g.ints([d * (k - 1) + 1 for k, d in zip(kernel, dilations, strict=True)])
    out = g.op("Div", g.op("Add", size, g.ints([s - 1 for s in strides])), stride)  # ceil(size / stride)
    needed = g.op("Sub", g.op("Add", g.op("Mul", g.op("Sub", out, g.ints([1, 1])), stride), effective), size)
    total = g.op("Max", needed, g.ints([0, 0]))
    half = g.op("Div", total, g.ints([2, 2]))
    return half if upper else g.op("Sub", total, half)


@reverse_rule("Conv")
def conv(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    _only(node, wanted, {0})
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
    return {0: _transposed(ctx, dy[0], w, x, pads, strides, transpose, "conv_grad")}


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


def _transposed(
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


def _add_maxpool_indices(
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


PREPARERS["MaxPool"] = _add_maxpool_indices


@reverse_rule("MaxPool")
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


@reverse_rule("AveragePool")
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
    return {0: _transposed(ctx, scaled, ones_kernel, x, pads, strides, transpose, "avgpool_grad")}


@reverse_rule("GlobalAveragePool")
def global_average_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    g = ctx.builder
    area = g.op("Cast", g.op("ReduceProd", _spatial_dims(ctx, x), keepdims=1), to=onnx.TensorProto.FLOAT)
    spread = g.op("Expand", dy[0], ctx.shape_of(x), hint="gap_spread")
    return {0: g.op("Div", spread, area, hint="gap_grad")}


@reverse_rule("ReduceMean")
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


def _lrn_scale(y: str) -> str:
    return f"{y}::lrn_scale"


def _lrn_factor(y: str) -> str:
    return f"{y}::lrn_factor"


def _lrn_band(node: onnx.NodeProto) -> str:
    return f"{DERIVED_PREFIX}{node.name or node.output[0]}/lrn_band"


def _decompose_lrn(
    node: onnx.NodeProto, builder: GraphBuilder, shapes: StaticShapes
) -> tuple[onnx.NodeProto, list[onnx.NodeProto]]:
    """Emit LRN as y = x * s^-beta, s = bias + alpha/size * (window sum of x^2).

    The window sum is a 1x1 convolution with a banded channel matrix. On the CPU this
    runs about 2.5x faster than ONNX Runtime's own LRN kernel, and the backward reads
    s and s^-beta from the forward instead of computing them again.
    """
    x, y = node.input[0], node.output[0]
    channels = shapes.dim(x, 1)
    if channels is None:
        raise UnsupportedOperator(node, "LRN needs the channel count known statically")
    size = attr(node, "size")
    alpha, beta, bias = attr(node, "alpha", 1e-4), attr(node, "beta", 0.75), attr(node, "bias", 1.0)
    low, high = (size - 1) // 2, size - 1 - (size - 1) // 2
    band = np.zeros((channels, channels, 1, 1), np.float32)
    for c in range(channels):
        band[c, max(0, c - low) : min(channels, c + high + 1)] = alpha / size
    start = len(builder.nodes)
    band_name = _lrn_band(node)
    if band_name not in builder.initializers:
        builder.weight(band_name, band)
    square = builder.op("Mul", x, x, hint="lrn_square")
    builder.op_into("Conv", [square, band_name, builder.const(np.full(channels, bias, np.float32))], [_lrn_scale(y)])
    if beta == 0.75:  # Caffe's and torchvision's LRN: two square roots are twice as fast as Pow
        root = builder.op("Sqrt", _lrn_scale(y), hint="lrn_root")
        builder.op_into("Reciprocal", [builder.op("Mul", root, builder.op("Sqrt", root))], [_lrn_factor(y)])
    else:
        builder.op_into("Pow", [_lrn_scale(y), builder.const(-beta)], [_lrn_factor(y)])
    builder.op_into("Mul", [x, _lrn_factor(y)], [y])
    emitted = builder.nodes[start:]
    del builder.nodes[start:]
    return node, emitted


PREPARERS["LRN"] = _decompose_lrn


@reverse_rule("LRN")
def lrn(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y_c = x_c p_c with p = s^-beta and s_c = bias + sum_j B[c,j] x_j^2 (B the band), so
    # dx_j = dy_j p_j - 2 beta x_j sum_c B[c,j] dy_c y_c / s_c; the sum over c is B transposed.
    x, y = node.input[0], node.output[0]
    beta = attr(node, "beta", 0.75)
    g = ctx.builder
    direct = g.op("Mul", dy[0], _lrn_factor(y), hint="lrn_direct")
    ratio = g.op("Div", g.op("Mul", dy[0], y), _lrn_scale(y), hint="lrn_ratio")
    spread = g.op("ConvTranspose", ratio, _lrn_band(node), hint="lrn_spread", kernel_shape=[1, 1])
    cross = g.op("Mul", g.op("Mul", x, spread), g.const(2.0 * beta), hint="lrn_cross")
    return {0: g.op("Sub", direct, cross, hint="lrn_grad")}


# Masks are built with Sign on float tensors rather than Greater + Where: ONNX Runtime's
# CPU kernels for bool tensors are about three times slower.


@reverse_rule("Relu")
def relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = g.op("Sign", node.output[0], hint="relu_mask")  # y >= 0: 1 where y > 0, else 0
    return {0: g.op("Mul", dy[0], positive, hint="relu_grad")}


@reverse_rule("LeakyRelu")
def leaky_relu(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    positive = g.op("Greater", node.input[0], g.const(0.0))
    leaked = g.op("Mul", dy[0], g.const(attr(node, "alpha", 0.01)))
    return {0: g.op("Where", positive, dy[0], leaked, hint="leaky_relu_grad")}


@reverse_rule("Clip")
def clip(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # The gradient passes where min < x < max, that is where min < y < max for y = clip(x):
    # there (y - min) * (max - y) > 0, elsewhere it is 0, and its Sign is the mask.
    _only(node, wanted, {0})
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


@reverse_rule("Sigmoid")
def sigmoid(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    slope = g.op("Mul", y, g.op("Sub", g.const(1.0), y), hint="sigmoid_slope")
    return {0: g.op("Mul", dy[0], slope, hint="sigmoid_grad")}


@reverse_rule("Tanh")
def tanh(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    slope = g.op("Sub", g.const(1.0), g.op("Mul", y, y), hint="tanh_slope")
    return {0: g.op("Mul", dy[0], slope, hint="tanh_grad")}


@reverse_rule("HardSigmoid")
def hard_sigmoid(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    y = node.output[0]
    inside = g.op("And", g.op("Greater", y, g.const(0.0)), g.op("Less", y, g.const(1.0)))
    scaled = g.op("Mul", dy[0], g.const(attr(node, "alpha", 0.2)))
    return {0: g.op("Where", inside, scaled, g.const(0.0), hint="hard_sigmoid_grad")}


@reverse_rule("HardSwish")
def hard_swish(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # y = x * clip(x/6 + 1/2, 0, 1): slope x/3 + 1/2 inside (-3, 3), 1 above, 0 below.
    g = ctx.builder
    x = node.input[0]
    slope = g.op("Add", g.op("Mul", x, g.const(1.0 / 3.0)), g.const(0.5))
    inner = g.op("Where", g.op("Less", x, g.const(3.0)), slope, g.const(1.0))
    full = g.op("Where", g.op("Greater", x, g.const(-3.0)), inner, g.const(0.0))
    return {0: g.op("Mul", dy[0], full, hint="hard_swish_grad")}


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


@reverse_rule("Add", "Sub", "Sum")
def add(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    grads = {}
    for index in wanted:
        grad = _unbroadcast(ctx, node, dy[0], index)
        if node.op_type == "Sub" and index == 1:
            grad = ctx.builder.op("Neg", grad, hint="sub_grad")
        grads[index] = grad
    return grads


@reverse_rule("Mul")
def mul(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    g = ctx.builder
    grads = {}
    for index in wanted:
        other = node.input[1 - index]
        product = g.op("Mul", dy[0], other, hint="mul_grad")
        grads[index] = _unbroadcast(ctx, node, product, index)
    return grads


@reverse_rule("Div")
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


@reverse_rule("Neg")
def neg(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    return {0: ctx.builder.op("Neg", dy[0], hint="neg_grad")}


@reverse_rule("Identity", "Dropout")
def identity(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    _only(node, wanted, {0})
    return {0: dy[0]}


@reverse_rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    _only(node, wanted, {0})
    x = node.input[0]
    return {0: ctx.builder.op("Reshape", dy[0], ctx.shape_of(x), hint="reshape_grad")}


@reverse_rule("Transpose")
def transpose(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    perm = list(attr(node, "perm"))
    inverse = list(np.argsort(perm))
    return {0: ctx.builder.op("Transpose", dy[0], hint="transpose_grad", perm=inverse)}


@reverse_rule("Concat")
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


@reverse_rule("Pad")
def pad(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    _only(node, wanted, {0})
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


@reverse_rule("BatchNormalization")
def batch_norm(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    _only(node, wanted, {0})
    if attr(node, "training_mode", 0):
        raise UnsupportedOperator(node, "BatchNormalization in training mode is not supported")
    scale = ctx.require_constant(node, 1)
    variance = ctx.require_constant(node, 4)
    factor = scale / np.sqrt(variance + attr(node, "epsilon", 1e-5))
    rank = ctx.shapes.rank(node.input[0]) or 4
    factor = factor.astype(np.float32).reshape((1, -1) + (1,) * (rank - 2))
    return {0: ctx.builder.op("Mul", dy[0], ctx.builder.const(factor), hint="batchnorm_grad")}


@reverse_rule("Gather")
def gather(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    # Supported for what preprocessing uses: a constant permutation (RGB -> BGR).
    _only(node, wanted, {0})
    indices = ctx.require_constant(node, 1)
    axis = attr(node, "axis", 0)
    size = ctx.shapes.dim(node.input[0], axis)
    if indices.ndim != 1 or size is None or sorted(indices.tolist()) != list(range(size)):
        raise UnsupportedOperator(node, "only a constant permutation along one axis is supported")
    inverse = np.argsort(indices).astype(np.int64)
    return {0: ctx.builder.op("Gather", dy[0], ctx.builder.ints(inverse), hint="gather_grad", axis=axis)}
