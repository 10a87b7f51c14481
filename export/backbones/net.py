"""The scaffolding every built-in recipe shares: a graph being built, its dream layers
in forward order, and the spatial stride reached so far."""

from __future__ import annotations

from onnx import TensorProto

from dreamstream.export.backbone import Backbone, DreamLayer
from dreamstream.export.backbones.source import WeightSource
from dreamstream.export.graph import GraphBuilder, make_model, tensor_info
from dreamstream.modeldir import Preprocessing


class NetBuilder:
    """Recipes add nodes to `g`, call `record` for each dream layer, and `backbone` at the end."""

    def __init__(self, source: WeightSource, input_name: str = "pixels") -> None:
        self.g = GraphBuilder()
        self.source = source
        self.input = input_name
        self.layers: list[DreamLayer] = []
        self.stride = 1  # input pixels per activation pixel at the current point of the network

    def record(self, name: str, tensor: str, channels: int, group: str | None = None) -> str:
        """Make `tensor` a dream layer called `name`, at the current stride."""
        self.layers.append(DreamLayer(name, tensor, channels, self.stride, group))
        return tensor

    def backbone(
        self, name: str, preprocessing: Preprocessing, default_layers: dict[str, float], license: str
    ) -> Backbone:
        forward = make_model(
            self.g,
            name,
            [tensor_info(self.input, TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [tensor_info(layer.tensor, TensorProto.FLOAT, None) for layer in self.layers],
        )
        return Backbone(
            name=name,
            forward=forward,
            layers=self.layers,
            preprocessing=preprocessing,
            default_layers=dict(default_layers),
            weight_names=frozenset(self.g.weight_names),
            source={"weights": self.source.origin, "license": license},
        )
