"""Pooling and reductions: MaxPool, AveragePool, the global pools, ReduceMean, ReduceMax, ReduceSum.

A 2-D MaxPool is emitted and walked as two 1-D ones (its rows, then its columns:
max is separable), and each 1-D max-pool's gradient is built from comparisons of
its input with its output at each of the window's k taps: the gradient of a window
goes to the first tap holding its maximum (torch's rule for ties, which a window of
a clipped, flat part of a picture has), so the two stages send it to the raster-first
maximum of the 2-D window, as torch does. That is a few elementwise ops per tap and
no indices: ONNX Runtime's MaxPool with indices runs 13x slower than its plain one,
and the scatter-add through them is single-threaded. Other MaxPools (1-D, 3-D, or
whose indices the graph itself uses) keep the scatter-add through the indices the
forward computed (not a MaxUnpool, which the CUDA provider lacks).

An AveragePool with TensorFlow's 'same' padding (auto_pad), ceil_mode, or over 1-D
or 3-D windows (torch's dynamo exporter writes LocalResponseNorm as a 3-D
AveragePool over a 5-D view) takes the general rule, which works out the padding
at run time and measures each window's count rather than restating ONNX's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def prepare_max_pool(
    node: onnx.NodeProto, builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """A 2-D MaxPool as two 1-D ones (along W, then along H); other MaxPools with their indices."""
    if attr(node, "storage_order", 0) != 0:
        raise UnsupportedOperator(node, "MaxPool with storage_order=1 is not supported")
    if len(node.output) > 1 and node.output[1]:
        return [node], [node]
    if len(attr(node, "kernel_shape")) != 2:
        return _with_indices(node, builder)
    window = _Window.of(node, 2)
    stages = []
    source = node.input[0]
    for axis in (1, 0):  # along W first, then along H: the order of torch's raster-first rule
        if not window.moves_along(axis):
            continue
        stages.append(_one_axis_pool(node, window, axis, source, builder))
        source = stages[-1].output[0]
    if not stages:  # a 1x1 window with stride 1: still a MaxPool, one stage
        stages.append(_one_axis_pool(node, window, 0, source, builder))
    stages[-1].output[0] = node.output[0]
    return stages, stages


def _one_axis_pool(
    node: onnx.NodeProto, window: _Window, axis: int, source: str, builder: GraphBuilder
) -> onnx.NodeProto:
    """The part of a 2-D MaxPool along one spatial axis (0: H, 1: W): the window along the other is 1."""

    def along(values: list[int], other: int) -> list[int]:
        return [values[axis] if i == axis else other for i in range(2)]

    attributes = {
        "kernel_shape": along(window.kernel, 1),
        "strides": along(window.strides, 1),
        "dilations": along(window.dilations, 1),
        "ceil_mode": int(window.ceil_mode),
    }
    if window.auto_pad == "NOTSET":
        attributes["pads"] = along(window.pads[:2], 0) + along(window.pads[2:], 0)
    else:  # SAME and VALID padding is worked out for each axis alone: with a window of 1 it is none
        attributes["auto_pad"] = window.auto_pad
    label = "rows" if axis == 1 else "columns"
    output = builder.fresh(f"{node.output[0]}_{label}")
    return helper.make_node(
        "MaxPool", [source], [output], name=builder.fresh(f"{node.name or 'maxpool'}_{label}"), **attributes
    )


def _with_indices(node: onnx.NodeProto, builder: GraphBuilder) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    prepared = onnx.NodeProto()
    prepared.CopyFrom(node)
    del prepared.output[:]
    prepared.output.extend([node.output[0], builder.fresh(f"{node.output[0]}_indices")])
    return [prepared], [prepared]


def max_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    if len(node.output) > 1 and node.output[1]:
        return {0: _scatter_to_indices(ctx, node, dy[0])}
    window = _Window.of(node, 2)
    moving = [axis for axis in (0, 1) if window.moves_along(axis)]
    if len(moving) > 1:
        raise UnsupportedOperator(node, "a 2-D MaxPool must be walked as two 1-D ones (see prepare_max_pool)")
    if not moving:
        return {0: dy[0]}
    return {0: _one_axis_max_pool_grad(ctx, node, dy[0], window, moving[0])}


def _one_axis_max_pool_grad(ctx: RuleContext, node: onnx.NodeProto, dy: str, window: _Window, axis: int) -> str:
    """The input gradient of a MaxPool whose window runs along one spatial axis only.

    On the input padded with -inf (never a window's maximum), tap t of every window is
    a strided slice; where it equals the window's maximum and no earlier tap did, it
    takes the window's gradient. What no tap before the last took goes to the last, which
    then holds the maximum. Each tap's share is then put back in place: taps t*dilation
    = u*stride + phase land on the positions of their phase, shifted by u windows, and
    the phases are interleaved.
    """
    g = ctx.builder
    x, y = node.input[0], node.output[0]
    extent = window.extents[axis]
    begin = g.op("Slice", window.pad_begin(ctx, x), g.ints([axis]), g.ints([axis + 1]), hint="maxpool_pad_begin")
    # Enough -inf after the input for every tap's slice to have one element per window,
    # ceil_mode's last window included; `same` padding adds at most the window's extent.
    stride = window.strides[axis]
    after = (window.pads[2 + axis] if window.auto_pad == "NOTSET" else extent) + stride - 1
    taps = (window.kernel[axis], stride, window.dilations[axis])
    return _taps_grad(ctx, x, y, dy, begin, after, taps, axis + 2)


def _taps_grad(
    ctx: RuleContext, x: str, y: str, dy: str, begin: str, after: int, taps: tuple[int, int, int], axis: int
) -> str:
    """`_one_axis_max_pool_grad` along tensor axis `axis`, with `begin` and `after` padding there."""
    g = ctx.builder
    k, s, d = taps
    pads = [g.ints([0, 0]), begin if axis == 2 else g.ints([0]), g.ints([0]) if axis == 2 else begin]
    pads.append(g.ints([0, 0] + ([after, 0] if axis == 2 else [0, after])))
    padded = g.op("Pad", x, g.op("Concat", *pads, axis=0), g.const(-np.inf), hint="maxpool_grad_padded")
    windows = g.op("Shape", y, hint="maxpool_windows", start=axis, end=axis + 1)
    span = g.op("Sub", g.op("Mul", windows, g.ints([s])), g.ints([s - 1]), hint="maxpool_span")
    shares: list[tuple[int, str]] = []  # (position in the window, its share of the gradient)
    remaining = dy
    for tap in range(k - 1):
        start = g.ints([tap * d])
        values = g.op("Slice", padded, start, g.op("Add", start, span), g.ints([axis]), g.ints([s]))
        # Equal and a Cast to float, not Where: ONNX Runtime's CPU Where is three times slower.
        at_max = g.op("Cast", g.op("Equal", values, y), hint="maxpool_at_max", to=onnx.TensorProto.FLOAT)
        first = g.op("Mul", remaining, at_max, hint="maxpool_tap_share")
        remaining = g.op("Sub", remaining, first, hint="maxpool_remaining")
        shares.append((tap * d, first))
    shares.append(((k - 1) * d, remaining))
    placed = _interleave_phases(ctx, shares, s, (d * (k - 1)) // s, axis)
    end = g.op("Add", begin, g.op("Shape", x, start=axis, end=axis + 1))
    return g.op("Slice", placed, begin, end, g.ints([axis]), hint="maxpool_grad")


def _interleave_phases(ctx: RuleContext, shares: list[tuple[int, str]], stride: int, reach: int, axis: int) -> str:
    """The shares of the taps at `position` (window index w -> padded input index w*stride +
    position) summed into one tensor over the padded input (at least as long as it)."""
    g = ctx.builder
    # One more window's length for each phase: the input may run up to stride-1 past the last window.
    extra = 1 if stride > 1 else 0
    phases: list[str] = []
    for phase in range(stride):
        parts = []
        for position, share in shares:
            if position % stride != phase:
                continue
            shift = position // stride
            before, after = shift, reach - shift + extra
            if before or after:
                pads = [0] * 8
                pads[axis], pads[4 + axis] = before, after
                share = g.op("Pad", share, g.ints(pads), hint="maxpool_place")
            parts.append(share)
        if parts:
            phases.append(parts[0] if len(parts) == 1 else g.op("Sum", *parts, hint="maxpool_phase"))
        else:  # a window shorter than its stride skips this phase
            phases.append(g.op("Mul", phases[0], g.const(0.0), hint="maxpool_empty_phase"))
    if stride == 1:
        return phases[0]
    stacked = g.op("Concat", *(g.op("Unsqueeze", phase, g.ints([axis + 1])) for phase in phases), axis=axis + 1)
    if axis == 3:
        shape = g.ints([0, 0, 0, -1])
    else:
        shape = g.op("Concat", g.ints([0, 0, -1]), g.op("Shape", phases[0], start=3, end=4), axis=0)
    return g.op("Reshape", stacked, shape, hint="maxpool_interleaved")


def _scatter_to_indices(ctx: RuleContext, node: onnx.NodeProto, dy: str) -> str:
    # The forward MaxPool also returned the flat index (into the whole input tensor) of
    # each window's maximum; overlapping windows may pick the same input, hence the add.
    x, indices = node.input[0], node.output[1]
    g = ctx.builder
    shape = ctx.shape_of(x)
    count = g.op("ReduceProd", shape, hint="numel", keepdims=1)
    flat_zero = ctx.zeros_like_shape(count)
    flat_indices = g.op("Reshape", indices, g.ints([-1]), hint="flat_indices")
    flat_grad = g.op("Reshape", dy, g.ints([-1]), hint="flat_dy")
    scattered = g.op(
        "ScatterElements", flat_zero, flat_indices, flat_grad, hint="maxpool_grad", axis=0, reduction="add"
    )
    return g.op("Reshape", scattered, shape, hint="maxpool_grad_shape")


def average_pool(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    x = node.input[0]
    kernel = list(attr(node, "kernel_shape"))
    window = _Window.of(node, len(kernel))
    if len(kernel) != 2 or window.auto_pad != "NOTSET" or window.ceil_mode or window.dilations != [1, 1]:
        return {0: _general_average_pool_grad(ctx, node, dy[0], window)}
    strides, pads = window.strides, window.pads
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


@dataclass(frozen=True)
class _Window:
    """A pooling node's windows over its spatial axes, whatever the attributes say them with."""

    kernel: list[int]
    strides: list[int]
    dilations: list[int]
    pads: list[int]  # begins then ends, as the node declares them (auto_pad NOTSET)
    auto_pad: str
    ceil_mode: bool

    @classmethod
    def of(cls, node: onnx.NodeProto, spatial: int) -> _Window:
        return cls(
            kernel=list(attr(node, "kernel_shape")),
            strides=list(attr(node, "strides", [1] * spatial)),
            dilations=list(attr(node, "dilations", [1] * spatial)),
            pads=list(attr(node, "pads", [0] * 2 * spatial)),
            auto_pad=attr(node, "auto_pad", "NOTSET"),
            ceil_mode=bool(attr(node, "ceil_mode", 0)),
        )

    def moves_along(self, axis: int) -> bool:
        """Whether the windows change anything along this axis (a 1-wide window, stride 1, no padding do not)."""
        spatial = len(self.kernel)
        return self.kernel[axis] != 1 or self.strides[axis] != 1 or self.pads[axis::spatial] != [0, 0]

    @property
    def extents(self) -> list[int]:
        """Input positions one window spans along each axis, dilation included."""
        return [d * (k - 1) + 1 for k, d in zip(self.kernel, self.dilations, strict=True)]

    def pad_begin(self, ctx: RuleContext, x: str) -> str:
        """int64 [spatial]: the padding before the input on each axis, for the run-time input size.

        With it, every window of the node starts at output index * stride on the padded
        input: auto_pad's SAME padding depends on the input's size; the end padding (and
        ceil_mode's windows that hang past it) need no number, the output's size says it.
        """
        g = ctx.builder
        spatial = len(self.kernel)
        if self.auto_pad == "VALID":
            return g.ints([0] * spatial)
        if self.auto_pad == "NOTSET":
            return g.ints(self.pads[:spatial])
        size = g.op("Shape", x, hint="pool_in", start=2)
        stride = g.ints(self.strides)
        out = g.op("Div", g.op("Add", size, g.ints([s - 1 for s in self.strides])), stride)  # ceil(size / stride)
        last_start = g.op("Mul", g.op("Sub", out, g.ints([1] * spatial)), stride)
        needed = g.op("Sub", g.op("Add", last_start, g.ints(self.extents)), size)
        total = g.op("Max", needed, g.ints([0] * spatial))
        half = g.op("Div", total, g.ints([2] * spatial))
        return half if self.auto_pad == "SAME_UPPER" else g.op("Sub", total, half)


def _general_average_pool_grad(ctx: RuleContext, node: onnx.NodeProto, dy: str, window: _Window) -> str:
    """Any AveragePool's input gradient: auto_pad, ceil_mode, either count_include_pad, 1-D to 3-D
    (torch's dynamo exporter writes LocalResponseNorm as a 3-D AveragePool over a 5-D view).

    Each output is its window's sum divided by a count that depends on the attributes and on
    the window's place (border windows count fewer inputs, or their padding too, or not
    ceil_mode's overhang). Rather than restating those rules, the count is measured: the node
    itself pooling ones gives real inputs / count, and the windows' sum of ones (over the
    input padded with zeros) gives the real inputs; their ratio is 1 / count. The adjoint of the
    windows' sum is a transposed convolution with a kernel of ones, cut to the input.
    """
    x = node.input[0]
    g = ctx.builder
    spatial = len(window.kernel)
    channels = ctx.shapes.dim(x, 1)
    if channels is None:
        raise UnsupportedOperator(node, "the channel count must be known statically")
    if window.dilations != [1] * spatial:  # opset 17's AveragePool has no dilations (see onnx_opset)
        raise UnsupportedOperator(node, "AveragePool with dilations is not supported")
    ones = g.op("ConstantOfShape", ctx.shape_of(x), value=helper.make_tensor("v", 1, [1], [1.0]))
    own_attributes = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    pooled_ones = g.op("AveragePool", ones, hint="avgpool_ones", **own_attributes)
    begin = window.pad_begin(ctx, x)
    # Zeros after the input up to the last window's end: (output - 1) * stride + extent.
    out_size = g.op("Shape", node.output[0], hint="pool_out", start=2)
    last_start = g.op("Mul", g.op("Sub", out_size, g.ints([1] * spatial)), g.ints(window.strides))
    covered = g.op("Add", last_start, g.ints(window.extents))
    in_size = g.op("Shape", x, hint="pool_in", start=2)
    end = g.op("Max", g.op("Sub", g.op("Sub", covered, in_size), begin), g.ints([0] * spatial))
    pads = g.op("Concat", g.ints([0, 0]), begin, g.ints([0, 0]), end, axis=0)
    padded_ones = g.op("Pad", ones, pads, hint="avgpool_padded_ones")
    window_attrs = {"kernel_shape": window.kernel, "strides": window.strides}
    area = float(np.prod(window.kernel))
    real = g.op("Mul", g.op("AveragePool", padded_ones, **window_attrs), g.const(area), hint="avgpool_real")
    inverse_count = g.op("Div", pooled_ones, g.op("Max", real, g.const(1.0)), hint="avgpool_inverse_count")
    scaled = g.op("Mul", dy, inverse_count, hint="avgpool_scale")
    ones_kernel = g.const(np.ones((channels, 1, *window.kernel), np.float32))
    full = g.op("ConvTranspose", scaled, ones_kernel, hint="avgpool_grad", group=channels, **window_attrs)
    return _cut_to_input(ctx, full, x, begin, spatial)


def _cut_to_input(ctx: RuleContext, full: str, x: str, begin: str, spatial: int) -> str:
    """The input's part of a gradient over the padded input's windows: from `begin` on each spatial
    axis, as long as the input, zeros where no window reached."""
    g = ctx.builder
    in_size = g.op("Shape", x, hint="pool_in", start=2)
    reach = g.op("Shape", full, hint="pool_reach", start=2)
    short = g.op("Max", g.op("Sub", g.op("Add", begin, in_size), reach), g.ints([0] * spatial))
    zeros = g.ints([0] * (spatial + 2))
    grown = g.op("Pad", full, g.op("Concat", zeros, g.ints([0, 0]), short, axis=0), hint="pool_grad_pad_end")
    axes = g.ints(list(range(2, spatial + 2)))
    return g.op("Slice", grown, begin, g.op("Add", begin, in_size), axes, hint="pool_grad_crop")


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
