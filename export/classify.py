"""The classifier graph: what the network sees in a picture, as ImageNet class probabilities.

A backbone whose weights have their classifier head (efficientnet-lite0's
packaged weights, googlenet-bvlc's loss3/classifier) records the logits tensor
in its forward graph (`Backbone.logits`); this module cuts the forward graph at
it, preprocessing included, and adds the softmax. The class names ship with the
export tool (`imagenet_classes.txt`: the 1000 ImageNet classes in the order of
the networks' outputs) and are written beside the graph.
"""

from __future__ import annotations

from pathlib import Path

import onnx
from onnx import TensorProto

from dreamstream.export.dream import PreparedBackbone, _ancestors
from dreamstream.export.graph import GraphBuilder, make_model, tensor_info
from dreamstream.modeldir import IMAGE, PROBABILITIES

IMAGENET_CLASSES = Path(__file__).with_name("imagenet_classes.txt")
CLASSIFIER_FILE = "classifier.onnx"
LABELS_FILE = "labels.txt"
# The side the built-in backbones were trained to classify at (ImageNet's 224 x 224).
IMAGENET_SIZE = 224


def build_classifier_graph(prepared: PreparedBackbone) -> onnx.ModelProto:
    """Input `image` (RGB in [0, 1]); output `probabilities`, the softmax of the backbone's logits."""
    logits = prepared.backbone.logits
    if logits is None:
        raise ValueError(f"{prepared.backbone.name} has no classifier head")
    builder = GraphBuilder(prefix="c/")
    builder.nodes = _ancestors(prepared.nodes, {logits})
    builder.reserve(out for node in builder.nodes for out in node.output)
    builder.op_into("Softmax", [logits], [PROBABILITIES], axis=1)
    used = {name for node in builder.nodes for name in node.input}
    builder.initializers = {name: value for name, value in prepared.constants.items() if name in used}
    return make_model(
        builder,
        "classifier",
        [tensor_info(IMAGE, TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [tensor_info(PROBABILITIES, TensorProto.FLOAT, ["N", None])],
    )


def write_labels(path: Path) -> None:
    """The 1000 ImageNet class names, in the networks' output order, one per line."""
    path.write_text(IMAGENET_CLASSES.read_text())
