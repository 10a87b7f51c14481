"""Reverse-mode differentiation of an ONNX graph, emitted as more standard ONNX ops.

One function walks the graph (`reverse_pass`); each op type has one small rule
in `rules.py` that, given the gradients of a node's outputs, emits the nodes
computing the gradients of its inputs. The one design choice that matters:
rules read the forward node's own inputs and outputs (a Relu's mask comes from
its output, a MaxPool's scatter from the indices it already computed), so the
gradient graph stays about the size of the forward graph and nothing is
computed twice.

Only tensors that depend on the differentiated input are differentiated:
weights, shapes and other constants never get a gradient. An op with no rule is
an `UnsupportedOperator` naming the node, never a silently wrong gradient.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dreamstream.export.graph import GraphBuilder


class GradientError(ValueError):
    """The reverse pass cannot differentiate this graph."""


class UnsupportedOperator(GradientError):
    def __init__(self, node: onnx.NodeProto, reason: str | None = None) -> None:
        detail = reason or "the reverse pass has no rule for this op"
        super().__init__(f"cannot differentiate node {node.name!r} (op {node.op_type}): {detail}")
        self.node = node


@dataclass
class StaticShapes:
    """What shape inference knows before run time: rank, and the dims that are fixed numbers."""

    shapes: dict[str, tuple[int | None, ...]]

    @classmethod
    def infer(cls, model: onnx.ModelProto) -> StaticShapes:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
        shapes: dict[str, tuple[int | None, ...]] = {}
        values = list(inferred.graph.value_info) + list(inferred.graph.input) + list(inferred.graph.output)
        for value in values:
            tensor_type = value.type.tensor_type
            if not tensor_type.HasField("shape"):
                continue
            shapes[value.name] = tuple(
                dim.dim_value if dim.HasField("dim_value") else None for dim in tensor_type.shape.dim
            )
        for init in model.graph.initializer:
            shapes[init.name] = tuple(init.dims)
        return cls(shapes)

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


# A rule gets the context, the forward node, the gradient of each of its outputs
# (None for outputs nobody differentiates through) and the indices of the inputs
# that need a gradient; it returns {input index: gradient tensor name}.
Rule = Callable[[RuleContext, onnx.NodeProto, Sequence[str | None], set[int]], dict[int, str]]
RULES: dict[str, Rule] = {}
# Ops whose forward must be emitted differently for their rule: a preparer returns the
# node the reverse pass walks and the nodes emitted in its place (MaxPool also returns
# its indices; LRN is computed from parts the backward reuses).
Preparer = Callable[[onnx.NodeProto, GraphBuilder, StaticShapes], tuple[onnx.NodeProto, list[onnx.NodeProto]]]
PREPARERS: dict[str, Preparer] = {}


def reverse_rule(*op_types: str) -> Callable[[Rule], Rule]:
    def register(rule: Rule) -> Rule:
        for op_type in op_types:
            RULES[op_type] = rule
        return rule

    return register


def constant_values(model_or_graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, np.ndarray]:
    graph = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def depends_on(nodes: Sequence[onnx.NodeProto], source: str) -> set[str]:
    """Every tensor whose value depends on `source` (the forward closure)."""
    active = {source}
    for node in nodes:
        if any(name in active for name in node.input):
            active.update(out for out in node.output if out)
    return active


def prepare_forward(
    nodes: Sequence[onnx.NodeProto], builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The forward as the reverse pass walks it, and as it is emitted (see PREPARERS)."""
    walked: list[onnx.NodeProto] = []
    emitted: list[onnx.NodeProto] = []
    for node in nodes:
        if node.op_type in PREPARERS:
            walk, emit = PREPARERS[node.op_type](node, builder, shapes)
            walked.append(walk)
            emitted.extend(emit)
        else:
            walked.append(node)
            emitted.append(node)
    return walked, emitted


def reverse_pass(
    nodes: Sequence[onnx.NodeProto],
    wrt: str,
    seeds: dict[str, str],
    context: RuleContext,
) -> str:
    """Emit nodes computing d(sum of seeded outputs . seeds)/d(wrt); returns the gradient's name.

    `nodes` must be topologically sorted: the walked nodes of `prepare_forward`.
    `seeds` maps forward tensors to the tensors holding their incoming gradients.
    """
    active = depends_on(nodes, wrt)
    pending: dict[str, list[str]] = {tensor: [grad] for tensor, grad in seeds.items()}

    def total(tensor: str) -> str | None:
        parts = pending.get(tensor)
        if not parts:
            return None
        if len(parts) > 1:
            pending[tensor] = [context.builder.op("Sum", *parts, hint="grad_sum")]
        return pending[tensor][0]

    for node in reversed(nodes):
        output_grads = [total(out) if out else None for out in node.output]
        if all(grad is None for grad in output_grads):
            continue
        wanted = {i for i, name in enumerate(node.input) if name and name in active}
        if not wanted:
            continue
        rule = RULES.get(node.op_type)
        if rule is None:
            raise UnsupportedOperator(node)
        for index, grad in rule(context, node, output_grads, wanted).items():
            pending.setdefault(node.input[index], []).append(grad)

    result = total(wrt)
    if result is None:
        raise GradientError(f"the seeded tensors do not depend on {wrt!r}")
    return result
