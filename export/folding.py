"""Constant folding: nodes whose inputs are all constants are computed once, at export.

Converters write many small computations on constants: a Caffe2 batch norm's
scale unsqueezed to [C,1,1], a float16 weight cast to float32, a Constant node
instead of an initializer, a reshape target assembled from pieces. Folding them
makes their results plain constants, so the rules that need a constant (a
Conv's weight) find one, and the forward holds only what depends on the image.
Folded float tensors as large as weights are named with DERIVED_PREFIX, so the
export stores them once in the weights file instead of once per graph.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from dreamstream.export.graph import DERIVED_PREFIX, EXTERNAL_MIN_ELEMENTS, OPSET

# Folding these would freeze one draw of a random op, or needs a subgraph's context.
NEVER_FOLDED = frozenset(
    {
        "RandomNormal",
        "RandomUniform",
        "RandomNormalLike",
        "RandomUniformLike",
        "Multinomial",
        "Bernoulli",
        "If",
        "Loop",
        "Scan",
    }
)


def fold_constants(
    nodes: Sequence[onnx.NodeProto], constants: Mapping[str, np.ndarray]
) -> tuple[list[onnx.NodeProto], dict[str, np.ndarray]]:
    """The nodes left to run, and the constants with every folded result added."""
    values = dict(constants)
    renamed: dict[str, str] = {}
    kept: list[onnx.NodeProto] = []
    for node in nodes:
        node = _with_inputs_renamed(node, renamed)
        results = _evaluate(node, values) if _foldable(node, values) else None
        if results is None:
            kept.append(node)
            continue
        for name, value in zip(node.output, results, strict=False):
            if not name:
                continue
            if value.dtype == np.float32 and value.size >= EXTERNAL_MIN_ELEMENTS:
                renamed[name] = f"{DERIVED_PREFIX}folded/{name}"
                name = renamed[name]
            values[name] = value
    return kept, values


def _foldable(node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> bool:
    return (
        node.op_type not in NEVER_FOLDED
        and node.domain in ("", "ai.onnx")
        and all(not name or name in values for name in node.input)
    )


def _evaluate(node: onnx.NodeProto, values: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """The node's outputs computed by ONNX's reference implementation; None where it cannot."""
    if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
        return [numpy_helper.to_array(node.attribute[0].t)]
    feeds = {name: values[name] for name in node.input if name}
    graph = helper.make_graph(
        [node],
        "fold",
        [
            helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
            for name, value in feeds.items()
        ],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None) for name in node.output if name],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    try:
        outputs = ReferenceEvaluator(model).run(None, feeds)
    except Exception:  # an op the reference cannot run stays in the graph, computed at run time
        return None
    results = iter(np.asarray(value) for value in outputs)
    return [next(results) if name else np.zeros(0) for name in node.output]


def _with_inputs_renamed(node: onnx.NodeProto, renamed: Mapping[str, str]) -> onnx.NodeProto:
    if not any(name in renamed for name in node.input):
        return node
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    for index, name in enumerate(copy.input):
        copy.input[index] = renamed.get(name, name)
    return copy
