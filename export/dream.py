"""The dream graphs of one cut of a backbone: loss and gradient, and the fused ascent step.

For a set of layers (all layers up to the end of a group, or one group's own), the
graph computes those layers from the image (preprocessing inside the graph), the
dream loss

    loss[n] = sum_j layer_weights[j] / (C_j H_j W_j) * sum_{c,h,w} channel_weights_j[c] * a_j[n,c,h,w]^2

over them, its gradient with respect to the image (our reverse pass),
and each layer's channel means. The step graph wraps the same computation in
one whole DeepDream step (roll, gradient, roll back, normalise, update, clip).
The guide graph swaps the L2 loss for google/deepdream's guided one (see
`_emit_guided_loss`), reading the guide picture's activations from the same
forward run on the `guide` input.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from dreamstream.export.autodiff import (
    RuleContext,
    StaticShapes,
    constant_values,
    declare_gradient_shapes,
    prepare_forward,
    reverse_pass,
)
from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.folding import fold_constants
from dreamstream.export.graph import GraphBuilder, live_nodes, make_model, tensor_info
from dreamstream.modeldir import (
    CHANNEL_MEANS,
    CHANNEL_WEIGHTS,
    GRAD,
    GUIDE,
    IMAGE,
    IMAGE_OUT,
    LAYER_WEIGHTS,
    LOSS,
    SHIFT,
    STEP_SIZE,
)

# Added to the gradient's mean absolute value before dividing by it (a flat image has none).
NORMALISE_EPSILON = 1e-8


@dataclass
class PreparedBackbone:
    """A backbone with preprocessing prepended and shapes inferred, ready to be cut."""

    backbone: Backbone
    nodes: list[onnx.NodeProto]  # preprocessing + forward, reading IMAGE
    shapes: StaticShapes
    constants: dict[str, np.ndarray]

    @property
    def layers(self) -> list[DreamLayer]:
        return self.backbone.layers


def prepare(backbone: Backbone) -> PreparedBackbone:
    builder = GraphBuilder(prefix="pre/")
    _emit_preprocessing(builder, backbone)
    forward, constants = fold_constants(
        backbone.forward.graph.node, {**constant_values(backbone.forward), **builder.initializers}
    )
    nodes = builder.nodes + forward
    full = make_model(
        _with_nodes(nodes, constants),
        "forward",
        [tensor_info(IMAGE, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [tensor_info(layer.tensor, TensorProto.FLOAT, None) for layer in backbone.layers],
    )
    return PreparedBackbone(backbone, nodes, StaticShapes.infer(full), constants)


def _with_nodes(nodes: list[onnx.NodeProto], constants: dict[str, np.ndarray]) -> GraphBuilder:
    copy = GraphBuilder()
    copy.nodes = nodes
    copy.initializers = constants
    return copy


def _emit_preprocessing(builder: GraphBuilder, backbone: Backbone) -> None:
    """RGB in [0,1] -> the backbone's input: channel order, pixel range, mean and std."""
    prep = backbone.preprocessing
    x = IMAGE
    if prep.bgr:
        x = builder.op("Gather", x, builder.ints([2, 1, 0]), hint="to_bgr", axis=1)
    mean = np.asarray(prep.mean, np.float32)
    std = np.asarray(prep.std, np.float32)
    scale = (prep.scale / std).reshape(1, 3, 1, 1)
    shift = (-mean / std).reshape(1, 3, 1, 1)
    scaled = builder.op("Mul", x, builder.const(scale), hint="scale")
    builder.op_into("Add", [scaled, builder.const(shift)], [backbone.input_name])


def cut_groups(layers: list[DreamLayer]) -> list[list[int]]:
    """Consecutive layers of the same group, as lists of layer indices."""
    groups: list[list[int]] = []
    for index, layer in enumerate(layers):
        key = layer.group or layer.name
        previous = layers[groups[-1][-1]] if groups else None
        if previous is not None and (previous.group or previous.name) == key:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _ancestors(nodes: list[onnx.NodeProto], targets: set[str]) -> list[onnx.NodeProto]:
    """The nodes needed to compute `targets`, in their original order."""
    needed = set(targets)
    kept = []
    for node in reversed(nodes):
        if any(out in needed for out in node.output):
            kept.append(node)
            needed.update(name for name in node.input if name)
    return list(reversed(kept))


def _rename_input(nodes: list[onnx.NodeProto], old: str, new: str) -> list[onnx.NodeProto]:
    renamed = []
    for node in nodes:
        if old in node.input:
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            for i, name in enumerate(copy.input):
                if name == old:
                    copy.input[i] = new
            node = copy
        renamed.append(node)
    return renamed


def _rename_output(nodes: list[onnx.NodeProto], old: str, new: str) -> None:
    for node in nodes:
        for i, name in enumerate(node.output):
            if name == old:
                node.output[i] = new
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new


def _emit_dream(
    builder: GraphBuilder,
    prepared: PreparedBackbone,
    loss_layers: list[int],
    source: str,
    guide: dict[str, str] | None = None,
) -> tuple[str, str, str]:
    """Forward to the layers in `loss_layers`, their loss and channel means, and the gradient
    of the loss w.r.t. `source`. Other layers' weights are ignored, their means are zero.
    With `guide` (layer tensor -> the guide's activation there) the loss is the guided one.

    Returns the names of (loss, gradient, channel means).
    """
    layers = prepared.layers
    forward = _ancestors(prepared.nodes, {layers[index].tensor for index in loss_layers})
    if source != IMAGE:
        forward = _rename_input(forward, IMAGE, source)
    forward, emitted = prepare_forward(forward, builder, prepared.shapes)
    builder.reserve(out for node in emitted for out in node.output)
    builder.nodes.extend(emitted)

    terms, seeds, means = [], {}, []
    zero_run = 0  # channels of consecutive layers outside the loss, written as one zero block
    offset = 0
    for index, layer in enumerate(layers):
        if index in loss_layers:
            if zero_run:
                means.append(_zero_means(builder, source, zero_run))
                zero_run = 0
            if guide is None:
                term, seed = _emit_layer_loss(builder, layer, index, offset)
            else:
                term, seed = _emit_guided_loss(builder, layer, index, offset, guide[layer.tensor])
            terms.append(term)
            seeds[layer.tensor] = seed
            means.append(builder.op("ReduceMean", layer.tensor, hint="channel_mean", axes=[2, 3], keepdims=0))
        else:
            zero_run += layer.channels
        offset += layer.channels
    if zero_run:
        means.append(_zero_means(builder, source, zero_run))
    loss = terms[0] if len(terms) == 1 else builder.op("Sum", *terms, hint="loss_sum")
    channel_means = means[0] if len(means) == 1 else builder.op("Concat", *means, hint="means", axis=1)

    shapes = prepared.shapes.renamed(source, IMAGE)
    context = RuleContext(builder, shapes, ChainMap(builder.initializers, prepared.constants))
    gradients: dict[str, str] = {}
    grad = reverse_pass(forward, source, seeds, context, gradients)
    declare_gradient_shapes(builder, shapes, gradients)
    return loss, grad, channel_means


def _zero_means(builder: GraphBuilder, source: str, channels: int) -> str:
    """[N, channels] of zeros: the channel means of layers this graph does not compute."""
    batch = builder.op("Shape", source, hint="batch", start=0, end=1)
    shape = builder.op("Concat", batch, builder.ints([channels]), axis=0)
    zero = helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0])
    return builder.op("ConstantOfShape", shape, hint="uncomputed_means", value=zero)


def _emit_layer_loss(builder: GraphBuilder, layer: DreamLayer, index: int, offset: int) -> tuple[str, str]:
    """One layer's loss term [N] and the gradient of the loss with respect to its activation."""
    g = builder
    a = layer.tensor
    channel_w, coefficient = _layer_weighting(g, layer, index, offset)
    weighted = g.op("Mul", a, channel_w, hint="weighted")
    term = g.op("Mul", g.op("ReduceSum", g.op("Mul", weighted, a), g.ints([1, 2, 3]), keepdims=0), coefficient)
    seed = g.op("Mul", weighted, g.op("Mul", coefficient, g.const(2.0)), hint="loss_grad")
    return term, seed


def _layer_weighting(g: GraphBuilder, layer: DreamLayer, index: int, offset: int) -> tuple[str, str]:
    """The layer's channel weights [1,C,1,1] and its loss coefficient layer_weight / (C H W) [1]."""
    channel_w = g.op("Slice", CHANNEL_WEIGHTS, g.ints([offset]), g.ints([offset + layer.channels]))
    channel_w = g.op("Reshape", channel_w, g.ints([1, layer.channels, 1, 1]), hint="channel_w")
    layer_w = g.op("Slice", LAYER_WEIGHTS, g.ints([index]), g.ints([index + 1]), hint="layer_w")
    shape = g.op("Shape", layer.tensor, start=2, end=4)
    area = g.op("Cast", g.op("ReduceProd", shape, keepdims=1), to=TensorProto.FLOAT)
    coefficient = g.op("Div", layer_w, g.op("Mul", area, g.const(float(layer.channels))), hint="coef")
    return channel_w, coefficient


def _emit_guided_loss(builder: GraphBuilder, layer: DreamLayer, index: int, offset: int, guide: str) -> tuple[str, str]:
    """google/deepdream's guided objective for one layer: its loss term [N] and seed.

    Each position p of the activation x is matched with the guide's feature y_q of
    largest dot product sum_c w_c x_pc y_qc (w: the channel weights), and the loss is
    the sum of those best dot products. The match (an ArgMax) is held constant, so the seed is the matched
    guide features themselves: every position is pushed towards its best guide feature.
    """
    g = builder
    a = layer.tensor
    channels = layer.channels
    channel_w, coefficient = _layer_weighting(g, layer, index, offset)
    positions = g.op("Reshape", a, g.ints([0, channels, -1]), hint="positions")  # [N,C,P]
    features = g.op("Reshape", g.op("Mul", guide, channel_w), g.ints([channels, -1]), hint="guide_features")  # [C,Q]
    scores = g.op("MatMul", g.op("Transpose", positions, perm=[0, 2, 1]), features, hint="guide_scores")  # [N,P,Q]
    best = g.op("ArgMax", scores, hint="guide_best", axis=2, keepdims=0)  # [N,P]
    matched = g.op("Gather", g.op("Transpose", features, perm=[1, 0]), best, hint="guide_matched", axis=0)  # [N,P,C]
    matched = g.op("Reshape", g.op("Transpose", matched, perm=[0, 2, 1]), g.op("Shape", a), hint="matched")
    term = g.op("Mul", g.op("ReduceSum", g.op("Mul", matched, a), g.ints([1, 2, 3]), keepdims=0), coefficient)
    seed = g.op("Mul", matched, coefficient, hint="guide_grad")
    return term, seed


def _emit_guide_forward(builder: GraphBuilder, prepared: PreparedBackbone, loss_layers: list[int]) -> dict[str, str]:
    """The same forward run on the `guide` input, every tensor it makes renamed; returns
    each loss layer's tensor -> the guide's activation there. Nothing differentiates it."""
    layers = prepared.layers
    forward = _ancestors(prepared.nodes, {layers[index].tensor for index in loss_layers})
    renamed = {out: f"guide/{out}" for node in forward for out in node.output if out}
    renamed[IMAGE] = GUIDE
    for node in forward:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = f"guide/{node.name}" if node.name else ""
        copy.ClearField("input")
        copy.input.extend(renamed.get(name, name) for name in node.input)
        copy.ClearField("output")
        copy.output.extend(renamed.get(name, name) for name in node.output)
        builder.nodes.append(copy)
    builder.reserve(renamed.values())
    return {layers[index].tensor: renamed[layers[index].tensor] for index in loss_layers}


def _interface(step: bool, channel_total: int, layer_count: int, guide: bool = False) -> list[onnx.ValueInfoProto]:
    inputs = [
        tensor_info(IMAGE, TensorProto.FLOAT, ["N", 3, "H", "W"]),
        tensor_info(LAYER_WEIGHTS, TensorProto.FLOAT, [layer_count]),
        tensor_info(CHANNEL_WEIGHTS, TensorProto.FLOAT, [channel_total]),
    ]
    if step:
        inputs += [tensor_info(SHIFT, TensorProto.INT64, [2]), tensor_info(STEP_SIZE, TensorProto.FLOAT, [1])]
    if guide:
        inputs.append(tensor_info(GUIDE, TensorProto.FLOAT, [1, 3, "h", "w"]))
    return inputs


def build_gradient_graph(prepared: PreparedBackbone, loss_layers: list[int]) -> onnx.ModelProto:
    """Inputs image, layer_weights, channel_weights; outputs loss, grad, channel_means.

    The loss covers the layers whose indices are in `loss_layers`.
    """
    builder = GraphBuilder(prefix="d/")
    loss, grad, means = _emit_dream(builder, prepared, loss_layers, IMAGE)
    for old, new in ((loss, LOSS), (grad, GRAD), (means, CHANNEL_MEANS)):
        _rename_output(builder.nodes, old, new)
    return _finish(builder, prepared, step=False)


def build_guide_graph(prepared: PreparedBackbone, loss_layers: list[int]) -> onnx.ModelProto:
    """The gradient graph with the guided loss: inputs as the gradient graph plus `guide`."""
    builder = GraphBuilder(prefix="d/")
    guide = _emit_guide_forward(builder, prepared, loss_layers)
    loss, grad, means = _emit_dream(builder, prepared, loss_layers, IMAGE, guide)
    for old, new in ((loss, LOSS), (grad, GRAD), (means, CHANNEL_MEANS)):
        _rename_output(builder.nodes, old, new)
    return _finish(builder, prepared, step=False, guide=True)


def build_step_graph(prepared: PreparedBackbone, loss_layers: list[int]) -> onnx.ModelProto:
    """One DeepDream step: inputs as the gradient graph plus shift and step_size; outputs image_out, loss.

    `shift` is (dy, dx) with 0 <= dy < H and 0 <= dx < W: the image is rolled by it
    (jitter) before the gradient and the gradient rolled back after.
    """
    g = GraphBuilder(prefix="s/")
    size = g.op("Shape", IMAGE, hint="image_hw", start=2, end=4)
    shift_y = g.op("Slice", SHIFT, g.ints([0]), g.ints([1]), hint="shift_y")
    shift_x = g.op("Slice", SHIFT, g.ints([1]), g.ints([2]), hint="shift_x")
    height = g.op("Slice", size, g.ints([0]), g.ints([1]), hint="height")
    width = g.op("Slice", size, g.ints([1]), g.ints([2]), hint="width")
    rolled = _roll(g, _roll(g, IMAGE, shift_y, height, 2), shift_x, width, 3)

    loss, grad, _ = _emit_dream(g, prepared, loss_layers, rolled)
    back_y = g.op("Sub", height, shift_y)
    back_x = g.op("Sub", width, shift_x)
    grad = _roll(g, _roll(g, grad, back_y, height, 2), back_x, width, 3)

    scale = g.op("ReduceMean", g.op("Abs", grad), hint="grad_scale", axes=[1, 2, 3], keepdims=1)
    scale = g.op("Add", scale, g.const(NORMALISE_EPSILON))
    update = g.op("Mul", g.op("Div", grad, scale), STEP_SIZE, hint="update")
    moved = g.op("Add", IMAGE, update)
    g.op_into("Clip", [moved, g.const(0.0), g.const(1.0)], [IMAGE_OUT])
    _rename_output(g.nodes, loss, LOSS)
    return _finish(g, prepared, step=True)


def _roll(g: GraphBuilder, x: str, shift: str, size: str, axis: int) -> str:
    """torch.roll along one axis for 0 <= shift < size: out[i] = x[i - shift]."""
    split = g.op("Sub", size, shift, hint="roll_split")
    axes = g.ints([axis])
    tail = g.op("Slice", x, split, size, axes, hint="roll_tail")
    head = g.op("Slice", x, g.ints([0]), split, axes, hint="roll_head")
    return g.op("Concat", tail, head, hint="rolled", axis=axis)


def _finish(builder: GraphBuilder, prepared: PreparedBackbone, step: bool, guide: bool = False) -> onnx.ModelProto:
    layers = prepared.layers
    channel_total = sum(layer.channels for layer in layers)
    if step:
        outputs = [
            tensor_info(IMAGE_OUT, TensorProto.FLOAT, ["N", 3, "H", "W"]),
            tensor_info(LOSS, TensorProto.FLOAT, ["N"]),
        ]
    else:
        outputs = [
            tensor_info(LOSS, TensorProto.FLOAT, ["N"]),
            tensor_info(GRAD, TensorProto.FLOAT, ["N", 3, "H", "W"]),
            tensor_info(CHANNEL_MEANS, TensorProto.FLOAT, ["N", channel_total]),
        ]
    inputs = _interface(step, channel_total, len(layers), guide)
    builder.nodes = live_nodes(builder.nodes, [output.name for output in outputs])
    # The forward's weights live in the prepared constants, not in this builder.
    used = {name for node in builder.nodes for name in node.input}
    produced = {name for node in builder.nodes for name in node.output}
    for name, value in prepared.constants.items():
        if name in used and name not in builder.initializers and name not in produced:
            builder.initializers[name] = value
    return make_model(builder, "dream_step" if step else "dream", inputs, outputs)
