"""A small builder for ONNX graphs, shared by the backbone recipes and the reverse pass.

Everything the export tool emits goes through `GraphBuilder.op`, so every node
gets a unique, readable name and every constant lands in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

OPSET = 17

# Constants smaller than this stay inside the graph; larger ones are weights and are
# written to the model's shared external weights file.
EXTERNAL_MIN_ELEMENTS = 64
# Constant tensors the reverse pass derives from parameters (flipped kernels, LRN's
# channel band) are named with this prefix; the export stores them with the weights.
DERIVED_PREFIX = "derived/"


class GraphBuilder:
    """Accumulates nodes and initializers; names everything it creates uniquely."""

    def __init__(self, prefix: str = "") -> None:
        self.prefix = prefix
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}
        self.weight_names: set[str] = set()  # initializers that are backbone parameters
        self._used_names: set[str] = set()
        self._constant_cache: dict[tuple[str, tuple[int, ...], bytes], str] = {}
        self.declared_shapes: dict[str, list[int | str]] = {}  # float tensors' shapes, for value_info

    def fresh(self, hint: str) -> str:
        """A tensor or node name not used before in this builder."""
        base = f"{self.prefix}{hint}"
        name, counter = base, 1
        while name in self._used_names:
            counter += 1
            name = f"{base}_{counter}"
        self._used_names.add(name)
        return name

    def reserve(self, names: Iterable[str]) -> None:
        """Mark names (for example those of an imported graph) as taken."""
        self._used_names.update(names)

    def weight(self, name: str, array: np.ndarray) -> str:
        """A named initializer holding a backbone parameter."""
        if name in self.initializers:
            raise ValueError(f"initializer {name!r} defined twice")
        self._used_names.add(name)
        self.weight_names.add(name)
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def const(self, value: np.ndarray | Sequence[float] | float, dtype: type = np.float32) -> str:
        """A small constant, deduplicated by value."""
        array = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (array.dtype.str, array.shape, array.tobytes())
        cached = self._constant_cache.get(key)
        if cached is not None:
            return cached
        name = self.fresh("const")
        self.initializers[name] = array
        self._constant_cache[key] = name
        return name

    def declare(self, tensor: str, shape: Sequence[int | str]) -> None:
        """Record the shape of float tensor `tensor` (dims as numbers or names), written as its value_info."""
        self.declared_shapes[tensor] = list(shape)

    def ints(self, values: Sequence[int]) -> str:
        return self.const(list(values), np.int64)

    def op(self, op_type: str, *inputs: str, outputs: int = 1, hint: str | None = None, **attrs):
        """Append one node; returns its output name, or a tuple of names when outputs > 1."""
        label = hint or op_type.lower()
        out_names = [self.fresh(label if outputs == 1 else f"{label}_out{i}") for i in range(outputs)]
        node_name = self.fresh(f"{label}_node")
        attributes = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), out_names, name=node_name, **attributes))
        return out_names[0] if outputs == 1 else tuple(out_names)

    def op_into(self, op_type: str, inputs: Sequence[str], outputs: Sequence[str], **attrs) -> None:
        """Append one node whose outputs have names chosen by the caller (graph outputs, layer tensors)."""
        self._used_names.update(outputs)
        node_name = self.fresh(f"{outputs[0]}_node")
        attributes = {k: v for k, v in attrs.items() if v is not None}
        self.nodes.append(helper.make_node(op_type, list(inputs), list(outputs), name=node_name, **attributes))


def live_nodes(nodes: Sequence[onnx.NodeProto], outputs: Iterable[str]) -> list[onnx.NodeProto]:
    """The nodes that `outputs` depend on, in their order: ONNX Runtime runs a node whose
    outputs nothing reads (a step graph's channel means) at every step."""
    needed = set(outputs)
    live: list[onnx.NodeProto] = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]


def tensor_info(name: str, elem_type: int, shape: Sequence[int | str | None] | None) -> onnx.ValueInfoProto:
    """A typed value; shape None leaves the rank unknown."""
    return helper.make_tensor_value_info(name, elem_type, None if shape is None else list(shape))


def make_model(
    builder: GraphBuilder,
    name: str,
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    keep: Iterable[str] | None = None,
) -> onnx.ModelProto:
    """A model from the builder's nodes, with only the initializers the nodes use."""
    used = {i for node in builder.nodes for i in node.input}
    if keep is not None:
        used |= set(keep)
    initializers = [
        numpy_helper.from_array(array, name) for name, array in builder.initializers.items() if name in used
    ]
    interface = {value.name for value in (*inputs, *outputs)}
    produced = {out for node in builder.nodes for out in node.output}
    value_info = [
        helper.make_tensor_value_info(tensor, onnx.TensorProto.FLOAT, shape)
        for tensor, shape in builder.declared_shapes.items()
        if tensor in produced and tensor not in interface
    ]
    graph = helper.make_graph(builder.nodes, name, list(inputs), list(outputs), initializers, value_info=value_info)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="dreamstream",
    )
    model.ir_version = 8
    return model
