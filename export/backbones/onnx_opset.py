"""A user's ONNX file brought to the opset our graphs are written in (graph.OPSET).

ONNX's version converter does most of it, both ways. It has no older form of
ops that are newer than OPSET (Gelu since 20, Mish since 18), so those are first
written as the standard ops they are defined by; where it has no way down for
an op that only gained types (ConstantOfShape, Cast), the graph is relabelled
by hand, rewriting the few ops whose meaning changed after OPSET.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import onnx
from onnx import helper, numpy_helper, version_converter

from dreamstream.export.graph import OPSET


class OpsetError(ValueError):
    """The file's ops cannot be expressed at our opset."""


_STANDARD_DOMAINS = ("", "ai.onnx")


def to_opset(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    model = _without_unused_domains(model, label)
    version = next(imp.version for imp in model.opset_import if imp.domain in _STANDARD_DOMAINS)
    if version == OPSET:
        return model
    if version > OPSET:
        model = _without_newer_ops(model)
    try:
        converted = version_converter.convert_version(model, OPSET)
    except Exception as error:  # the converter raises plain RuntimeErrors
        if version < OPSET:
            raise OpsetError(f"{label}: cannot convert opset {version} to {OPSET}: {error}") from error
        failure = error
    else:
        # Going down, the converter keeps attributes newer than OPSET (ReduceMean's noop_with_empty_axes).
        try:
            for node in converted.graph.node:
                _without_newer_attributes(node)
        except OpsetError as error:
            raise OpsetError(f"{label}: cannot convert opset {version} to {OPSET}: {error}") from error
        return converted
    # The converter has no way down for some ops that only gained types after OPSET
    # (ConstantOfShape 20, Cast 21); write the few that changed meaning in their older form.
    try:
        return _relabelled_down(model)
    except OpsetError as error:
        raise OpsetError(f"{label}: cannot convert opset {version} to {OPSET}: {error}") from failure


def _without_unused_domains(model: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """The model without the opset imports no node uses; a node of another domain is refused by name.

    Converters declare domains they may need (tf2onnx imports `ai.onnx.ml` in every model
    it writes), so an import alone says nothing: what counts is the domain of each node.
    """
    for node in model.graph.node:
        if node.domain not in _STANDARD_DOMAINS:
            raise OpsetError(
                f"{label}: node {node.name!r} (op {node.op_type}) is in the op domain {node.domain!r}, which the "
                "reverse pass cannot differentiate (standard ONNX ops only): export the network without it, "
                "or cut the file before that node"
            )
        if not onnx.defs.has(node.op_type):
            # What a converter leaves when it could not convert a layer (tf2onnx: StatefulPartitionedCall).
            raise OpsetError(
                f"{label}: node {node.name!r} (op {node.op_type}) is no ONNX op: its converter left it "
                "unconverted; convert the network again (a newer converter or opset), or without that layer"
            )
    if all(imp.domain in _STANDARD_DOMAINS for imp in model.opset_import):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [imp for imp in copy.opset_import if imp.domain in _STANDARD_DOMAINS]
    del copy.opset_import[:]
    copy.opset_import.extend(kept)
    return copy


def _gelu(node: onnx.NodeProto, name: Callable[[str], str]) -> list[onnx.NodeProto]:
    x, y = node.input[0], node.output[0]
    approximate = next((a.s.decode() for a in node.attribute if a.name == "approximate"), "none")
    nodes = [_scalar(name("half"), 0.5), _scalar(name("one"), 1.0)]
    if approximate == "tanh":  # 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
        nodes += [
            _scalar(name("c"), 0.044715),
            _scalar(name("k"), math.sqrt(2.0 / math.pi)),
            helper.make_node("Mul", [x, x], [name("x2")]),
            helper.make_node("Mul", [name("x2"), name("c")], [name("cx2")]),
            helper.make_node("Add", [name("cx2"), name("one")], [name("poly")]),
            helper.make_node("Mul", [x, name("poly")], [name("inner")]),
            helper.make_node("Mul", [name("inner"), name("k")], [name("arg")]),
            helper.make_node("Tanh", [name("arg")], [name("curve")]),
        ]
    else:  # 0.5 x (1 + erf(x / sqrt 2))
        nodes += [
            _scalar(name("r"), 1.0 / math.sqrt(2.0)),
            helper.make_node("Mul", [x, name("r")], [name("arg")]),
            helper.make_node("Erf", [name("arg")], [name("curve")]),
        ]
    return nodes + [
        helper.make_node("Add", [name("curve"), name("one")], [name("plus")]),
        helper.make_node("Mul", [x, name("plus")], [name("scaled")]),
        helper.make_node("Mul", [name("scaled"), name("half")], [y]),
    ]


def _mish(node: onnx.NodeProto, name: Callable[[str], str]) -> list[onnx.NodeProto]:
    x, y = node.input[0], node.output[0]  # x tanh(softplus(x))
    return [
        helper.make_node("Softplus", [x], [name("softplus")]),
        helper.make_node("Tanh", [name("softplus")], [name("curve")]),
        helper.make_node("Mul", [x, name("curve")], [y]),
    ]


_DECOMPOSITIONS = {"Gelu": _gelu, "Mish": _mish}


def _without_newer_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(model.graph.node):
        decompose = _DECOMPOSITIONS.get(node.op_type)
        if decompose is None:
            nodes.append(node)
            continue
        stem = f"{node.name or node.output[0]}/{node.op_type.lower()}{index}"
        nodes.extend(decompose(node, lambda part, stem=stem: f"{stem}/{part}"))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _scalar(name: str, value: float) -> onnx.NodeProto:
    return helper.make_node("Constant", [], [name], value=helper.make_tensor(name, onnx.TensorProto.FLOAT, [], [value]))


# Reductions took their axes as an attribute up to opset 17 and as an input since 18.
_REDUCTIONS_WITH_AXES_INPUT = frozenset(
    {"ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
     "ReduceLogSumExp", "ReduceSumSquare"}
)  # fmt: skip
# Attributes added after OPSET, with the value that keeps the meaning an op had at OPSET
# (None: a list of ones). An op using any other value has no older form.
_NEWER_DEFAULTS = {
    "saturate": 1,  # Cast
    "antialias": 0,  # Resize
    "keep_aspect_ratio_policy": b"stretch",  # Resize
    "dilations": None,  # AveragePool
    "noop_with_empty_axes": 0,  # the reductions that took axes as an attribute
}


def _relabelled_down(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    constants = {init.name: numpy_helper.to_array(init) for init in copy.graph.initializer}
    for node in copy.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    shapes = _static_shapes(copy)
    for node in copy.graph.node:
        copy.graph.initializer.extend(_older_form(node, constants, shapes))
    for imp in copy.opset_import:
        if imp.domain in ("", "ai.onnx"):
            imp.version = OPSET
    try:
        onnx.checker.check_model(copy)
    except onnx.checker.ValidationError as error:
        raise OpsetError(str(error).splitlines()[0]) from error
    return copy


def _older_form(node: onnx.NodeProto, constants: dict, shapes: dict[str, list[int | None]]) -> list[onnx.TensorProto]:
    """Rewrite `node` in place as opset OPSET writes it, returning the constants it now needs;
    OpsetError where it has no such form."""
    added = []
    if node.op_type in _REDUCTIONS_WITH_AXES_INPUT and len(node.input) > 1:
        if node.input[1]:
            if node.input[1] not in constants:
                raise OpsetError(f"node {node.name!r} ({node.op_type}) reduces over axes computed at run time")
            node.attribute.append(helper.make_attribute("axes", [int(a) for a in constants[node.input[1]]]))
        del node.input[1:]
    if node.op_type == "Split" and any(a.name == "num_outputs" for a in node.attribute):
        added.append(_split_sizes_as_input(node, shapes))
    _without_newer_attributes(node)
    return added


def _without_newer_attributes(node: onnx.NodeProto) -> None:
    """Drop the attributes OPSET's form of the op lacks, where their value keeps the old meaning."""
    try:
        known = onnx.defs.get_schema(node.op_type, OPSET, node.domain).attributes
    except onnx.defs.SchemaError:
        return  # an op newer than OPSET: the checker names it
    for attribute in [a for a in node.attribute if a.name not in known]:
        if attribute.name not in _NEWER_DEFAULTS:
            raise OpsetError(f"node {node.name!r} ({node.op_type}) uses {attribute.name}, new after opset {OPSET}")
        value, default = helper.get_attribute_value(attribute), _NEWER_DEFAULTS[attribute.name]
        if value != default and not (default is None and all(v == 1 for v in value)):
            raise OpsetError(
                f"node {node.name!r} ({node.op_type}) uses {attribute.name}={value!r}, new after opset {OPSET}: "
                f"export the network at opset {OPSET} or without it"
            )
        node.attribute.remove(attribute)


def _split_sizes_as_input(node: onnx.NodeProto, shapes: dict[str, list[int | None]]) -> onnx.TensorProto:
    """Split's num_outputs (opset 18) as the explicit sizes opset 17 takes: equal parts, the last smaller."""
    count = next(a.i for a in node.attribute if a.name == "num_outputs")
    axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
    shape = shapes.get(node.input[0])
    size = shape[axis] if shape is not None else None
    if size is None:
        raise OpsetError(f"node {node.name!r} (Split) splits an axis whose size is not known before run time")
    part = -(-size // count)
    sizes = [min(part, size - index * part) for index in range(count)]
    name = f"{node.output[0]}/split_sizes"
    node.attribute.remove(next(a for a in node.attribute if a.name == "num_outputs"))
    del node.input[1:]
    node.input.append(name)
    return numpy_helper.from_array(np.array(sizes, np.int64), name)


def _static_shapes(model: onnx.ModelProto) -> dict[str, list[int | None]]:
    inferred = onnx.shape_inference.infer_shapes(model)
    shapes = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            dims = value.type.tensor_type.shape.dim
            shapes[value.name] = [dim.dim_value if dim.HasField("dim_value") else None for dim in dims]
    return shapes
