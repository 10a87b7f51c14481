"""Each reverse rule alone: against central finite differences and against torch autograd.

A case is one forward op (or a tiny graph around it) from `x` to `y`. The
reverse pass, seeded with a random `dy`, must give J^T dy: checked against
torch's autograd on the same op, and, without trusting torch, against the
directional central difference (f(x + eps v) - f(x - eps v)) / 2 eps of
f(x) = sum(dy * y(x)), accumulated in float64.
"""

from __future__ import annotations

import zlib
from collections import ChainMap
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto

from dreamstream.export.autodiff import (
    RuleContext,
    StaticShapes,
    UnsupportedOperator,
    constant_values,
    prepare_forward,
    reverse_pass,
)
from dreamstream.export.graph import GraphBuilder, make_model, tensor_info
from dreamstream.export.rules import RULES

Emit = Callable[[GraphBuilder, str], str]
TorchFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Case:
    name: str
    emit: Emit
    reference: TorchFn
    shape: tuple[int, int, int, int] = (2, 4, 9, 8)
    kinks: tuple[float, ...] = (0.0,)  # values of x where the op is not differentiable


def _gradient_session(emit: Emit, channels: int) -> tuple[ort.InferenceSession, str]:
    forward_builder = GraphBuilder()
    y = emit(forward_builder, "x")
    x_info = tensor_info("x", TensorProto.FLOAT, ["N", channels, "H", "W"])
    forward = make_model(forward_builder, "case", [x_info], [tensor_info(y, TensorProto.FLOAT, None)])
    shapes = StaticShapes.infer(forward)

    builder = GraphBuilder(prefix="b/")
    builder.reserve(["x", "dy"])
    nodes, emitted = prepare_forward(list(forward_builder.nodes), builder, shapes)
    builder.reserve(out for node in emitted for out in node.output)
    builder.nodes.extend(emitted)
    builder.initializers.update(forward_builder.initializers)
    context = RuleContext(builder, shapes, ChainMap(builder.initializers, constant_values(forward)))
    grad = reverse_pass(nodes, "x", {y: "dy"}, context)
    model = make_model(
        builder,
        "gradient",
        [x_info, tensor_info("dy", TensorProto.FLOAT, None)],
        [tensor_info(y, TensorProto.FLOAT, None), tensor_info(grad, TensorProto.FLOAT, None)],
    )
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), y


def _same_pad(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0, lower: bool = False) -> torch.Tensor:
    """TensorFlow SAME padding (extra at the end), what ONNX's auto_pad=SAME_UPPER does
    (SAME_LOWER: the extra at the beginning)."""
    pads = []
    for size in (x.shape[3], x.shape[2]):
        total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
        pads += [total - total // 2, total // 2] if lower else [total // 2, total - total // 2]
    return F.pad(x, pads, value=value)


def _same_average(x: torch.Tensor, kernel: int, stride: int, lower: bool = False) -> torch.Tensor:
    """TensorFlow's 'same' average pooling: each window's mean over its real inputs only."""
    sums = F.avg_pool2d(_same_pad(x, kernel, stride, lower=lower), kernel, stride)
    counts = F.avg_pool2d(_same_pad(torch.ones_like(x), kernel, stride, lower=lower), kernel, stride)
    return sums / counts


def _dynamo_lrn(g: GraphBuilder, x: str, size: int, alpha: float, beta: float, bias: float) -> str:
    """LocalResponseNorm as torch's dynamo exporter writes it: the squares padded along the
    channels of a 5-D view and averaged by a 3-D AveragePool."""
    squares = g.op("Unsqueeze", g.op("Mul", x, x), g.ints([1]))
    padded = g.op("Pad", squares, g.ints([0, 0, size // 2, 0, 0, 0, 0, (size - 1) // 2, 0, 0]))
    window = g.op("AveragePool", padded, kernel_shape=[size, 1, 1], strides=[1, 1, 1])
    scaled = g.op("Add", g.op("Mul", g.op("Squeeze", window, g.ints([1])), g.const(alpha)), g.const(bias))
    return g.op("Div", x, g.op("Pow", scaled, g.const(beta)))


def _onnx_lrn(x: torch.Tensor, size: int, alpha: float, beta: float, bias: float) -> torch.Tensor:
    """LRN as the ONNX spec windows it: for an even size, one more channel after than before
    (torch's local_response_norm puts the extra channel before)."""
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    padded = F.pad(x * x, (0, 0, 0, 0, before, after))
    window = sum(padded[:, i : i + x.shape[1]] for i in range(size))
    return x / (bias + alpha / size * window) ** beta


W4 = np.random.default_rng(1).normal(0, 0.5, (6, 4, 3, 3)).astype(np.float32)
W_GROUPED = np.random.default_rng(2).normal(0, 0.5, (6, 2, 3, 3)).astype(np.float32)
W_DEPTHWISE = np.random.default_rng(3).normal(0, 0.5, (4, 1, 5, 5)).astype(np.float32)
BIAS6 = np.random.default_rng(4).normal(0, 0.5, 6).astype(np.float32)


def _conv(weight, bias=None, **attrs) -> Emit:
    def emit(g: GraphBuilder, x: str) -> str:
        inputs = [x, g.weight("w", weight)] + ([g.weight("b", bias)] if bias is not None else [])
        return g.op("Conv", *inputs, kernel_shape=list(weight.shape[2:]), **attrs)

    return emit


def _unary(op: str, *constants: float, **attrs) -> Emit:
    return lambda g, x: g.op(op, x, *[g.const(c) for c in constants], **attrs)


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(array)


def _bn_emit(g: GraphBuilder, x: str) -> str:
    rng = np.random.default_rng(5)
    scale, bias = rng.uniform(0.5, 1.5, 4), rng.normal(0, 1, 4)
    mean, var = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    params = [g.const(p.astype(np.float32)) for p in (scale, bias, mean, var)]
    return g.op("BatchNormalization", x, *params, epsilon=1e-3)


def _bn_reference(x: torch.Tensor) -> torch.Tensor:
    rng = np.random.default_rng(5)
    scale, bias = rng.uniform(0.5, 1.5, 4), rng.normal(0, 1, 4)
    mean, var = rng.normal(0, 1, 4), rng.uniform(0.5, 2, 4)
    as_t = [torch.tensor(p, dtype=torch.float32) for p in (mean, var, scale, bias)]
    return F.batch_norm(x, *as_t, training=False, eps=1e-3)


W_MATMUL = np.random.default_rng(6).normal(0, 0.5, (8, 5)).astype(np.float32)
W_BATCHED = np.random.default_rng(7).normal(0, 0.5, (4, 6, 9)).astype(np.float32)
W_GEMM = np.random.default_rng(8).normal(0, 0.5, (5, 4)).astype(np.float32)
BIAS5 = np.random.default_rng(9).normal(0, 0.5, 5).astype(np.float32)
SLOPE4 = np.random.default_rng(10).uniform(0.1, 0.9, 4).astype(np.float32)
BIAS4 = np.random.default_rng(11).normal(0, 0.5, 4).astype(np.float32)
LN_SCALE = np.random.default_rng(12).uniform(0.5, 1.5, 8).astype(np.float32)
LN_BIAS = np.random.default_rng(13).normal(0, 0.5, 8).astype(np.float32)
MASK = np.random.default_rng(14).uniform(0, 1, (1, 1, 9, 8)) > 0.5


def _scaled(op: str, factor: float, **attrs) -> Emit:
    """The op applied to factor * x: spreads the inputs over the op's interesting range."""
    return lambda g, x: g.op(op, g.op("Mul", x, g.const(factor)), **attrs)


def _of_positive(op: str) -> Emit:
    return lambda g, x: g.op(op, g.op("Add", g.op("Mul", x, x), g.const(1.0)))


def _pooled(g: GraphBuilder, x: str) -> str:
    """[N, C]: the spatial mean, flattened, as a classifier head sees it."""
    return g.op("Flatten", g.op("GlobalAveragePool", x), axis=1)


def _split_emit(g: GraphBuilder, x: str) -> str:
    first, middle, _ = g.op("Split", x, g.ints([1, 2, 1]), outputs=3, axis=1)
    return g.op("Concat", g.op("Mul", first, g.const(3.0)), middle, axis=1)


def _channel_shuffle_emit(g: GraphBuilder, x: str) -> str:
    """ShuffleNet's channel shuffle as a dynamic-shape export writes it: the reshape targets
    are assembled at run time from Shape, Gather and Concat."""
    shape = g.op("Shape", x)
    batch = g.op("Gather", shape, g.ints([0]), axis=0)
    space = g.op("Slice", shape, g.ints([2]), g.ints([4]))
    grouped = g.op("Reshape", x, g.op("Concat", batch, g.ints([2, 2]), space, axis=0))
    swapped = g.op("Transpose", grouped, perm=[0, 2, 1, 3, 4])
    return g.op("Mul", g.op("Reshape", swapped, shape), g.const(2.0))


CASES = [
    Case(
        "conv_stride1_symmetric",
        _conv(W4, BIAS6, pads=[1, 1, 1, 1]),
        lambda x: F.conv2d(x, _t(W4), _t(BIAS6), padding=1),
    ),
    Case(
        "conv_stride2_symmetric_odd",
        _conv(W4, pads=[1, 1, 1, 1], strides=[2, 2]),
        lambda x: F.conv2d(x, _t(W4), stride=2, padding=1),
    ),
    Case(
        "conv_stride2_even_size",
        _conv(W4, pads=[1, 1, 1, 1], strides=[2, 2]),
        lambda x: F.conv2d(x, _t(W4), stride=2, padding=1),
        (1, 4, 10, 12),
    ),
    Case("conv_stride3_no_pad", _conv(W4, strides=[3, 3]), lambda x: F.conv2d(x, _t(W4), stride=3), (1, 4, 11, 10)),
    Case(
        "conv_asymmetric_pads",
        _conv(W4, pads=[0, 1, 2, 1]),
        lambda x: F.conv2d(F.pad(x, [1, 1, 0, 2]), _t(W4)),
    ),
    Case(
        "conv_asymmetric_pads_stride2",
        _conv(W4, pads=[1, 0, 0, 2], strides=[2, 2]),
        lambda x: F.conv2d(F.pad(x, [0, 2, 1, 0]), _t(W4), stride=2),
    ),
    Case(
        "conv_dilated",
        _conv(W4, pads=[2, 2, 2, 2], dilations=[2, 2]),
        lambda x: F.conv2d(x, _t(W4), padding=2, dilation=2),
    ),
    Case(
        "conv_grouped",
        _conv(W_GROUPED, pads=[1, 1, 1, 1], group=2),
        lambda x: F.conv2d(x, _t(W_GROUPED), padding=1, groups=2),
    ),
    Case(
        "conv_depthwise_same_upper_odd",
        _conv(W_DEPTHWISE, strides=[2, 2], group=4, auto_pad="SAME_UPPER"),
        lambda x: F.conv2d(_same_pad(x, 5, 2), _t(W_DEPTHWISE), stride=2, groups=4),
        (1, 4, 9, 11),
    ),
    Case(
        "conv_depthwise_same_upper_even",
        _conv(W_DEPTHWISE, strides=[2, 2], group=4, auto_pad="SAME_UPPER"),
        lambda x: F.conv2d(_same_pad(x, 5, 2), _t(W_DEPTHWISE), stride=2, groups=4),
        (1, 4, 10, 12),
    ),
    Case("relu", _unary("Relu"), F.relu),
    Case(
        "clip_relu6",
        lambda g, x: g.op("Clip", g.op("Mul", x, g.const(8.0)), g.const(0.0), g.const(6.0)),
        lambda x: F.relu6(x * 8),
        kinks=(0.0, 0.75),
    ),
    Case(
        "clip_max_only",
        lambda g, x: g.op("Clip", g.op("Mul", x, g.const(8.0)), "", g.const(6.0)),
        lambda x: torch.clamp(x * 8, max=6.0),
        kinks=(0.75,),
    ),
    Case(
        "clip_narrow_band",  # a small max: its mask's slope is capped (see activations._below_mask)
        lambda g, x: g.op("Clip", x, g.const(0.0), g.const(0.05)),
        lambda x: torch.clamp(x, 0.0, 0.05),
        kinks=(0.0, 0.05),
    ),
    Case(
        "clip_band_around_zero",
        lambda g, x: g.op("Clip", g.op("Mul", x, g.const(4.0)), g.const(-1.0), g.const(2.0)),
        lambda x: torch.clamp(x * 4, -1.0, 2.0),
        kinks=(-0.25, 0.5),
    ),
    Case("leaky_relu", _unary("LeakyRelu", alpha=0.1), lambda x: F.leaky_relu(x, 0.1)),
    Case("sigmoid", _unary("Sigmoid"), torch.sigmoid),
    Case("tanh", _unary("Tanh"), torch.tanh),
    Case(
        "hard_sigmoid",
        lambda g, x: g.op("HardSigmoid", g.op("Mul", x, g.const(4.0)), alpha=1 / 6, beta=0.5),
        lambda x: F.hardsigmoid(x * 4),
        kinks=(-0.75, 0.75),
    ),
    Case(
        "hard_swish",
        lambda g, x: g.op("HardSwish", g.op("Mul", x, g.const(4.0))),
        lambda x: F.hardswish(x * 4),
        kinks=(-0.75, 0.75),
    ),
    Case(
        "maxpool_overlapping_ceil",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
    ),
    Case(
        "maxpool_stride1_padded",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], ceil_mode=1),
        lambda x: F.max_pool2d(x, 3, 1, 1, ceil_mode=True),
    ),
    Case(
        "maxpool_padded_ceil_even",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1),
        lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True),
        (2, 4, 10, 8),
    ),
    Case(
        "maxpool_2x2",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2]),
        lambda x: F.max_pool2d(x, 2, 2),
    ),
    Case(
        "avgpool_padded_count_pad",
        lambda g, x: g.op(
            "AveragePool", x, kernel_shape=[3, 3], strides=[1, 1], pads=[1, 1, 1, 1], count_include_pad=1
        ),
        lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=True),
    ),
    Case(
        "avgpool_padded_exclude_pad",
        lambda g, x: g.op(
            "AveragePool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=0
        ),
        lambda x: F.avg_pool2d(x, 3, 2, 1, count_include_pad=False),
    ),
    Case(
        "avgpool_2x2_stride2_odd",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[2, 2], strides=[2, 2]),
        lambda x: F.avg_pool2d(x, 2, 2),
    ),
    Case(
        "avgpool_same_upper_keras",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        lambda x: _same_average(x, 3, 2),
    ),
    Case(
        "avgpool_same_lower",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_LOWER"),
        lambda x: _same_average(x, 2, 1, lower=True),
    ),
    Case(
        "avgpool_same_upper_stride1_inception_v3",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 3], strides=[1, 1], auto_pad="SAME_UPPER"),
        lambda x: _same_average(x, 3, 1),
    ),
    Case(
        "avgpool_valid",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 2], strides=[2, 3], auto_pad="VALID"),
        lambda x: F.avg_pool2d(x, (3, 2), (2, 3)),
    ),
    Case(
        "avgpool_ceil_count_pad",
        lambda g, x: g.op(
            "AveragePool", x, kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1
        ),
        lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=True),
        (2, 4, 10, 8),
    ),
    Case(
        "avgpool_ceil_exclude_pad",
        lambda g, x: g.op("AveragePool", x, kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
        lambda x: F.avg_pool2d(x, 3, 2, ceil_mode=True, count_include_pad=False),
    ),
    Case(
        "avgpool_3d_dynamo_lrn",
        lambda g, x: _dynamo_lrn(g, g.op("Mul", x, g.const(3.0)), 5, 0.2, 0.75, 1.0),
        lambda x: F.local_response_norm(x * 3, 5, 0.2, 0.75, 1.0),
        (2, 7, 5, 6),
    ),
    Case(
        "avgpool_3d_dynamo_lrn_even",
        lambda g, x: _dynamo_lrn(g, g.op("Mul", x, g.const(3.0)), 4, 0.1, 0.6, 2.0),
        lambda x: F.local_response_norm(x * 3, 4, 0.1, 0.6, 2.0),
        (1, 6, 5, 4),
    ),
    Case(
        "maxpool_same_upper_keras",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER"),
        lambda x: F.max_pool2d(_same_pad(x, 3, 2, value=-np.inf), 3, 2),
    ),
    Case(
        "maxpool_same_lower",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[2, 2], strides=[1, 1], auto_pad="SAME_LOWER"),
        lambda x: F.max_pool2d(_same_pad(x, 2, 1, value=-np.inf, lower=True), 2, 1),
    ),
    Case(
        "maxpool_valid",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID"),
        lambda x: F.max_pool2d(x, 3, 2),
    ),
    Case(
        "maxpool_dilated",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 3], strides=[1, 2], pads=[1, 1, 1, 1], dilations=[2, 2]),
        lambda x: F.max_pool2d(x, 3, (1, 2), 1, dilation=2),
    ),
    Case(
        "maxpool_stride1_dilated",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[3, 2], pads=[2, 1, 2, 0], dilations=[2, 2]),
        lambda x: F.max_pool2d(F.pad(x, [1, 0, 2, 2], value=-np.inf), (3, 2), 1, dilation=2),
    ),
    Case(
        "maxpool_dilated_ceil",
        lambda g, x: g.op("MaxPool", x, kernel_shape=[2, 2], strides=[2, 2], dilations=[2, 2], ceil_mode=1),
        lambda x: F.max_pool2d(x, 2, 2, dilation=2, ceil_mode=True),
    ),
    Case("global_average_pool", _unary("GlobalAveragePool"), lambda x: x.mean((2, 3), keepdim=True)),
    Case("reduce_mean", lambda g, x: g.op("ReduceMean", x, axes=[2, 3], keepdims=0), lambda x: x.mean((2, 3))),
    Case(
        "lrn_size5",
        lambda g, x: g.op("LRN", g.op("Mul", x, g.const(10.0)), size=5, alpha=1e-2, beta=0.75, bias=1.0),
        lambda x: F.local_response_norm(x * 10, 5, 1e-2, 0.75, 1.0),
        (2, 7, 5, 6),
    ),
    Case(
        "lrn_size4_asymmetric_window",
        lambda g, x: g.op("LRN", g.op("Mul", x, g.const(3.0)), size=4, alpha=0.2, beta=0.6, bias=2.0),
        lambda x: _onnx_lrn(x * 3, 4, 0.2, 0.6, 2.0),
        (1, 7, 5, 6),
    ),
    Case(
        "lrn_size3_other_constants",
        lambda g, x: g.op("LRN", g.op("Mul", x, g.const(3.0)), size=3, alpha=0.2, beta=0.6, bias=2.0),
        lambda x: F.local_response_norm(x * 3, 3, 0.2, 0.6, 2.0),
        (1, 7, 5, 6),
    ),
    Case(
        "concat_two_branches",
        lambda g, x: g.op("Concat", g.op("Relu", x), g.op("Mul", x, x), axis=1),
        lambda x: torch.cat([F.relu(x), x * x], 1),
    ),
    Case("batchnorm_inference", _bn_emit, _bn_reference),
    Case(
        "add_broadcast_constant",
        lambda g, x: g.op("Add", x, g.const(np.arange(4, dtype=np.float32).reshape(1, 4, 1, 1))),
        lambda x: x + torch.arange(4.0).reshape(1, 4, 1, 1),
    ),
    Case(
        "mul_broadcast_both_active",
        lambda g, x: g.op("Mul", x, g.op("Sigmoid", g.op("GlobalAveragePool", x))),
        lambda x: x * torch.sigmoid(x.mean((2, 3), keepdim=True)),
    ),
    Case(
        "sub_both_active",
        lambda g, x: g.op("Sub", g.op("Mul", x, x), g.op("Relu", x)),
        lambda x: x * x - F.relu(x),
    ),
    Case(
        "div_both_active",
        lambda g, x: g.op("Div", x, g.op("Add", g.op("Mul", x, x), g.const(1.0))),
        lambda x: x / (x * x + 1),
    ),
    Case("sum_three", lambda g, x: g.op("Sum", x, g.op("Relu", x), g.op("Neg", x)), lambda x: x + F.relu(x) - x),
    Case(
        "pad_asymmetric",
        lambda g, x: g.op("Pad", x, g.ints([0, 0, 1, 2, 0, 0, 3, 0])),
        lambda x: F.pad(x, [2, 0, 1, 3]),
    ),
    Case(
        "gather_permutation",
        lambda g, x: g.op(
            "Mul",
            g.op("Gather", x, g.ints([2, 0, 3, 1]), axis=1),
            g.const(np.arange(1, 5, dtype=np.float32).reshape(1, 4, 1, 1)),
        ),
        lambda x: x[:, [2, 0, 3, 1]] * torch.arange(1.0, 5.0).reshape(1, 4, 1, 1),
    ),
    Case(
        "matmul_constant",
        lambda g, x: g.op("MatMul", x, g.const(W_MATMUL)),
        lambda x: x @ _t(W_MATMUL),
    ),
    Case(
        "matmul_both_active",
        lambda g, x: g.op("MatMul", x, g.op("Transpose", x, perm=[0, 1, 3, 2])),
        lambda x: x @ x.transpose(-1, -2),
    ),
    Case(
        "matmul_broadcast_batch",
        lambda g, x: g.op("MatMul", g.const(W_BATCHED), g.op("Mul", x, g.const(2.0))),
        lambda x: _t(W_BATCHED) @ (x * 2),
    ),
    Case(
        "gemm_head_transb",
        lambda g, x: g.op("Gemm", _pooled(g, x), g.const(W_GEMM), g.const(BIAS5), alpha=0.7, beta=1.3, transB=1),
        lambda x: 0.7 * x.mean((2, 3)) @ _t(W_GEMM).t() + 1.3 * _t(BIAS5),
    ),
    Case(
        "gemm_transa",
        lambda g, x: g.op("Gemm", g.op("Transpose", _pooled(g, x), perm=[1, 0]), g.const(W_GEMM.T.copy()), transA=1),
        lambda x: x.mean((2, 3)) @ _t(W_GEMM).t(),
    ),
    Case("softmax_channels", _scaled("Softmax", 3.0, axis=1), lambda x: torch.softmax(x * 3, 1)),
    Case("log_softmax_last_axis", _scaled("LogSoftmax", 3.0, axis=-1), lambda x: torch.log_softmax(x * 3, -1)),
    Case(
        "resize_nearest_2x_as_torch_writes_it",
        lambda g, x: g.op(
            "Resize",
            x,
            "",
            g.const([1.0, 1.0, 2.0, 2.0]),
            mode="nearest",
            coordinate_transformation_mode="asymmetric",
            nearest_mode="floor",
        ),
        lambda x: F.interpolate(x, scale_factor=2, mode="nearest"),
    ),
    Case(
        "resize_linear_fractional_scale",
        lambda g, x: g.op("Resize", x, "", g.const([1.0, 1.0, 1.5, 2.0]), mode="linear"),
        lambda x: F.interpolate(x, scale_factor=(1.5, 2.0), mode="bilinear", align_corners=False),
    ),
    Case(
        "resize_linear_sizes_align_corners_down",
        lambda g, x: g.op(
            "Resize", x, "", "", g.ints([2, 4, 5, 6]), mode="linear", coordinate_transformation_mode="align_corners"
        ),
        lambda x: F.interpolate(x, size=(5, 6), mode="bilinear", align_corners=True),
    ),
    Case(
        "resize_cubic",
        lambda g, x: g.op("Resize", x, "", g.const([1.0, 1.0, 2.0, 2.0]), mode="cubic", cubic_coeff_a=-0.75),
        lambda x: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=False),
    ),
    Case(
        "slice_channels_and_from_the_end",
        lambda g, x: g.op("Slice", x, g.ints([1, -5]), g.ints([3, 100]), g.ints([1, 2])),
        lambda x: x[:, 1:3, -5:],
    ),
    Case(
        "split_one_output_unused",
        lambda g, x: _split_emit(g, x),
        lambda x: torch.cat([x[:, :1] * 3, x[:, 1:3]], 1),
    ),
    Case("prelu", lambda g, x: g.op("PRelu", x, g.const(SLOPE4.reshape(4, 1, 1))), lambda x: F.prelu(x, _t(SLOPE4))),
    Case("elu", _scaled("Elu", 3.0, alpha=0.7), lambda x: F.elu(x * 3, 0.7)),
    Case("selu", _scaled("Selu", 3.0), lambda x: F.selu(x * 3)),
    Case("softplus", _scaled("Softplus", 3.0), lambda x: F.softplus(x * 3)),
    Case("erf", _scaled("Erf", 2.0), lambda x: torch.erf(x * 2)),
    Case("exp", _scaled("Exp", 2.0), lambda x: torch.exp(x * 2)),
    Case("log", _of_positive("Log"), lambda x: torch.log(x * x + 1)),
    Case("sqrt", _of_positive("Sqrt"), lambda x: torch.sqrt(x * x + 1)),
    Case("reciprocal", _of_positive("Reciprocal"), lambda x: 1 / (x * x + 1)),
    Case("abs", _unary("Abs"), torch.abs),
    Case("pow_cube", lambda g, x: g.op("Pow", x, g.const(3.0)), lambda x: x**3),
    Case("pow_square", lambda g, x: g.op("Pow", x, g.const(2.0)), lambda x: x**2),
    Case("cast_to_float", lambda g, x: g.op("Cast", x, to=TensorProto.FLOAT), lambda x: x),
    Case(
        "layer_norm_last_axis",
        lambda g, x: g.op("LayerNormalization", x, g.const(LN_SCALE), g.const(LN_BIAS), axis=-1, epsilon=1e-5),
        lambda x: F.layer_norm(x, (8,), _t(LN_SCALE), _t(LN_BIAS), 1e-5),
    ),
    Case(
        "instance_norm",
        lambda g, x: g.op("InstanceNormalization", x, g.const(SLOPE4), g.const(BIAS4), epsilon=1e-5),
        lambda x: F.instance_norm(x, weight=_t(SLOPE4), bias=_t(BIAS4), eps=1e-5),
    ),
    Case("global_max_pool", _unary("GlobalMaxPool"), lambda x: F.adaptive_max_pool2d(x, 1)),
    Case(
        "reduce_max_channels_dropped",
        lambda g, x: g.op("ReduceMax", x, axes=[1], keepdims=0),
        lambda x: x.amax(1),
    ),
    Case(
        "reduce_sum_space_kept",
        lambda g, x: g.op("ReduceSum", x, g.ints([2, 3]), keepdims=1),
        lambda x: x.sum((2, 3), keepdim=True),
    ),
    Case(
        "reduce_sum_everything",  # few elements: the objective is one float32 sum
        lambda g, x: g.op("ReduceSum", x, keepdims=0),
        lambda x: x.sum(),
        (1, 2, 3, 3),
    ),
    Case(
        "unsqueeze_dropout_squeeze",
        lambda g, x: g.op("Squeeze", g.op("Dropout", g.op("Unsqueeze", x, g.ints([0]))), g.ints([0])),
        lambda x: x,
    ),
    Case(
        "expand_to_a_runtime_shape",
        lambda g, x: g.op("Expand", g.op("ReduceMean", x, axes=[3], keepdims=1), g.op("Shape", x)),
        lambda x: x.mean(3, keepdim=True).expand_as(x),
    ),
    Case("tile", lambda g, x: g.op("Tile", x, g.ints([1, 2, 1, 3])), lambda x: x.repeat(1, 2, 1, 3)),
    Case(
        "where_constant_condition",
        lambda g, x: g.op("Where", g.const(MASK, np.bool_), x, g.op("Mul", x, g.const(-2.0))),
        lambda x: torch.where(torch.from_numpy(MASK), x, -2 * x),
    ),
    Case(
        "where_of_a_comparison",
        lambda g, x: g.op("Where", g.op("Greater", x, g.const(0.0)), x, g.op("Mul", x, g.const(0.1))),
        lambda x: F.leaky_relu(x, 0.1),
    ),
    Case(
        "channel_shuffle_through_a_shape_subgraph",
        _channel_shuffle_emit,
        lambda x: x.reshape(x.shape[0], 2, 2, *x.shape[2:]).transpose(1, 2).reshape(x.shape) * 2,
    ),
    Case(
        "relu6_as_min_of_max",  # how some converters write ReLU6
        lambda g, x: g.op("Min", g.op("Max", g.op("Mul", x, g.const(8.0)), g.const(0.0)), g.const(6.0)),
        lambda x: F.relu6(x * 8),
        kinks=(0.0, 0.75),
    ),
    Case(
        "max_of_two_active",
        lambda g, x: g.op("Max", x, g.op("Neg", x)),
        lambda x: torch.maximum(x, -x),
    ),
    Case(
        "mean_of_three",
        lambda g, x: g.op("Mean", x, g.op("Relu", x), g.op("Mul", x, x)),
        lambda x: (x + F.relu(x) + x * x) / 3,
    ),
    Case(
        "flatten_reshape_transpose",
        lambda g, x: g.op("Transpose", g.op("Flatten", g.op("Identity", x), axis=1), perm=[1, 0]),
        lambda x: x.flatten(1).t(),
    ),
]


def _inputs_away_from_kinks(rng: np.random.Generator, shape: tuple[int, ...], kinks: tuple[float, ...]) -> np.ndarray:
    values = np.linspace(-1.0, 1.0, int(np.prod(shape)))
    for kink in kinks:
        near = np.abs(values - kink) < 0.01
        values[near] += np.where(values[near] >= kink, 0.01, -0.01)
    return rng.permutation(values).reshape(shape).astype(np.float32)


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_rule_matches_torch_autograd_and_finite_differences(case: Case) -> None:
    rng = np.random.default_rng(zlib.crc32(case.name.encode()))
    session, _ = _gradient_session(case.emit, case.shape[1])
    x = _inputs_away_from_kinks(rng, case.shape, case.kinks)
    x_torch = torch.from_numpy(x).requires_grad_(True)
    y_torch = case.reference(x_torch)
    dy = rng.normal(0.0, 1.0, tuple(y_torch.shape)).astype(np.float32)
    y, grad = session.run(None, {"x": x, "dy": dy})

    np.testing.assert_allclose(y, y_torch.detach().numpy(), rtol=1e-4, atol=1e-5)
    y_torch.backward(torch.from_numpy(dy))
    expected = x_torch.grad.numpy()
    scale = np.abs(expected).max()
    assert scale > 0
    assert np.abs(grad - expected).max() / scale <= 1e-5

    def objective(point: np.ndarray) -> float:
        out = session.run(None, {"x": point.astype(np.float32), "dy": dy})[0]
        return float(np.sum(out.astype(np.float64) * dy))

    direction = rng.uniform(-1.0, 1.0, x.shape)
    eps = 1e-3  # below half the spacing of the inputs: no pooling window changes its maximum
    numeric = (objective(x + eps * direction) - objective(x - eps * direction)) / (2 * eps)
    analytic = float(np.sum(grad.astype(np.float64) * direction))
    assert abs(numeric - analytic) <= 2e-3 * max(1.0, abs(analytic))


def test_unknown_op_is_an_error_naming_the_node() -> None:
    def emit(g: GraphBuilder, x: str) -> str:
        return g.op("Hardmax", g.op("Relu", x), hint="my_hardmax", axis=1)

    with pytest.raises(UnsupportedOperator, match=r"my_hardmax_node.*Hardmax"):
        _gradient_session(emit, 4)


def test_gradient_with_respect_to_conv_weights_is_refused() -> None:
    def emit(g: GraphBuilder, x: str) -> str:
        weight = g.op("Reshape", g.op("Slice", x, g.ints([0]), g.ints([1]), g.ints([0])), g.ints([1, 4, 9, 8]))
        return g.op("Conv", x, weight, kernel_shape=[9, 8])

    with pytest.raises(UnsupportedOperator, match="Conv"):
        _gradient_session(emit, 4)


def test_every_op_in_the_rule_table_has_a_case() -> None:
    used = set()
    for case in CASES:
        builder = GraphBuilder()
        case.emit(builder, "x")
        used.update(node.op_type for node in builder.nodes)
    assert set(RULES) - used == set()


TIED_POOLS = {
    "3x3_stride2_ceil": ({"kernel_shape": [3, 3], "strides": [2, 2], "ceil_mode": 1}, (3, 2, 0, True)),
    "3x3_stride1_padded": ({"kernel_shape": [3, 3], "pads": [1, 1, 1, 1]}, (3, 1, 1, False)),
    "2x2_stride2": ({"kernel_shape": [2, 2], "strides": [2, 2]}, (2, 2, 0, False)),
    "3x3_stride2_padded_ceil": (
        {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1], "ceil_mode": 1},
        (3, 2, 1, True),
    ),
}


@pytest.mark.parametrize("name", list(TIED_POOLS))
def test_max_pool_gives_a_window_with_tied_maxima_its_gradient_once_at_the_first_as_torch_does(name: str) -> None:
    # A clipped, flat part of a picture makes windows whose maximum is held by several
    # inputs: torch's gradient goes to the first of them in raster order, and so does ours.
    attributes, (kernel, stride, padding, ceil_mode) = TIED_POOLS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    session, _ = _gradient_session(lambda g, x: g.op("MaxPool", x, **attributes), 3)
    x = rng.integers(0, 3, (2, 3, 11, 10)).astype(np.float32)  # three levels: ties in most windows
    x_torch = torch.from_numpy(x).requires_grad_(True)
    y_torch = F.max_pool2d(x_torch, kernel, stride, padding, ceil_mode=ceil_mode)
    dy = rng.normal(0.0, 1.0, tuple(y_torch.shape)).astype(np.float32)
    y, grad = session.run(None, {"x": x, "dy": dy})
    y_torch.backward(torch.from_numpy(dy))
    np.testing.assert_array_equal(y, y_torch.detach().numpy())
    np.testing.assert_allclose(grad, x_torch.grad.numpy(), rtol=0, atol=1e-6)


SLOPE_EDGES = {
    # name: (forward, the inputs, where the slope is 1)
    "relu": (
        lambda g, x: g.op("Relu", x),
        [-1.0, -0.0, 0.0, 1e-45, 1e-40, 1.1754942e-38, 1e-30, 1.0, 3e38],
        lambda x: x > 0,
    ),
    "relu6": (
        lambda g, x: g.op("Clip", x, g.const(0.0), g.const(6.0)),
        [-1.0, 0.0, 1e-45, 1e-38, 1.0, np.nextafter(np.float32(6.0), np.float32(0.0)), 6.0, 7.0, 3e38],
        lambda x: (x > 0) & (x < 6),
    ),
    "clip_max_4096": (
        lambda g, x: g.op("Clip", x, "", g.const(4096.0)),
        [-3e38, -1e-45, 0.0, 1.0, np.nextafter(np.float32(4096.0), np.float32(0.0)), 4096.0, 5000.0],
        lambda x: x < 4096,
    ),
    "clip_band_tiny": (  # the general rule: a product of the two gaps would underflow to 0
        lambda g, x: g.op("Clip", x, g.const(0.0), g.const(2.0**-101)),
        [0.0, 1e-45, 2.0**-102, np.nextafter(np.float32(2.0**-101), np.float32(0.0)), 2.0**-101, 1.0],
        lambda x: (x > 0) & (x < 2.0**-101),
    ),
    "clip_band_shifted": (
        lambda g, x: g.op("Clip", x, g.const(-1.0), g.const(1.0)),
        [
            -2.0,
            -1.0,
            np.nextafter(np.float32(-1.0), np.float32(0.0)),
            0.0,
            np.nextafter(np.float32(1.0), np.float32(0.0)),
            1.0,
            2.0,
        ],
        lambda x: (x > -1) & (x < 1),
    ),
    "clip_max_tiny": (
        lambda g, x: g.op("Clip", x, g.const(0.0), g.const(2.0**-90)),
        [0.0, 1e-45, np.nextafter(np.float32(2.0**-90), np.float32(0.0)), 2.0**-90, 1.0],
        lambda x: (x > 0) & (x < 2.0**-90),
    ),
}


@pytest.mark.parametrize("name", list(SLOPE_EDGES))
def test_relu_and_clip_slopes_are_exactly_one_or_zero_up_to_their_bounds(name: str) -> None:
    # The masks are computed in float (activations._positive_mask, _below_mask): no value,
    # however close to a bound or however small (subnormal), may get a slope between 0 and 1.
    forward, values, inside = SLOPE_EDGES[name]
    x = np.array(values, np.float32).reshape(1, 1, 1, -1)
    session, _ = _gradient_session(forward, 1)
    _, grad = session.run(None, {"x": x, "dy": np.ones_like(x)})
    np.testing.assert_array_equal(grad, inside(x).astype(np.float32))
