"""The planning step: a `DreamSpec` becomes a checked `DreamPlan`, or a refusal.

Everything about a request is decided here, once: the model it runs on, the
defaults, every range and layer name, the picture's size (from its header: no
pixel is decoded while planning), the octave sizes and the step graph that
serves the layers. Planning is cheap and opens no session, so a request is
refused or admitted before it costs anything; the picture is decoded only when
the dream runs (`Start.pixels`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from dreamstream.server import imaging
from dreamstream.server.engine.fitting import SizeFit
from dreamstream.server.engine.limits import DEFAULT_LIMITS, Limits, decode_memory, step_memory
from dreamstream.server.engine.objectives import ChannelSelection, Guide, channel_weights, plan_channels, plan_guide
from dreamstream.server.engine.octaves import octave_sizes
from dreamstream.server.engine.request import DEFAULT_MAX_SIZE, DreamParams, DreamSpec, resolve_params
from dreamstream.server.engine.tiling import MAX_TILED_SIDE, Tiling, plan_tiling, tiled_memory
from dreamstream.server.models import Model, ModelRepository
from dreamstream.server.refusals import InvalidRequest, TooCostly, did_you_mean, shown
from dreamstream.wire import ImageFormat

# Noise to dream on when there is no picture: mid grey with a little texture.
_NOISE_MEAN = 0.5
_NOISE_SPREAD = 0.1


@dataclass(frozen=True)
class Start:
    """The picture a dream starts from, at its planned (height, width).

    One of: encoded bytes (`data`), decoded pixels (`array`), or neither (seeded noise).
    """

    size: tuple[int, int]
    data: bytes | None = field(default=None, repr=False)
    array: np.ndarray | None = field(default=None, repr=False)
    max_size: int = 0  # with `data`: the longer side it is scaled down to
    input_pixels: int = 0  # with `data`: the pixels it decodes to before scaling
    max_input_pixels: int = imaging.MAX_INPUT_PIXELS

    @property
    def is_noise(self) -> bool:
        return self.data is None and self.array is None

    def pixels(self, rng: np.random.Generator) -> np.ndarray:
        """The starting picture, HxWx3 float32 RGB in [0, 1]; noise is drawn from `rng`."""
        if self.array is not None:
            return self.array
        if self.data is not None:
            return imaging.decode(self.data, self.max_size, self.max_input_pixels)
        height, width = self.size
        return (_NOISE_MEAN + rng.uniform(-_NOISE_SPREAD, _NOISE_SPREAD, (height, width, 3))).astype(np.float32)


@dataclass(frozen=True)
class DreamPlan:
    """A checked dream, ready to run: everything `DreamEngine.run` needs."""

    model: Model
    params: DreamParams
    start: Start
    sizes: tuple[tuple[int, int], ...]  # (height, width) of each octave, smallest first
    step_graph: str  # the fused step graph that runs, chosen for the layer weights
    layer_weights: np.ndarray
    channel_weights: np.ndarray  # before any ranking of `channels`
    frame_format: ImageFormat
    channels: ChannelSelection = ChannelSelection()
    guide: Guide | None = None
    # The gradient graph that runs instead of the step graph when a control reshapes the
    # gradient (guide, lap_levels, tv_weight); None: the fused step graph, the fast path.
    gradient_graph: str | None = None
    tiling: Tiling | None = None  # None: each step runs on the whole picture
    memory: int = 0  # bytes the dream is expected to take at most (see `dream_memory`)

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the result: the picture's own size, or the largest octave's
        with return_largest."""
        return self.sizes[-1] if self.params.return_largest else self.start.size

    @property
    def steps(self) -> int:
        """Ascent steps in the whole dream."""
        return self.params.steps_per_octave * len(self.sizes) * self.params.rounds

    @property
    def cost(self) -> int:
        """The ascent's work in pixel-steps: each octave's pixels times its steps, in every round."""
        return self.params.rounds * self.params.steps_per_octave * sum(height * width for height, width in self.sizes)


def plan_dream(spec: DreamSpec, models: ModelRepository, limits: Limits = DEFAULT_LIMITS) -> DreamPlan:
    """Check `spec` against its model and the server's limits; raises a Refusal that says what to change."""
    model = models.get(spec.model)
    manifest = model.manifest
    params = resolve_params(spec, manifest.default_layers)
    layer_weights = _layer_weights(model, params.layers)
    start = _start(spec, model, limits)
    height, width = start.size
    fit = SizeFit.of(manifest)
    floor = fit.octave_floor(start.size)
    sizes = octave_sizes(height, width, params.octaves, params.octave_scale, floor, params.octaves_above)
    if max(sizes[-1]) > MAX_TILED_SIDE:
        raise InvalidRequest(
            f"{params.octaves_above} octave(s) above the picture reach {sizes[-1][1]}x{sizes[-1][0]} px, "
            f"more than the {MAX_TILED_SIDE} px per side a dream may have: lower octaves_above or max_size",
            reason="IMAGE_TOO_LARGE",
            field="octaves_above",
        )
    channels = plan_channels(spec, manifest, params.layers)
    guide = plan_guide(spec, model, params.layers, limits.max_input_pixels)
    reshaped = params.lap_levels or params.tv_weight
    plan = DreamPlan(
        model=model,
        params=params,
        start=start,
        sizes=sizes,
        step_graph=model.step_graph_for(params.layers),
        layer_weights=layer_weights,
        channel_weights=channel_weights(manifest, channels),
        frame_format=spec.frame_format,
        channels=channels,
        guide=guide,
        gradient_graph=guide.graph if guide else model.graph_for(params.layers) if reshaped else None,
        tiling=plan_tiling(
            manifest,
            fit.size(sizes[-1]),
            spec.tile_size,
            spec.tile_overlap,
            limits,
            stride=model.serving_layer(params.layers)[0].stride,
        ),
    )
    plan = dataclasses.replace(plan, memory=dream_memory(plan, limits))
    _check_costs(plan, limits)
    return plan


def dream_memory(plan: DreamPlan, limits: Limits) -> int:
    """Bytes the dream is expected to take at most: decoding its picture, or its largest step
    (octaves above the picture are larger than the picture; each octave is stepped at the size
    it is padded to, see `fitting`)."""
    fit = SizeFit.of(plan.model.manifest)
    largest = max(height * width for height, width in map(fit.size, plan.sizes))
    if plan.tiling is not None:
        return max(decode_memory(plan.start.input_pixels), tiled_memory(plan.tiling, largest, limits))
    return max(decode_memory(plan.start.input_pixels), step_memory(largest, limits.step_bytes_per_pixel))


def _check_costs(plan: DreamPlan, limits: Limits) -> None:
    """Refuse a dream whose work or memory is above the server's limits, with the numbers."""
    height, width = plan.size
    shape = f"{len(plan.sizes)} octave(s) up to {width}x{height} px x {plan.params.steps_per_octave} steps"
    if plan.cost > limits.max_cost:
        raise TooCostly(
            f"the dream costs {plan.cost:,} pixel-steps ({shape}), above this server's limit of "
            f"{limits.max_cost:,}: lower steps_per_octave, octaves or max_size",
            field="steps_per_octave",
        )
    if limits.memory_budget is not None and plan.memory > limits.memory_budget:
        raise TooCostly(
            f"the dream needs about {plan.memory / 2**20:,.0f} MiB ({width}x{height} px), above this server's "
            f"memory budget of {limits.memory_budget / 2**20:,.0f} MiB: lower max_size (or width and height)",
            reason="MEMORY_TOO_HIGH",
            field="max_size",
        )


def _layer_weights(model: Model, layers: Mapping[str, float]) -> np.ndarray:
    """One weight per manifest layer, zero for those not named."""
    manifest = model.manifest
    known = [layer.name for layer in manifest.layers]
    weights = np.zeros(len(known), np.float32)
    for name, weight in layers.items():
        if name not in known:
            raise InvalidRequest(
                f"unknown layer {shown(name)}{did_you_mean(name, known)} for model {manifest.name}: "
                f"its layers are {', '.join(known)}",
                reason="UNKNOWN_LAYER",
                field="layers",
            )
        if not math.isfinite(weight):
            raise InvalidRequest(
                f"layer {shown(name)} has weight {weight}: use a finite number", reason="OUT_OF_RANGE", field="layers"
            )
        weights[manifest.layer_index(name)] = weight
    if not weights.any():
        raise InvalidRequest(
            "every layer weight is zero: give at least one layer a non-zero weight",
            reason="NO_LAYER_WEIGHT",
            field="layers",
        )
    return weights


def _start(spec: DreamSpec, model: Model, limits: Limits) -> Start:
    """The starting picture and its size, checked against the model's size limits."""
    manifest = model.manifest
    given = [name for name, value in (("image", spec.image), ("pixels", spec.pixels)) if value is not None]
    if given and spec.noise_size is not None:
        raise InvalidRequest("send an image or a width and height, not both", field="image")
    if spec.image is not None:
        max_size = _max_size(spec, model)
        header = imaging.probe(spec.image, limits.max_input_pixels)
        width, height = imaging.fit(header.width, header.height, max_size)
        start = Start(
            (height, width),
            data=spec.image,
            max_size=max_size,
            input_pixels=header.width * header.height,
            max_input_pixels=limits.max_input_pixels,
        )
    elif spec.pixels is not None:
        start = Start(spec.pixels.shape[:2], array=spec.pixels)
    elif spec.noise_size is not None:
        height, width = spec.noise_size
        if height <= 0 or width <= 0:
            raise InvalidRequest(f"noise of {width}x{height} px: set width and height both above 0", field="width")
        start = Start((height, width))
    else:
        raise InvalidRequest(
            "the request has no image: send one, or set width and height (both above 0) to dream on noise",
            field="image",
        )
    height, width = start.size
    smallest = SizeFit.of(manifest).smallest_picture()
    if min(height, width) < smallest:
        raise InvalidRequest(
            f"the picture is {width}x{height} px; model {manifest.name} needs at least "
            f"{smallest} px on each side: send a larger picture",
            reason="IMAGE_TOO_SMALL",
            field="image",
        )
    if max(height, width) > MAX_TILED_SIDE:
        raise InvalidRequest(
            f"the picture is {width}x{height} px, too many pixels: a dream has at most {MAX_TILED_SIDE} px "
            f"per side (model {manifest.name} is tiled above {manifest.max_size}): lower max_size",
            reason="IMAGE_TOO_LARGE",
            field="max_size",
        )
    return start


def _max_size(spec: DreamSpec, model: Model) -> int:
    """The longer side an encoded picture is scaled down to; above the model's max_size it is tiled."""
    limit = MAX_TILED_SIDE
    if not spec.max_size:  # None or the proto's 0: the default
        return min(DEFAULT_MAX_SIZE, model.manifest.max_size)
    if spec.max_size < 0:
        raise InvalidRequest(f"max_size {spec.max_size} is negative: use 0 for the default", field="max_size")
    if spec.max_size > limit:
        raise InvalidRequest(
            f"max_size {spec.max_size} is above the {limit} px a dream may have (in tiles): use at most {limit}",
            reason="OUT_OF_RANGE",
            field="max_size",
        )
    return spec.max_size
