"""What every backbone becomes before export: a forward ONNX graph and its dream layers.

Built-in recipes build this from weight files; `dreamstream export onnx` builds
it from a user's ONNX classifier. Everything after (gradient graphs, manifest)
is the same for all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx

from dreamstream.modeldir import Preprocessing


@dataclass(frozen=True)
class DreamLayer:
    name: str  # what users call it, e.g. "inception_4c/output"
    tensor: str  # the tensor in the forward graph
    channels: int
    stride: int
    # Layers of one group share a gradient graph: the one cut after the group's last layer.
    # Grouping the layers inside one inception block costs little and saves many graphs.
    group: str | None = None


@dataclass
class Backbone:
    """A forward graph from the backbone's own input (already preprocessed) to its layers."""

    name: str
    forward: onnx.ModelProto  # one input: NCHW float32 in the network's own convention
    layers: list[DreamLayer]  # in forward order, deepest last
    preprocessing: Preprocessing
    default_layers: dict[str, float]
    weight_names: frozenset[str]  # initializers that are parameters (go to the weights file)
    source: dict[str, str] = field(default_factory=dict)
    max_size: int = 4096
    declared_size: int | None = None  # the square input side the source file declares, if any
    logits: str | None = None  # the forward graph's tensor of ImageNet class scores, where the weights have a head

    @property
    def input_name(self) -> str:
        return self.forward.graph.input[0].name
