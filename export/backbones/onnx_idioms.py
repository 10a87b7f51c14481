"""Converter idioms written as the plain ops they stand for, so that a network keeps every size
and every node has a reverse rule.

- torch's dynamo exporter writes LocalResponseNorm as the squares reshaped to a 5-D
  view [N, 1, C, H, W], a Pad and a 3-D AveragePool along the channels. The Reshape's
  target is the traced size, so the whole network would run at that size only. A
  Reshape whose only change is to insert axes of size 1 is an Unsqueeze: written as
  one, it takes any size (`size_free`).
- torch's TorchScript exporter writes the same LocalResponseNorm's `squeeze(1)` as an
  If on the size of that axis, which is known before run time: such an If is the
  branch it always takes (`decided_ifs`).
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


def decided_ifs(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every If whose condition is a function of shapes alone, and the same at two
    picture sizes, replaced by the branch it takes (first to last: a later If's condition may
    read an earlier one's result)."""
    decided: set[str] = set()
    while True:
        pending = [node for node in model.graph.node if node.op_type == "If" and node.name not in decided]
        if not pending:
            return model
        node = pending[0]
        decided.add(node.name)
        condition = _condition_value(model, node)
        if condition is not None:
            model = _inlined(model, node, condition)


def _condition_value(model: onnx.ModelProto, if_node: onnx.NodeProto) -> bool | None:
    """The If's condition when it depends on shapes only and is the same at two picture sizes."""
    graph = model.graph
    position = list(graph.node).index(if_node)
    shape_only = {init.name for init in graph.initializer}
    for node in graph.node[:position]:
        if node.op_type in ("Shape", "Size", "Constant") or all(name in shape_only for name in node.input if name):
            shape_only.update(node.output)
    if if_node.input[0] not in shape_only:
        return None
    prefix = onnx.ModelProto()
    prefix.CopyFrom(model)
    del prefix.graph.node[position:]
    del prefix.graph.output[:]
    prefix.graph.output.append(helper.make_tensor_value_info(if_node.input[0], onnx.TensorProto.BOOL, None))
    values = set()
    for side in (224, 256):  # a network with a fixed input size runs at that size (see _run_prefix)
        value = _run_prefix(prefix, side)
        if value is None or value.size != 1:
            return None
        values.add(bool(value.item()))
    return values.pop() if len(values) == 1 else None


def _run_prefix(prefix: onnx.ModelProto, side: int) -> np.ndarray | None:
    """The prefix's one output for a grey picture of `side` px (NCHW or NHWC, as its input is)."""
    import onnxruntime as ort

    initializers = {init.name for init in prefix.graph.initializer}
    image = next(value for value in prefix.graph.input if value.name not in initializers)
    dims = [dim.dim_value if dim.HasField("dim_value") else None for dim in image.type.tensor_type.shape.dim]
    channels_last = len(dims) == 4 and dims[3] == 3 and dims[1] != 3
    shape = [1, side, side, 3] if channels_last else [1, 3, side, side]
    shape = [fixed or default for fixed, default in zip(dims, shape, strict=False)]  # the declared sizes win
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(prefix.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return session.run(None, {image.name: np.full(shape, 0.5, np.float32)})[0]
    except Exception:  # ORT's own error types: a prefix that does not run at this size decides nothing
        return None


def _inlined(model: onnx.ModelProto, if_node: onnx.NodeProto, condition: bool) -> onnx.ModelProto:
    branch = next(a.g for a in if_node.attribute if a.name == ("then_branch" if condition else "else_branch"))
    nodes: list[onnx.NodeProto] = []
    for node in model.graph.node:
        if node is not if_node:
            nodes.append(node)
            continue
        nodes.extend(branch.node)
        nodes += [
            helper.make_node("Identity", [result.name], [output], name=f"{if_node.name}/{index}")
            for index, (result, output) in enumerate(zip(branch.output, if_node.output, strict=True))
        ]
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy
