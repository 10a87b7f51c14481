"""Reverse-mode differentiation of an ONNX graph, emitted as more standard ONNX ops.

One function walks the graph (`reverse_pass`); each op type has one small rule
in the table of `rules/` (`RULES`) that, given the gradients of a node's outputs, emits the nodes
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

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import numpy_helper

from dreamstream.export.graph import GraphBuilder
from dreamstream.export.rules import RULES
from dreamstream.export.rules.context import GradientError, RuleContext, StaticShapes, UnsupportedOperator

__all__ = [
    "GradientError",
    "RuleContext",
    "StaticShapes",
    "UnsupportedOperator",
    "constant_values",
    "declare_gradient_shapes",
    "depends_on",
    "prepare_forward",
    "reverse_pass",
]


def constant_values(model_or_graph: onnx.ModelProto | onnx.GraphProto) -> dict[str, np.ndarray]:
    graph = model_or_graph.graph if isinstance(model_or_graph, onnx.ModelProto) else model_or_graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


# Ops whose outputs carry no gradient: shapes, comparisons, indices, roundings (piecewise
# constant in their input). A shape sub-graph that starts at a Shape of an activation
# (a flatten's batch size, a channel shuffle's reshape target) is computed at run time
# and differentiated as the constant it is.
NOT_DIFFERENTIABLE = frozenset(
    {
        "Shape", "Size", "Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual", "Not", "And", "Or", "Xor",
        "ArgMax", "ArgMin", "NonZero", "IsNaN", "IsInf", "Sign", "Floor", "Ceil", "Round",
    }
)  # fmt: skip


def depends_on(nodes: Sequence[onnx.NodeProto], source: str) -> set[str]:
    """Every tensor whose value depends differentiably on `source` (the forward closure)."""
    active = {source}
    for node in nodes:
        if node.op_type not in NOT_DIFFERENTIABLE and any(name in active for name in node.input):
            active.update(out for out in node.output if out)
    return active


def prepare_forward(
    nodes: Sequence[onnx.NodeProto], builder: GraphBuilder, shapes: StaticShapes
) -> tuple[list[onnx.NodeProto], list[onnx.NodeProto]]:
    """The forward as the reverse pass walks it, and as it is emitted (see OpRule.prepare)."""
    walked: list[onnx.NodeProto] = []
    emitted: list[onnx.NodeProto] = []
    for node in nodes:
        op_rule = RULES.get(node.op_type)
        if op_rule is not None and op_rule.prepare is not None:
            walk, emit = op_rule.prepare(node, builder, shapes)
            walked.extend(walk)
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
    gradients: dict[str, str] | None = None,
) -> str:
    """Emit nodes computing d(sum of seeded outputs . seeds)/d(wrt); returns the gradient's name.

    `nodes` must be topologically sorted: the walked nodes of `prepare_forward`.
    `seeds` maps forward tensors to the tensors holding their incoming gradients.
    `gradients`, when given, receives each differentiated forward tensor -> its whole gradient.
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
        if gradients is not None:
            gradients.update((out, grad) for out, grad in zip(node.output, output_grads, strict=True) if grad)
        if all(grad is None for grad in output_grads):
            continue
        wanted = {i for i, name in enumerate(node.input) if name and name in active}
        if not wanted:
            continue
        op_rule = RULES.get(node.op_type)
        if op_rule is None:
            raise UnsupportedOperator(node)
        for index, grad in op_rule.reverse(context, node, output_grads, wanted).items():
            pending.setdefault(node.input[index], []).append(grad)

    result = total(wrt)
    if result is None:
        raise GradientError(f"the seeded tensors do not depend on {wrt!r}")
    if gradients is not None:
        gradients[wrt] = result
    return result


def declare_gradient_shapes(builder: GraphBuilder, shapes: StaticShapes, gradients: dict[str, str]) -> None:
    """Declare that each gradient has its forward tensor's shape, on both, with the dims as
    ONNX shape inference gave them (it names unknown ones "unk__N"; a dim it left without
    a name is named f"{tensor}:{axis}"): ONNX Runtime's own inference names none.

    Always true (a gradient has the shape of what it differentiates), and what ONNX Runtime
    needs to keep the Mul of a gradient by a mask of the forward tensor in its blocked
    NCHWc layout: it keeps a Mul there only when it can prove both shapes equal, and the
    dims that a convolution or a pooling makes of a picture of any size are unknown to it.
    """
    for tensor, grad in gradients.items():
        dims = shapes.symbolic.get(tensor)
        if dims is None:
            continue
        named = [dim if dim is not None else f"{tensor}:{axis}" for axis, dim in enumerate(dims)]
        builder.declare(tensor, named)
        builder.declare(grad, named)
