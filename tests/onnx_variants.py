"""ONNX files rewritten the way other converters write the same network.

Each rewrite keeps the function the graph computes and changes only how it is
written: batch norm as Unsqueeze/Mul/Add (Caffe2), Constant nodes instead of
initializers, Reshape instead of Flatten, MatMul+Add instead of Gemm, Dropout
left in the graph, convolution padding as an explicit Pad node; and what onnxslim
makes of a file. A network and
its rewrites must export alike and have the same gradient.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper


def _opset(model: onnx.ModelProto) -> int:
    return next(imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx"))


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


class _Rewriter:
    """Replaces nodes one by one; new tensors get names no converter would clash with."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = onnx.ModelProto()
        self.model.CopyFrom(model)
        self.opset = _opset(model)
        self.values = {init.name: numpy_helper.to_array(init) for init in self.model.graph.initializer}
        self.count = 0

    def name(self, hint: str) -> str:
        self.count += 1
        return f"variant/{hint}_{self.count}"

    def constant_node(self, array: np.ndarray, hint: str) -> tuple[str, onnx.NodeProto]:
        name = self.name(hint)
        return name, helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array, name))

    def unsqueeze(self, tensor: str, axes: list[int]) -> tuple[str, list[onnx.NodeProto]]:
        out = self.name("unsqueezed")
        if self.opset < 13:
            return out, [helper.make_node("Unsqueeze", [tensor], [out], axes=axes)]
        axes_name, axes_node = self.constant_node(np.array(axes, np.int64), "axes")
        return out, [axes_node, helper.make_node("Unsqueeze", [tensor, axes_name], [out])]

    def rewrite(self, replace: Callable[[_Rewriter, onnx.NodeProto], list[onnx.NodeProto] | None]) -> onnx.ModelProto:
        nodes = []
        for node in self.model.graph.node:
            replacement = replace(self, node)
            nodes.extend([node] if replacement is None else replacement)
        del self.model.graph.node[:]
        self.model.graph.node.extend(nodes)
        used = {name for node in nodes for name in node.input}
        kept = [init for init in self.model.graph.initializer if init.name in used]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(kept)
        onnx.checker.check_model(self.model)
        return self.model


def batch_norm_as_mul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    """Caffe2's SpatialBN as its ONNX converter writes it: x * unsqueeze(a) + unsqueeze(b), from Constant nodes."""

    def replace(r: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.op_type != "BatchNormalization":
            return None
        scale, bias, mean, var = (r.values[name].astype(np.float64) for name in node.input[1:5])
        factor = scale / np.sqrt(var + _attr(node, "epsilon", 1e-5))
        shift = bias - mean * factor
        factor_name, factor_node = r.constant_node(factor.astype(np.float32), "bn_scale")
        shift_name, shift_node = r.constant_node(shift.astype(np.float32), "bn_shift")
        factor_3d, unsqueeze_factor = r.unsqueeze(factor_name, [1, 2])
        shift_3d, unsqueeze_shift = r.unsqueeze(shift_name, [1, 2])
        scaled = r.name("bn_scaled")
        return [
            factor_node,
            shift_node,
            *unsqueeze_factor,
            *unsqueeze_shift,
            helper.make_node("Mul", [node.input[0], factor_3d], [scaled]),
            helper.make_node("Add", [scaled, shift_3d], [node.output[0]]),
        ]

    return _Rewriter(model).rewrite(replace)


def initializers_as_constants(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every initializer written as a Constant node instead (and listed nowhere else)."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants = [helper.make_node("Constant", [], [init.name], value=init) for init in copy.graph.initializer]
    names = {init.name for init in copy.graph.initializer}
    inputs = [value for value in copy.graph.input if value.name not in names]
    nodes = constants + list(copy.graph.node)
    for field, values in (("initializer", []), ("input", inputs), ("node", nodes)):
        container = getattr(copy.graph, field)
        del container[:]
        container.extend(values)
    onnx.checker.check_model(copy)
    return copy


def flatten_as_reshape(model: onnx.ModelProto) -> onnx.ModelProto:
    def replace(r: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.op_type != "Flatten" or _attr(node, "axis", 1) != 1:
            return None
        shape_name, shape_node = r.constant_node(np.array([0, -1], np.int64), "flat_shape")
        return [shape_node, helper.make_node("Reshape", [node.input[0], shape_name], list(node.output))]

    return _Rewriter(model).rewrite(replace)


def gemm_as_matmul_add(model: onnx.ModelProto) -> onnx.ModelProto:
    def replace(r: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.op_type != "Gemm" or _attr(node, "transA", 0) or node.input[1] not in r.values:
            return None
        weight = r.values[node.input[1]]
        weight = weight.T if _attr(node, "transB", 0) else weight
        weight = weight * _attr(node, "alpha", 1.0)
        weight_name, weight_node = r.constant_node(np.ascontiguousarray(weight, np.float32), "matmul_w")
        if len(node.input) < 3:
            return [weight_node, helper.make_node("MatMul", [node.input[0], weight_name], list(node.output))]
        product = r.name("matmul")
        bias = r.values[node.input[2]] * _attr(node, "beta", 1.0)
        bias_name, bias_node = r.constant_node(bias.astype(np.float32), "matmul_b")
        return [
            weight_node,
            bias_node,
            helper.make_node("MatMul", [node.input[0], weight_name], [product]),
            helper.make_node("Add", [product, bias_name], list(node.output)),
        ]

    return _Rewriter(model).rewrite(replace)


def with_dropout(model: onnx.ModelProto) -> onnx.ModelProto:
    """A Dropout after every Relu, as left in by converters of training graphs (ratio as the opset has it)."""

    def replace(r: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        if node.op_type != "Relu":
            return None
        activated = r.name("before_dropout")
        attrs = {"ratio": 0.5} if r.opset < 12 else {}
        return [
            helper.make_node("Relu", list(node.input), [activated]),
            helper.make_node("Dropout", [activated], list(node.output), **attrs),
        ]

    return _Rewriter(model).rewrite(replace)


def explicit_pads(model: onnx.ModelProto) -> onnx.ModelProto:
    """Convolution padding as a Pad node before an unpadded Conv (TensorFlow converters' way)."""

    def replace(r: _Rewriter, node: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        pads = _attr(node, "pads")
        if node.op_type != "Conv" or not pads or not any(pads):
            return None
        padded = r.name("padded")
        conv = onnx.NodeProto()
        conv.CopyFrom(node)
        conv.input[0] = padded
        for attribute in conv.attribute:
            if attribute.name == "pads":
                del attribute.ints[:]
                attribute.ints.extend([0] * len(pads))
        half = len(pads) // 2
        full = [0, 0, *pads[:half], 0, 0, *pads[half:]]
        if r.opset < 11:
            return [helper.make_node("Pad", [node.input[0]], [padded], pads=full), conv]
        pads_name, pads_node = r.constant_node(np.array(full, np.int64), "pads")
        return [pads_node, helper.make_node("Pad", [node.input[0], pads_name], [padded]), conv]

    return _Rewriter(model).rewrite(replace)


def onnxslim_simplified(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model as onnxslim's default simplification writes it (constant folding, fused and
    eliminated nodes, shapes worked out), what many users run before they ship a file."""
    import onnxslim

    return onnxslim.slim(model)


VARIANTS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "bn_as_mul_add": batch_norm_as_mul_add,
    "constants_as_nodes": initializers_as_constants,
    "flatten_as_reshape": flatten_as_reshape,
    "gemm_as_matmul_add": gemm_as_matmul_add,
    "old_dropout": with_dropout,
    "explicit_pads": explicit_pads,
    "onnxslim": onnxslim_simplified,
}
