"""Resize (and Upsample, which the opset conversion turns into Resize) in any mode.

Every mode ONNX defines resizes each axis on its own: along H the output is
M_h^T x for a [H_in, H_out] matrix M_h that depends only on the sizes and the
attributes. The gradient is then M_h dy (and likewise along W). M_h is not
derived by hand for each mode: it is the forward Resize itself, run by the
graph on an identity matrix laid out along H, so nearest (any rounding), linear
and cubic (any coordinate mode) are all exact, at any run-time size.
"""

from __future__ import annotations

import numpy as np
import onnx

from dreamstream.export.rules.context import Grads, RuleContext, UnsupportedOperator, attr, only_inputs, rank_of

_RESIZE_ATTRIBUTES = (
    "mode",
    "coordinate_transformation_mode",
    "nearest_mode",
    "cubic_coeff_a",
    "exclude_outside",
    "extrapolation_value",
)


def resize(ctx: RuleContext, node: onnx.NodeProto, dy: Grads, wanted: set[int]) -> dict[int, str]:
    only_inputs(node, wanted, {0})
    if rank_of(ctx, node, node.input[0]) != 4:
        raise UnsupportedOperator(node, "only the resizing of NCHW tensors is supported")
    if attr(node, "coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        raise UnsupportedOperator(node, "tf_crop_and_resize is not supported")
    scales = ctx.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    if scales is not None and scales.size == 0:
        scales = None
    if scales is not None and (scales[:2] != 1).any():
        raise UnsupportedOperator(node, "resizing the batch or channel axis is not supported")
    g = ctx.builder
    grad = g.op("MatMul", _axis_matrix(ctx, node, scales, 2), dy[0], hint="resize_grad_h")
    across = g.op("Transpose", _axis_matrix(ctx, node, scales, 3), perm=[1, 0])
    return {0: g.op("MatMul", grad, across, hint="resize_grad")}


def _axis_matrix(ctx: RuleContext, node: onnx.NodeProto, scales: np.ndarray | None, axis: int) -> str:
    """[size_in, size_out]: row i is the forward resize, along `axis`, of the i-th unit vector."""
    g = ctx.builder
    x, y = node.input[0], node.output[0]
    size_in = g.op("Shape", x, hint="resize_in", start=axis, end=axis + 1)
    square = ctx.zeros_like_shape(g.op("Concat", size_in, size_in, axis=0))
    one = g.ints([1])
    # The unit vectors as a batch of size_in images of one channel, laid out along `axis`.
    layout = [size_in, one, size_in, one] if axis == 2 else [size_in, one, one, size_in]
    units = g.op("Reshape", g.op("EyeLike", square), g.op("Concat", *layout, axis=0), hint="resize_units")
    attributes = {name: attr(node, name) for name in _RESIZE_ATTRIBUTES}
    if scales is not None:
        unit_scales = np.ones(4, np.float32)
        unit_scales[axis] = scales[axis]
        resized = g.op("Resize", units, "", g.const(unit_scales), hint="resize_matrix", **attributes)
    else:
        size_out = g.op("Shape", y, start=axis, end=axis + 1)
        sizes = [size_in, one, size_out, one] if axis == 2 else [size_in, one, one, size_out]
        resized = g.op("Resize", units, "", "", g.op("Concat", *sizes, axis=0), hint="resize_matrix", **attributes)
    size_out = g.op("Shape", y, start=axis, end=axis + 1)
    return g.op("Reshape", resized, g.op("Concat", size_in, size_out, axis=0), hint="resize_axis_matrix")
