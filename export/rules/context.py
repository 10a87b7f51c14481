"""What every reverse rule works with: the context it emits into, the errors it raises, the rule types.

A rule gets the context, the forward node, the gradient of each of its outputs
(None for outputs nobody differentiates through) and the indices of the inputs
that need a gradient; it returns {input index: gradient tensor name}. A few ops
must also be emitted differently in the forward for their rule (a MaxPool that
returns its indices, an LRN computed from parts the backward reuses): their
preparer returns the nodes the reverse pass walks and the nodes emitted in their place.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper

from dreamstream.export.graph import GraphBuilder

Grads = Sequence[str | None]


class GradientError(ValueError):
    """The reverse pass cannot differentiate this graph."""


class UnsupportedOperator(GradientError):
    def __init__(self, node: onnx.NodeProto, reason: str | None = None) -> None:
        detail = reason or "the reverse pass has no rule for this op"
        super().__init__(f"cannot differentiate node {node.name!r} (op {node.op_type}): {detail}")
        self.node = node


@dataclass
class StaticShapes:
    """What shape inference knows before run time: rank, and the dims that are fixed numbers
    (`shapes`); `symbolic` also keeps the named dims ("N", "H") inference carried through."""

    shapes: dict[str, tuple[int | None, ...]]
    symbolic: dict[str, tuple[int | str | None, ...]] = field(default_factory=dict)

    @classmethod
    def infer(cls, model: onnx.ModelProto) -> StaticShapes:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        shapes: dict[str, tuple[int | None, ...]] = {}
        symbolic: dict[str, tuple[int | str | None, ...]] = {}
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        for value in values:
            tensor_type = value.type.tensor_type
            if not tensor_type.HasField("shape"):
                continue
            dims = tensor_type.shape.dim
            shapes[value.name] = tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in dims)
            symbolic[value.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else dim.dim_param or None for dim in dims
            )
        for init in model.graph.initializer:
            shapes[init.name] = tuple(init.dims)
        return cls(shapes, symbolic)

    def renamed(self, source: str, as_tensor: str) -> StaticShapes:
        """These shapes with `source` also known as `as_tensor` (a renamed graph input)."""
        shapes = {**self.shapes, source: self.shapes[as_tensor]}
        symbolic = {**self.symbolic, source: self.symbolic.get(as_tensor, self.shapes[as_tensor])}
        return StaticShapes(shapes, symbolic)

    def rank(self, tensor: str) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else len(shape)

    def dim(self, tensor: str, axis: int) -> int | None:
        shape = self.shapes.get(tensor)
        return None if shape is None else shape[axis]


@dataclass
class RuleContext:
    """What a rule may use: the builder to emit nodes into, static shapes, constant values."""

    builder: GraphBuilder
    shapes: StaticShapes
    constants: dict[str, np.ndarray]
    _shape_cache: dict[str, str] = field(default_factory=dict)

    def constant(self, tensor: str) -> np.ndarray | None:
        return self.constants.get(tensor)

    def require_constant(self, node: onnx.NodeProto, index: int) -> np.ndarray:
        if index >= len(node.input) or not node.input[index]:
            raise UnsupportedOperator(node, f"input {index} is missing")
        value = self.constants.get(node.input[index])
        if value is None:
            raise UnsupportedOperator(node, f"input {index} ({node.input[index]}) must be a constant")
        return value

    def shape_of(self, tensor: str) -> str:
        """The run-time shape of a tensor (one Shape node per tensor)."""
        if tensor not in self._shape_cache:
            self._shape_cache[tensor] = self.builder.op("Shape", tensor, hint="shape")
        return self._shape_cache[tensor]

    def zeros_like_shape(self, shape: str) -> str:
        return self.builder.op(
            "ConstantOfShape", shape, hint="zeros", value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.0])
        )


Rule = Callable[[RuleContext, onnx.NodeProto, Grads, set[int]], dict[int, str]]
Preparer = Callable[[onnx.NodeProto, GraphBuilder, StaticShapes], tuple[list[onnx.NodeProto], list[onnx.NodeProto]]]


@dataclass(frozen=True)
class OpRule:
    """How the reverse pass treats one op type: its reverse rule, and its forward preparer if it has one."""

    reverse: Rule
    prepare: Preparer | None = None


def attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            value = helper.get_attribute_value(attribute)
            return value.decode() if isinstance(value, bytes) else value
    return default


def only_inputs(node: onnx.NodeProto, wanted: set[int], allowed: set[int]) -> None:
    """Refuse to differentiate inputs a rule does not handle (say, a Conv's weights)."""
    extra = wanted - allowed
    if extra:
        names = ", ".join(node.input[i] for i in sorted(extra))
        raise UnsupportedOperator(node, f"gradients with respect to {names} are not supported")


def spatial_dims(ctx: RuleContext, tensor: str) -> str:
    """int64 [2]: H and W of an NCHW tensor at run time."""
    return ctx.builder.op("Shape", tensor, hint="hw", start=2, end=4)


def unbroadcast(
    ctx: RuleContext, node: onnx.NodeProto, grad: str, target: str, result: str, matrix_dims: int = 0
) -> str:
    """Sum a gradient shaped like `result` over the axes along which `target` was broadcast to it.

    Dims that shape inference leaves symbolic are taken to match (in our graphs they
    are N, H and W, shared by both operands). `matrix_dims` trailing dims are left
    out of the comparison (a MatMul broadcasts only its batch dims).
    """
    target_shape = ctx.shapes.shapes.get(target)
    result_shape = ctx.shapes.shapes.get(result)
    if target_shape is None or result_shape is None:
        raise UnsupportedOperator(node, f"the ranks of {target} and {result} must be known")
    target_shape = target_shape[: len(target_shape) - matrix_dims]
    result_shape = result_shape[: len(result_shape) - matrix_dims]
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


def rank_of(ctx: RuleContext, node: onnx.NodeProto, tensor: str) -> int:
    rank = ctx.shapes.rank(tensor)
    if rank is None:
        raise UnsupportedOperator(node, f"the rank of {tensor} must be known")
    return rank
