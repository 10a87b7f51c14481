"""Where an ONNX graph's tensors keep their external data, read without the onnx package.

ONNX Runtime opens every file a graph's tensors name in their `external_data`
`location`, relative to the graph's folder, so a graph can make the server read any
file it can reach. The server has no onnx package, but it has the protobuf runtime
(gRPC's): the few ONNX messages that lead to a tensor are declared here by field
number, in a pool of their own, and everything else in a graph is skipped as
unknown fields, by the runtime's C parser.

Tensors are found wherever ONNX puts them: the graph's initializers and sparse
initializers, node attributes (a Constant's value, a list of tensors), the
sub-graphs of control-flow nodes (If, Loop, Scan) and the bodies of model-local
functions.
"""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import descriptor_pb2, descriptor_pool, message, message_factory

_PACKAGE = "dreamstream.onnx_subset"  # not "onnx": the onnx package may share the process
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_INT32 = descriptor_pb2.FieldDescriptorProto.TYPE_INT32
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE

# onnx.proto's field numbers: (message, [(field, number, repeated, type: a message name or _STRING/_INT32)]).
_MESSAGES = (
    ("StringStringEntryProto", [("key", 1, False, _STRING), ("value", 2, False, _STRING)]),
    (
        "TensorProto",
        [
            ("name", 8, False, _STRING),
            ("external_data", 13, True, "StringStringEntryProto"),
            ("data_location", 14, False, _INT32),
        ],
    ),
    ("SparseTensorProto", [("values", 1, False, "TensorProto"), ("indices", 2, False, "TensorProto")]),
    (
        "AttributeProto",
        [
            ("t", 5, False, "TensorProto"),
            ("g", 6, False, "GraphProto"),
            ("tensors", 10, True, "TensorProto"),
            ("graphs", 11, True, "GraphProto"),
            ("sparse_tensor", 22, False, "SparseTensorProto"),
            ("sparse_tensors", 23, True, "SparseTensorProto"),
        ],
    ),
    ("NodeProto", [("attribute", 5, True, "AttributeProto")]),
    (
        "GraphProto",
        [
            ("node", 1, True, "NodeProto"),
            ("initializer", 5, True, "TensorProto"),
            ("sparse_initializer", 15, True, "SparseTensorProto"),
        ],
    ),
    ("FunctionProto", [("node", 7, True, "NodeProto")]),
    ("ModelProto", [("graph", 7, False, "GraphProto"), ("functions", 25, True, "FunctionProto")]),
)
_EXTERNAL = 1  # TensorProto.DataLocation.EXTERNAL


class GraphFileError(ValueError):
    """A file that does not parse as an ONNX model."""


def _model_class() -> type[message.Message]:
    file = descriptor_pb2.FileDescriptorProto(name="dreamstream_onnx_subset.proto", package=_PACKAGE, syntax="proto2")
    for name, fields in _MESSAGES:
        declared = file.message_type.add(name=name)
        for field_name, number, repeated, kind in fields:
            field = declared.field.add(name=field_name, number=number, label=_REPEATED if repeated else _OPTIONAL)
            if isinstance(kind, str):
                field.type, field.type_name = _MESSAGE, f".{_PACKAGE}.{kind}"
            else:
                field.type = kind
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.ModelProto"))


_ModelProto = _model_class()


def external_data(graph_bytes: bytes) -> list[tuple[str, int | None]]:
    """(location as written in the graph, length in bytes or None: to the file's end) of every tensor
    whose data the graph reads from a file."""
    model = _ModelProto()
    try:
        model.ParseFromString(graph_bytes)
    except message.DecodeError as error:
        raise GraphFileError(f"not an ONNX model ({error})") from error
    found = []
    for tensor in _tensors_of_model(model):
        entries = {entry.key: entry.value for entry in tensor.external_data}
        if tensor.data_location == _EXTERNAL or entries:
            length = entries.get("length", "")
            found.append((entries.get("location", ""), int(length) if length.isdigit() else None))
    return found


def external_locations(graph_bytes: bytes) -> set[str]:
    """Every file (as written in the graph) that the graph's tensors read external data from."""
    return {location for location, _ in external_data(graph_bytes)}


def _tensors_of_model(model) -> Iterator:
    yield from _tensors_of_graph(model.graph)
    for function in model.functions:
        yield from _tensors_of_nodes(function.node)


def _tensors_of_graph(graph) -> Iterator:
    yield from graph.initializer
    for sparse in graph.sparse_initializer:
        yield from (sparse.values, sparse.indices)
    yield from _tensors_of_nodes(graph.node)


def _tensors_of_nodes(nodes) -> Iterator:
    for node in nodes:
        for attribute in node.attribute:
            yield attribute.t
            yield from attribute.tensors
            for sparse in (attribute.sparse_tensor, *attribute.sparse_tensors):
                yield from (sparse.values, sparse.indices)
            for subgraph in (attribute.g, *attribute.graphs):
                yield from _tensors_of_graph(subgraph)
