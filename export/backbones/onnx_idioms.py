"""Converter idioms that freeze a network's size, written as the size-free ops they stand for.

torch's dynamo exporter writes LocalResponseNorm as the squares reshaped to a 5-D
view [N, 1, C, H, W], a Pad and a 3-D AveragePool along the channels. The Reshape's
target is the traced size, so the whole network would run at that size only. A
Reshape whose only change is to insert axes of size 1 is an Unsqueeze: written as
one, it takes any size, and the network dreams at any size as it was written to.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def size_free(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every Reshape that only inserts unit axes written as an Unsqueeze."""
    inferred = onnx.shape_inference.infer_shapes(model).graph
    shapes = {
        value.name: _static_dims(value)
        for value in [*inferred.value_info, *inferred.input, *inferred.output]
        if value.type.tensor_type.HasField("shape")
    }
    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    rewritten = []
    changed = False
    for node in model.graph.node:
        axes = _inserted_unit_axes(node, shapes, constants)
        if axes is None:
            rewritten.append(node)
            continue
        changed = True
        axes_name = f"{node.output[0]}/unsqueeze_axes"
        rewritten += [
            helper.make_node("Constant", [], [axes_name], value=numpy_helper.from_array(axes, axes_name)),
            helper.make_node("Unsqueeze", [node.input[0], axes_name], list(node.output), name=node.name),
        ]
    if not changed:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(rewritten)
    return copy


def _static_dims(value: onnx.ValueInfoProto) -> tuple[int, ...] | None:
    dims = value.type.tensor_type.shape.dim
    if not all(dim.HasField("dim_value") for dim in dims):
        return None
    return tuple(dim.dim_value for dim in dims)


def _inserted_unit_axes(
    node: onnx.NodeProto, shapes: dict[str, tuple[int, ...] | None], constants: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The axes a Reshape inserts (int64), when inserting unit axes is all it does."""
    if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in constants:
        return None
    before, after = shapes.get(node.input[0]), shapes.get(node.output[0])
    if before is None or after is None or len(after) <= len(before):
        return None
    inserted, position = [], 0
    for axis, dim in enumerate(after):
        if position < len(before) and dim == before[position]:
            position += 1
        elif dim == 1:
            inserted.append(axis)
        else:
            return None
    if position != len(before):
        return None
    return np.array(inserted, np.int64)
