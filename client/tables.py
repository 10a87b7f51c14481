"""The layer table `dreamstream models` and `dreamstream layers` print."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol


class LayerRow(Protocol):
    name: str
    channels: int
    stride: int


def layer_table(layers: Iterable[LayerRow], default_layers: Mapping[str, float], indent: str = "") -> list[str]:
    """One line per layer (name, channels, stride, default weight), deepest last, with a header."""
    layers = list(layers)
    width = max(len("layer"), *(len(layer.name) for layer in layers))
    lines = [f"{indent}{'layer':<{width}}  channels  stride  default weight"]
    for layer in layers:
        weight = default_layers.get(layer.name)
        shown = f"{weight:g}" if weight is not None else ""
        lines.append(f"{indent}{layer.name:<{width}}  {layer.channels:>8}  {layer.stride:>6}  {shown}".rstrip())
    return lines
