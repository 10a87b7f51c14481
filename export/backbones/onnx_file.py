"""A user's own ONNX image classifier as a backbone: dream on named intermediate tensors.

The classifier's input becomes dynamic in N, H and W; everything after the
deepest named tensor (pooling, flatten, the classifier head) is cut away by
the export, so fixed-size heads do not matter. Channel counts and strides are
measured by running the network once at its declared input size (224x224 if it
declares none). Every tensor is renamed into a namespace of its own, so that no
name the user's converter chose can clash with the names the export writes.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.backbones.onnx_opset import OpsetError, to_opset
from dreamstream.export.graph import EXTERNAL_MIN_ELEMENTS, OPSET, tensor_info
from dreamstream.modeldir import Preprocessing

PROBE_SIZE = 224
# Every tensor of the user's graph is renamed into this namespace (see _namespaced).
_NAMESPACE = "net/"


class OnnxBackboneError(ValueError):
    """The ONNX file cannot be used as a backbone (unreadable, wrong input, unknown tensors)."""


def load_onnx_backbone(options) -> Backbone:
    path = Path(options.path)
    if not path.is_file():
        raise OnnxBackboneError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError and others for a bad file
        raise OnnxBackboneError(f"{path} is not a readable ONNX model: {error}") from error
    try:
        model = to_opset(model, path.name)
    except OpsetError as error:
        raise OnnxBackboneError(str(error)) from error
    graph = model.graph
    image_input = _image_input(graph, path)
    produced = {out for node in graph.node for out in node.output}
    missing = [name for name in options.layers if name not in produced]
    if missing:
        hints = {name: difflib.get_close_matches(name, sorted(produced), n=3) for name in missing}
        detail = "; ".join(f"{name!r} (closest: {', '.join(close) or 'none'})" for name, close in hints.items())
        raise OnnxBackboneError(f"{path.name} has no tensor {detail}")

    graph = _namespaced(graph)
    forward = onnx.helper.make_model(
        onnx.helper.make_graph(
            list(graph.node),
            graph.name or "user",
            [tensor_info(_NAMESPACE + image_input, TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [tensor_info(_NAMESPACE + name, TensorProto.FLOAT, None) for name in options.layers],
            list(graph.initializer),
        ),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    )
    forward.ir_version = 8
    declared = declared_size(graph)
    layers = _measure_layers(forward, options.layers, declared or PROBE_SIZE)
    weight_names = frozenset(
        init.name
        for init in graph.initializer
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= EXTERNAL_MIN_ELEMENTS
    )
    preprocessing = Preprocessing(
        mean=tuple(options.mean), std=tuple(options.std), bgr=options.bgr, scale=options.scale
    )
    deepest = layers[-1].name
    return Backbone(
        name=path.stem,
        forward=forward,
        layers=layers,
        preprocessing=preprocessing,
        default_layers={deepest: 1.0},
        weight_names=weight_names,
        source={"weights": path.name},
        declared_size=declared,
    )


def _image_input(graph: onnx.GraphProto, path: Path) -> str:
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise OnnxBackboneError(f"{path.name} must have one image input, it has {len(inputs)}: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3):
        raise OnnxBackboneError(f"{path.name}: the input {inputs[0].name!r} must be [N,3,H,W]")
    return inputs[0].name


def _namespaced(graph: onnx.GraphProto) -> onnx.GraphProto:
    """The graph with every tensor name prefixed, so that no name of the user's (an input called
    `image`, a tensor called `grad`) can clash with the names of the graphs the export writes."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    for node in copy.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                if name:
                    names[index] = _NAMESPACE + name
    for values in (copy.initializer, copy.input, copy.output, copy.value_info):
        for value in values:
            value.name = _NAMESPACE + value.name
    return copy


def declared_size(graph: onnx.GraphProto) -> int | None:
    """The image side the file declares for its input, when it declares a square one."""
    initializers = {init.name for init in graph.initializer}
    image = next(value for value in graph.input if value.name not in initializers)
    dims = image.type.tensor_type.shape.dim
    height, width = (dim.dim_value if dim.HasField("dim_value") else None for dim in dims[2:4])
    return height if height and height == width else None


def _measure_layers(forward: onnx.ModelProto, names: list[str], probe_size: int) -> list[DreamLayer]:
    """Channels and stride of each named tensor, from one run at `probe_size` (the declared size, if any:
    a network exported with fixed shapes may run at no other)."""
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ORT's warnings about the user's graph are not the user's business here
        session = ort.InferenceSession(forward.SerializeToString(), options, providers=["CPUExecutionProvider"])
        probe = np.full((1, 3, probe_size, probe_size), 0.5, np.float32)
        outputs = session.run([_NAMESPACE + name for name in names], {forward.graph.input[0].name: probe})
    except Exception as error:  # ORT's own exception types
        raise OnnxBackboneError(f"the network does not run on a {probe_size}px image: {error}") from error
    layers = []
    for name, value in zip(names, outputs, strict=True):
        if value.ndim != 4:
            raise OnnxBackboneError(f"tensor {name!r} has shape {value.shape}; dream layers must be [N,C,H,W]")
        stride = max(1, round(probe_size / value.shape[2]))
        layers.append(DreamLayer(name, _NAMESPACE + name, int(value.shape[1]), stride))
    order = {out: i for i, node in enumerate(forward.graph.node) for out in node.output}
    return sorted(layers, key=lambda layer: order[layer.tensor])
