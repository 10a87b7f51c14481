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
        self.logits: str | None = None

    def record(self, name: str, tensor: str, channels: int, group: str | None = None) -> str:
        """Make `tensor` a dream layer called `name`, at the current stride."""
        self.layers.append(DreamLayer(name, tensor, channels, self.stride, group))
        return tensor

    def classifier_head(self, x: str, weight_key: str, bias_key: str, weight_shape: tuple[int, ...]) -> None:
        """The classifier on `x`, where the weights have it: global average pooling, then a fully
        connected layer whose weight is stored as `weight_shape` (classes first)."""
        if not self.source.has(weight_key):
            return
        classes = weight_shape[0]
        weight = self.source.get(weight_key, weight_shape).reshape(classes, -1)
        bias = self.source.get(bias_key, (classes,))
        pooled = self.g.op("Flatten", self.g.op("GlobalAveragePool", x, hint="head_pool"), axis=1)
        weights = (self.g.weight(weight_key, weight), self.g.weight(bias_key, bias))
        self.logits = self.g.op("Gemm", pooled, *weights, hint="logits", transB=1)

    def _outputs(self) -> list[str]:
        """The dream layers' tensors, and the class scores where there is a classifier."""
        return [layer.tensor for layer in self.layers] + ([self.logits] if self.logits else [])

    def backbone(
        self, name: str, preprocessing: Preprocessing, default_layers: dict[str, float], license: str
    ) -> Backbone:
        forward = make_model(
            self.g,
            name,
            [tensor_info(self.input, TensorProto.FLOAT, ["N", 3, "H", "W"])],
            [tensor_info(tensor, TensorProto.FLOAT, None) for tensor in self._outputs()],
        )
        return Backbone(
            name=name,
            forward=forward,
            layers=self.layers,
            preprocessing=preprocessing,
            default_layers=dict(default_layers),
            weight_names=frozenset(self.g.weight_names),
            source={"weights": self.source.origin, "license": license},
            logits=self.logits,
        )
