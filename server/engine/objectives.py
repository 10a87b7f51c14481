"""What a dream amplifies besides its layers: chosen channels and a guide picture.

Channels are chosen per layer, explicitly (`channels`: layer -> channel
indices) or automatically (neural-dream's channel modes: the `count` strongest,
weakest or middle channels of each dreamed layer, ranked by their mean
activation on the picture, once at the first octave or again at every octave).
Either way they become the graphs' `channel_weights`: 1 for a chosen channel, 0
for the others, 1 for every channel of a layer nothing is chosen for.

A guide swaps the objective for google/deepdream's guided one; its graph is
the model's `guide_graph` (see `dreamstream.modeldir`), and the guide picture is
decoded, at a size its features suit the layer, only when the dream runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dreamstream.modeldir import Manifest
from dreamstream.server import imaging
from dreamstream.server.engine.fitting import SizeFit
from dreamstream.server.engine.octaves import resize
from dreamstream.server.engine.request import DEFAULT_CHANNEL_COUNT, ChannelMode, DreamSpec
from dreamstream.server.engine.tiling import Tiling
from dreamstream.server.models import Model
from dreamstream.server.refusals import InvalidRequest

# The guide's activation at the dream layer gets about this many positions per side:
# enough to hold its features, few enough that matching every dream position against
# every guide position stays cheap (the match is a [positions x guide positions] product).
GUIDE_POSITIONS_PER_SIDE = 16


@dataclass(frozen=True)
class ChannelSelection:
    """Which channels of which layers the dream amplifies; empty: every channel."""

    explicit: Mapping[str, tuple[int, ...]] = field(default_factory=dict)  # layer -> channels
    mode: ChannelMode | None = None  # ranks the dreamed layers that have no explicit channels
    count: int = DEFAULT_CHANNEL_COUNT
    per_octave: bool = False  # rank again at every octave, on the octave's starting picture
    ranked_layers: tuple[str, ...] = ()  # the layers the mode ranks

    @property
    def ranked(self) -> bool:
        return bool(self.ranked_layers)


def plan_channels(spec: DreamSpec, manifest: Manifest, layers: Mapping[str, float]) -> ChannelSelection:
    """Check the spec's channel choice against the model and the dream's layers."""
    explicit: dict[str, tuple[int, ...]] = {}
    for name, channels in (spec.channels or {}).items():
        if name not in layers:
            raise InvalidRequest(
                f"channels are chosen for layer {name!r}, which the dream does not use: "
                f"add it to layers (it has {', '.join(layers)})",
                reason="UNKNOWN_LAYER",
                field="channels",
            )
        available = manifest.layer(name).channels
        chosen = tuple(sorted(set(int(channel) for channel in channels)))
        if not chosen:
            raise InvalidRequest(f"no channels given for layer {name!r}: list at least one", field="channels")
        wrong = [channel for channel in chosen if not 0 <= channel < available]
        if wrong:
            raise InvalidRequest(
                f"layer {name!r} has channels 0 to {available - 1}; {wrong} are out of range",
                reason="OUT_OF_RANGE",
                field="channels",
            )
        explicit[name] = chosen
    count = DEFAULT_CHANNEL_COUNT if spec.channel_count is None else spec.channel_count
    if spec.channel_count is not None and spec.channel_mode is None:
        raise InvalidRequest(
            "channel_count needs a channel_mode (strongest, weakest or average)", field="channel_count"
        )
    if count < 1:
        raise InvalidRequest(f"channel_count {count} is out of range: use 1 or more", field="channel_count")
    if spec.rank_channels_per_octave and spec.channel_mode is None:
        raise InvalidRequest("rank_channels_per_octave needs a channel_mode", field="rank_channels_per_octave")
    ranked = ()
    if spec.channel_mode is not None:
        ranked = tuple(name for name, weight in layers.items() if weight != 0 and name not in explicit)
    return ChannelSelection(explicit, spec.channel_mode, count, spec.rank_channels_per_octave, ranked)


def channel_weights(manifest: Manifest, selection: ChannelSelection, means: np.ndarray | None = None) -> np.ndarray:
    """The graphs' channel_weights for `selection`. `means` ([C_total] channel means of the
    picture) ranks the layers of a channel mode; without it they keep every channel."""
    weights = np.ones(manifest.channel_total, np.float32)
    for name, channels in selection.explicit.items():
        _keep(weights, manifest, name, np.asarray(channels, np.int64))
    for name in selection.ranked_layers if means is not None else ():
        layer = manifest.layer(name)
        layer_means = means[layer.channel_offset : layer.channel_offset + layer.channels]
        _keep(weights, manifest, name, ranked_channels(layer_means, selection.mode, selection.count))
    return weights


def ranking_picture(image: np.ndarray, tiling: Tiling | None, min_size: int) -> np.ndarray:
    """The picture (3xHxW) channels are ranked on: `image` itself, or for a tiled dream `image`
    scaled into one tile, since ranking runs the gradient graph on it whole."""
    if tiling is None:
        return image
    if tiling.fixed:
        return resize(image, tiling.size, tiling.size)
    height, width = image.shape[1:]
    scale = min(1.0, tiling.size / max(height, width))
    return resize(image, max(min_size, round(height * scale)), max(min_size, round(width * scale)))


def _keep(weights: np.ndarray, manifest: Manifest, name: str, channels: np.ndarray) -> None:
    """Zero every channel of layer `name` but `channels`."""
    layer = manifest.layer(name)
    block = weights[layer.channel_offset : layer.channel_offset + layer.channels]
    block[:] = 0.0
    block[channels] = 1.0


def ranked_channels(means: np.ndarray, mode: ChannelMode, count: int) -> np.ndarray:
    """The indices of `count` channels of one layer, chosen from their means by `mode`."""
    count = min(count, len(means))
    order = np.argsort(means, kind="stable")  # weakest first
    if mode is ChannelMode.STRONGEST:
        return order[::-1][:count]
    if mode is ChannelMode.WEAKEST:
        return order[:count]
    middle = (len(order) - count) // 2
    return order[middle : middle + count]


@dataclass(frozen=True)
class Guide:
    """A guide picture and the graph that dreams towards it."""

    data: bytes = field(repr=False)
    max_size: int  # the guide's longer side is scaled down to this
    graph: str
    max_pixels: int = imaging.MAX_INPUT_PIXELS  # the most it may decode to before scaling
    fixed_size: int = 0  # > 0: the model runs only on squares of this side; the guide is resized to one
    fit: SizeFit = SizeFit()  # the sides the model runs on otherwise; the guide is resized to fit them

    def pixels(self) -> np.ndarray:
        """The guide as the guide graph takes it: 1x3xhxw float32 RGB in [0, 1]."""
        picture = imaging.decode(self.data, self.max_size, self.max_pixels).transpose(2, 0, 1)
        if self.fixed_size:
            picture = resize(np.ascontiguousarray(picture), self.fixed_size, self.fixed_size)
        else:
            picture = self.fit.resized(np.ascontiguousarray(picture))
        return np.ascontiguousarray(picture[None], np.float32)


def plan_guide(
    spec: DreamSpec, model: Model, layers: Mapping[str, float], max_pixels: int = imaging.MAX_INPUT_PIXELS
) -> Guide | None:
    """The guide of `spec`, checked: a picture, a model exported with guide graphs, and
    dream layers in one group (the guide graphs cover one group each)."""
    if spec.guide is None:
        return None
    layer, focused = model.serving_layer(layers)
    if not layer.guide_graph:
        raise InvalidRequest(
            f"model {model.name} was exported without guide graphs: re-export it with this version "
            "of dreamstream to dream with a guide",
            reason="GUIDE_UNSUPPORTED",
            field="guide",
        )
    if not focused:
        raise InvalidRequest(
            f"a guided dream's layers must be in one group; {', '.join(layers)} are not: "
            "dream on the layers of one group (an inception block, say)",
            reason="GUIDE_LAYERS",
            field="layers",
        )
    try:
        header = imaging.probe(spec.guide, max_pixels)
    except imaging.ImageError as error:
        raise InvalidRequest(f"the guide: {error}", reason=error.reason, field="guide") from None
    manifest = model.manifest
    # Scaled down until the guide's activation has about GUIDE_POSITIONS_PER_SIDE positions
    # a side, never below the smallest picture the model takes.
    max_size = max(manifest.min_size, layer.stride * GUIDE_POSITIONS_PER_SIDE)
    if not manifest.fixed_size and min(imaging.fit(header.width, header.height, max_size)) < manifest.min_size:
        raise InvalidRequest(
            f"the guide is {header.width}x{header.height} px: model {manifest.name} needs a guide of at least "
            f"{manifest.min_size} px on each side once its longer side is at most {max_size} px",
            reason="IMAGE_TOO_SMALL",
            field="guide",
        )
    return Guide(spec.guide, max_size, layer.guide_graph, max_pixels, manifest.fixed_size, SizeFit.of(manifest))
