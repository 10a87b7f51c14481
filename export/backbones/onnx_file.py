"""A user's own ONNX image classifier as a backbone: dream on named intermediate tensors.

The classifier's input becomes dynamic in N, H and W; everything after the
deepest named tensor (pooling, flatten, the classifier head) is cut away by
the export, so fixed-size heads do not matter. Channel counts and strides are
measured by running the network once at 224x224.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, version_converter

from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.graph import EXTERNAL_MIN_ELEMENTS, OPSET, tensor_info
from dreamstream.modeldir import Preprocessing

PROBE_SIZE = 224


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
    model = _to_opset(model, path)
    graph = model.graph
    image_input = _image_input(graph, path)
    produced = {out for node in graph.node for out in node.output}
    missing = [name for name in options.layers if name not in produced]
    if missing:
        hints = {name: difflib.get_close_matches(name, sorted(produced), n=3) for name in missing}
        detail = "; ".join(f"{name!r} (closest: {', '.join(close) or 'none'})" for name, close in hints.items())
        raise OnnxBackboneError(f"{path.name} has no tensor {detail}")

    forward = onnx.helper.make_model(
        onnx.helper.make_graph(
            list(graph.node),
            graph.name or "user",
            [tensor_info(image_input, TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [tensor_info(name, TensorProto.FLOAT, None) for name in options.layers],
            list(graph.initializer),
        ),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    )
    forward.ir_version = 8
    layers = _measure_layers(forward, options.layers)
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
    )


def _to_opset(model: onnx.ModelProto, path: Path) -> onnx.ModelProto:
    domains = {imp.domain for imp in model.opset_import if imp.domain not in ("", "ai.onnx")}
    if domains:
        raise OnnxBackboneError(f"{path.name} uses custom op domains {sorted(domains)}; only standard ONNX ops work")
    version = next(imp.version for imp in model.opset_import if imp.domain in ("", "ai.onnx"))
    if version == OPSET:
        return model
    try:
        return version_converter.convert_version(model, OPSET)
    except Exception as error:  # the converter raises plain RuntimeErrors
        raise OnnxBackboneError(f"{path.name}: cannot convert opset {version} to {OPSET}: {error}") from error


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


def _measure_layers(forward: onnx.ModelProto, names: list[str]) -> list[DreamLayer]:
    """Channels and stride of each named tensor, from one run at PROBE_SIZE."""
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(forward.SerializeToString(), providers=["CPUExecutionProvider"])
        probe = np.full((1, 3, PROBE_SIZE, PROBE_SIZE), 0.5, np.float32)
        outputs = session.run(names, {forward.graph.input[0].name: probe})
    except Exception as error:  # ORT's own exception types
        raise OnnxBackboneError(f"the network does not run on a {PROBE_SIZE}px image: {error}") from error
    layers = []
    for name, value in zip(names, outputs, strict=True):
        if value.ndim != 4:
            raise OnnxBackboneError(f"tensor {name!r} has shape {value.shape}; dream layers must be [N,C,H,W]")
        layers.append(DreamLayer(name, name, int(value.shape[1]), max(1, round(PROBE_SIZE / value.shape[2]))))
    order = {out: i for i, node in enumerate(forward.graph.node) for out in node.output}
    return sorted(layers, key=lambda layer: order[layer.tensor])
