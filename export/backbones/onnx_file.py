"""A user's own ONNX image classifier as a backbone: dream on named intermediate tensors.

The classifier's input becomes dynamic in N, H and W; everything after the
deepest named tensor (pooling, flatten, the classifier head) is cut away by
the export, so fixed-size heads do not matter. Channel counts and strides are
measured by running the network once at its declared input size (224x224 if it
declares none, or the next side it runs at). A network that takes NHWC (as
TensorFlow's converters write them) gets a Transpose in front, and a layer named
by a channels-last map is dreamed on as its NCHW form. Every tensor is renamed
into a namespace of its own, so that no name the user's converter chose can
clash with the names the export writes.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.backbones.onnx_idioms import decided_ifs, size_free
from dreamstream.export.backbones.onnx_opset import OpsetError, to_opset
from dreamstream.export.graph import EXTERNAL_MIN_ELEMENTS, OPSET, tensor_info
from dreamstream.export.sizes import STEP_WINDOW
from dreamstream.modeldir import Preprocessing

PROBE_SIZE = 224
# Every tensor of the user's graph is renamed into this namespace (see _namespaced).
_NAMESPACE = "net/"
# The NCHW input of a network that takes NHWC, outside that namespace.
_NCHW_INPUT = "layout/nchw"
# A channels-last feature map a user names, transposed to NCHW by the forward: its name + this.
_NCHW_SUFFIX = "/as_nchw"


class OnnxBackboneError(ValueError):
    """The ONNX file cannot be used as a backbone (unreadable, wrong input, unknown tensors)."""


# A dream layer should be a block's finished output: what an activation, a pool, a residual
# sum or a concatenation writes. A tensor consumed only by the op that finishes its block
# (a convolution's output on its way to batch norm and ReLU) is no candidate.
_BLOCK_OUTPUT_OPS = frozenset(
    {"Relu", "Clip", "LeakyRelu", "PRelu", "Elu", "Selu", "HardSwish", "Sigmoid", "Tanh", "Softplus", "Mul", "Add",
     "Sum", "Concat", "MaxPool", "AveragePool", "LRN", "Resize"}
)  # fmt: skip
AUTO_LAYERS = "auto"  # --layers auto: the export picks the layers (see auto_layers)


@dataclass(frozen=True)
class Candidate:
    """A tensor of a user's network one can dream on."""

    name: str
    op: str  # the op that writes it
    channels: int
    stride: int  # input pixels per activation pixel


def load_onnx_backbone(options) -> Backbone:
    path = Path(options.path)
    model = _read_model(path)
    graph = model.graph
    image_input = _image_input(graph, path)
    names = list(options.layers)
    if names == [AUTO_LAYERS]:
        names = auto_layers(_candidates(graph, image_input))
        if not names:
            raise OnnxBackboneError(f"{path.name}: found no layer to pick automatically; name tensors with --layers")
    produced = {out for node in graph.node for out in node.output}
    missing = [name for name in names if name not in produced]
    if missing:
        hints = {name: difflib.get_close_matches(name, sorted(produced), n=3) for name in missing}
        detail = "; ".join(f"{name!r} (closest: {', '.join(close) or 'none'})" for name, close in hints.items())
        raise OnnxBackboneError(f"{path.name} has no tensor {detail}; `dreamstream layers --onnx` lists the candidates")

    declared = declared_size(graph)
    dims = _inferred_dims(graph) if _channels_last(graph) else {}
    tensors = [_channels_first(graph, name, dims) for name in names]
    forward = _forward(graph, image_input, tensors)
    layers = _measure_layers(forward, names, tensors, declared or PROBE_SIZE)
    weight_names = frozenset(
        init.name
        for init in forward.graph.initializer
        if init.data_type == TensorProto.FLOAT and int(np.prod(init.dims)) >= EXTERNAL_MIN_ELEMENTS
    )
    preprocessing = Preprocessing(
        mean=tuple(options.mean), std=tuple(options.std), bgr=options.bgr, scale=options.scale
    )
    # The middle of the automatic picks is the classic DeepDream depth; otherwise the deepest named.
    default = layers[len(layers) // 2] if list(options.layers) == [AUTO_LAYERS] else layers[-1]
    return Backbone(
        name=path.stem,
        forward=forward,
        layers=layers,
        preprocessing=preprocessing,
        default_layers={default.name: 1.0},
        weight_names=weight_names,
        source={"weights": path.name},
        declared_size=declared,
    )


def candidate_layers(path: Path) -> list[Candidate]:
    """The tensors of the network in `path` one can dream on, deepest last."""
    path = Path(path)
    graph = _read_model(path).graph
    return _candidates(graph, _image_input(graph, path))


def auto_layers(candidates: list[Candidate]) -> list[str]:
    """A few good layers: the last block output at each of the three deepest strides."""
    last_at_stride: dict[int, Candidate] = {}
    for candidate in candidates:
        last_at_stride[candidate.stride] = candidate
    picked = [last_at_stride[stride] for stride in sorted(last_at_stride)[-3:]]
    order = {candidate.name: index for index, candidate in enumerate(candidates)}
    return sorted((candidate.name for candidate in picked), key=order.__getitem__)


def _candidates(graph: onnx.GraphProto, image_input: str) -> list[Candidate]:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    ops = {out: node.op_type for node in graph.node for out in node.output}
    float_4d = _float_4d_tensors(graph)
    names = [
        out
        for node in graph.node
        if node.op_type in _BLOCK_OUTPUT_OPS
        for out in node.output[:1]
        if out in float_4d and not _finished_by_the_next_op(consumers.get(out, []))
    ]
    if not names:
        return []
    # A network with an NHWC input may compute in NHWC (tf2onnx leaves a MobileNetV3's maps so): its
    # channels-last maps are measured in their NCHW form, as they are dreamed on.
    dims = _inferred_dims(graph) if _channels_last(graph) else {}
    tensors = [_channels_first(graph, name, dims) for name in names]
    size, values = _run(_forward(graph, image_input, tensors), tensors, declared_size(graph) or PROBE_SIZE)
    return [
        Candidate(name, ops[name], int(value.shape[1]), max(1, round(size / value.shape[2])))
        for name, value in zip(names, values, strict=True)
        # A square picture gives square NCHW maps: that leaves out tensors still channels-last ([N,H,W,C]).
        if value.ndim == 4 and value.shape[2] == value.shape[3] >= 2 and value.dtype == np.float32
    ]


def _float_4d_tensors(graph: onnx.GraphProto) -> set[str]:
    """Tensors shape inference knows to be float and of rank 4 (shape arithmetic is neither)."""
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {
        value.name
        for value in [*inferred.value_info, *inferred.output]
        if value.type.tensor_type.elem_type == TensorProto.FLOAT
        and value.type.tensor_type.HasField("shape")
        and len(value.type.tensor_type.shape.dim) == 4
    }


def _finished_by_the_next_op(consumers: list[onnx.NodeProto]) -> bool:
    """The tensor goes on, unchanged in shape, into the op that finishes its block (an Add's output
    into a ReLU, a concatenation into batch norm and ReLU): that op's output is the candidate."""
    return len(consumers) == 1 and consumers[0].op_type in {"Relu", "Clip", "BatchNormalization", "Mul", "Add"}


def _channels_first(graph: onnx.GraphProto, name: str, dims: dict[str, list[int | None]]) -> str:
    """The NCHW tensor that holds the layer `name`: the tensor itself; for a channels-last map the NCHW
    one before its Transpose (TensorFlow's converters end a Keras model's feature outputs so), or
    else the map transposed by the forward (`_NCHW_SUFFIX`)."""
    for node in graph.node:
        if node.output and node.output[0] == name and node.op_type == "Transpose":
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            return node.input[0] if perm == [0, 2, 3, 1] else name
    shape = dims.get(name)
    if _channels_last(graph) and shape is not None and len(shape) == 4 and _reads_as_nhwc(shape):
        return name + _NCHW_SUFFIX
    return name


def _reads_as_nhwc(shape: list[int | None]) -> bool:
    """[N,H,W,C] rather than [N,C,H,W], from what shape inference knows: a fixed last dim after two
    that follow the picture's size (or, with a fixed square input, two equal ones before it)."""
    _, second, third, last = shape
    if last is None:
        return False
    if second is None and third is None:
        return True
    return second == third != last


def _inferred_dims(graph: onnx.GraphProto) -> dict[str, list[int | None]]:
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", OPSET)])
    inferred = onnx.shape_inference.infer_shapes(model).graph
    return {
        value.name: [dim.dim_value if dim.HasField("dim_value") else None for dim in value.type.tensor_type.shape.dim]
        for value in [*inferred.value_info, *inferred.output]
        if value.type.tensor_type.HasField("shape")
    }


def _read_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxBackboneError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as error:  # onnx raises DecodeError and others for a bad file
        raise OnnxBackboneError(f"{path} is not a readable ONNX model: {error}") from error
    try:
        return size_free(decided_ifs(to_opset(model, path.name)))
    except OpsetError as error:
        raise OnnxBackboneError(str(error)) from error


def _forward(graph: onnx.GraphProto, image_input: str, outputs: list[str]) -> onnx.ModelProto:
    """The user's graph in its own namespace, from its image input to the tensors `outputs` names.

    The forward always takes NCHW: a network that takes NHWC (TensorFlow's converters write
    those) gets a Transpose in front of it.
    """
    channels_last = _channels_last(graph)
    graph = _namespaced(graph)
    nodes = list(graph.node)
    source = _NAMESPACE + image_input
    if channels_last:
        nodes.insert(0, onnx.helper.make_node("Transpose", [_NCHW_INPUT], [source], name="to_nhwc", perm=[0, 2, 3, 1]))
        source = _NCHW_INPUT
    for output in outputs:
        if output.endswith(_NCHW_SUFFIX):  # a channels-last feature map (see _channels_first)
            nhwc = _NAMESPACE + output.removesuffix(_NCHW_SUFFIX)
            nodes.append(onnx.helper.make_node("Transpose", [nhwc], [_NAMESPACE + output], perm=[0, 3, 1, 2]))
    forward = onnx.helper.make_model(
        onnx.helper.make_graph(
            nodes,
            graph.name or "user",
            [tensor_info(source, TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [tensor_info(_NAMESPACE + name, TensorProto.FLOAT, None) for name in outputs],
            list(graph.initializer),
        ),
        opset_imports=[onnx.helper.make_opsetid("", OPSET)],
    )
    forward.ir_version = 8
    return forward


def _image_input(graph: onnx.GraphProto, path: Path) -> str:
    initializers = {init.name for init in graph.initializer}
    inputs = [value for value in graph.input if value.name not in initializers]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs)
        raise OnnxBackboneError(f"{path.name} must have one image input, it has {len(inputs)}: {names}")
    dims = inputs[0].type.tensor_type.shape.dim
    if len(dims) != 4 or (dims[1].HasField("dim_value") and dims[1].dim_value != 3 and not _channels_last(graph)):
        raise OnnxBackboneError(f"{path.name}: the input {inputs[0].name!r} must be [N,3,H,W] or [N,H,W,3]")
    return inputs[0].name


def _image_dims(graph: onnx.GraphProto) -> list[int | None]:
    initializers = {init.name for init in graph.initializer}
    image = next(value for value in graph.input if value.name not in initializers)
    return [dim.dim_value if dim.HasField("dim_value") else None for dim in image.type.tensor_type.shape.dim]


def _channels_last(graph: onnx.GraphProto) -> bool:
    """The input is [N,H,W,3] rather than [N,3,H,W]."""
    dims = _image_dims(graph)
    return len(dims) == 4 and dims[3] == 3 and dims[1] != 3


def _namespaced(graph: onnx.GraphProto) -> onnx.GraphProto:
    """The graph with every tensor name prefixed, so that no name of the user's (an input called
    `image`, a tensor called `grad`) can clash with the names of the graphs the export writes."""
    copy = onnx.GraphProto()
    copy.CopyFrom(graph)
    _prefix_names(copy)
    return copy


def _prefix_names(graph: onnx.GraphProto) -> None:
    """Prefix every tensor name of `graph` in place, and of the graphs inside its nodes (an If's
    branches read the outer graph's tensors by name)."""
    for node in graph.node:
        for names in (node.input, node.output):
            for index, name in enumerate(names):
                if name:
                    names[index] = _NAMESPACE + name
        for attribute in node.attribute:
            for subgraph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _prefix_names(subgraph)
    for values in (graph.initializer, graph.input, graph.output, graph.value_info):
        for value in values:
            value.name = _NAMESPACE + value.name


def declared_size(graph: onnx.GraphProto) -> int | None:
    """The image side the file declares for its input, when it declares a square one."""
    dims = _image_dims(graph)
    height, width = dims[1:3] if _channels_last(graph) else dims[2:4]
    return height if height and height == width else None


def _run(forward: onnx.ModelProto, names: list[str], size: int) -> tuple[int, list[np.ndarray]]:
    """The named tensors for a grey square picture: of side `size`, or of the next side the network
    runs at (one whose branches line up only at some sizes), and that side."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # ORT's warnings about the user's graph, and the failing probes, stay out of the log
    try:
        session = ort.InferenceSession(forward.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's own exception types
        raise OnnxBackboneError(f"ONNX Runtime cannot load the network: {error}") from error
    first_error = None
    for side in range(size, size + STEP_WINDOW):
        probe = np.full((1, 3, side, side), 0.5, np.float32)
        try:
            return side, session.run([_NAMESPACE + name for name in names], {forward.graph.input[0].name: probe})
        except Exception as error:  # ORT's own exception types
            first_error = first_error or error
    detail = str(first_error).split("Status Message: ")[-1].splitlines()[0][:300]
    raise OnnxBackboneError(
        f"the network runs on no square picture of {size} to {size + STEP_WINDOW - 1} px ({detail}): "
        f"convert it with a fixed input size (say 1x{size}x{size}x3), or name tensors before the failing node"
    )


def _measure_layers(
    forward: onnx.ModelProto, names: list[str], tensors: list[str], probe_size: int
) -> list[DreamLayer]:
    """Channels and stride of each named layer (computed by its tensor in `tensors`), from one run at
    `probe_size` (the declared size, if any: a network exported with fixed shapes may run at no other)."""
    layers = []
    probe_size, values = _run(forward, tensors, probe_size)
    for name, tensor, value in zip(names, tensors, values, strict=True):
        if value.ndim != 4:
            raise OnnxBackboneError(f"tensor {name!r} has shape {value.shape}; dream layers must be [N,C,H,W]")
        stride = max(1, round(probe_size / value.shape[2]))
        layers.append(DreamLayer(name, _NAMESPACE + tensor, int(value.shape[1]), stride))
    order = {out: i for i, node in enumerate(forward.graph.node) for out in node.output}
    return sorted(layers, key=lambda layer: order[layer.tensor])
