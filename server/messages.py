"""Messages to engine values and back: the conversions of the gRPC adapter, nothing more.

`spec_from_request` (and `video_spec_from_settings`, `zoom_spec_from_request`) turn
requests into the engine's specs (the proto's zeros become None, "the default"); the
`*_message` and `*_response` functions turn the data plane's events and results into
responses. Every check lives in the engine's planning step.
"""

from __future__ import annotations

from collections.abc import Callable

from dreamstream.server.dataplane import AnimationEvent, DreamEvent, EncodedFrame, EncodedOctave, Started
from dreamstream.server.engine import DreamPlan, DreamSpec, Step
from dreamstream.server.engine.classify import Classification
from dreamstream.server.engine.request import ChannelMode
from dreamstream.server.engine.tiling import MAX_TILED_SIDE
from dreamstream.server.engine.video import BlendMode, VideoSpec
from dreamstream.server.engine.zoom import ZoomSpec
from dreamstream.server.models import Model, ModelRepository
from dreamstream.server.refusals import InvalidRequest
from dreamstream.v1 import dream_pb2
from dreamstream.wire import UnknownFormat, format_of_enum

_BLEND_MODES = {
    dream_pb2.BLEND_MODE_UNSPECIFIED: BlendMode.FIXED,
    dream_pb2.BLEND_MODE_FIXED: BlendMode.FIXED,
    dream_pb2.BLEND_MODE_LOOP: BlendMode.LOOP,
    dream_pb2.BLEND_MODE_RANDOM: BlendMode.RANDOM,
}

_CHANNEL_MODES = {
    dream_pb2.CHANNEL_MODE_UNSPECIFIED: None,
    dream_pb2.CHANNEL_MODE_STRONGEST: ChannelMode.STRONGEST,
    dream_pb2.CHANNEL_MODE_WEAKEST: ChannelMode.WEAKEST,
    dream_pb2.CHANNEL_MODE_AVERAGE: ChannelMode.AVERAGE,
}


def spec_from_request(request: dream_pb2.DreamRequest) -> DreamSpec:
    """The request as the engine's DreamSpec: the proto's zeros become None ("the default")."""
    try:
        frame_format = format_of_enum(request.format)
    except UnknownFormat as error:
        raise InvalidRequest(str(error), field="format") from None
    if request.channel_mode not in _CHANNEL_MODES:
        raise InvalidRequest(
            f"unknown channel_mode {request.channel_mode}: use strongest, weakest or average", field="channel_mode"
        )
    return DreamSpec(
        image=request.image or None,
        noise_size=(request.height, request.width) if (request.width or request.height) else None,
        model=request.model,
        layers=dict(request.layers) or None,
        octaves=request.octaves or None,
        octave_scale=request.octave_scale or None,
        steps_per_octave=request.steps_per_octave or None,
        step_size=request.step_size or None,
        jitter=request.jitter if request.HasField("jitter") else None,
        seed=request.seed,
        max_size=request.max_size or None,
        frame_format=frame_format,
        guide=request.guide or None,
        channels={layer: tuple(chosen.channels) for layer, chosen in request.channels.items()} or None,
        channel_mode=_CHANNEL_MODES[request.channel_mode],
        channel_count=request.channel_count or None,
        rank_channels_per_octave=request.rank_channels_per_octave,
        original_colors=request.original_colors,
        lap_levels=request.lap_levels or None,
        tv_weight=request.tv_weight or None,
        octaves_above=request.octaves_above or None,
        return_largest=request.return_largest,
        repeat=request.repeat or None,
        tile_size=request.tile_size or None,
        tile_overlap=request.tile_overlap if request.HasField("tile_overlap") else None,
    )


def video_spec_from_settings(settings: dream_pb2.VideoSettings) -> VideoSpec:
    if settings.blend_mode not in _BLEND_MODES:
        raise InvalidRequest(
            f"unknown blend mode {settings.blend_mode}: use FIXED, LOOP or RANDOM", field="settings.blend_mode"
        )
    return VideoSpec(
        dream=spec_from_request(settings.dream),
        blend=settings.blend,
        blend_mode=_BLEND_MODES[settings.blend_mode],
        flow=settings.flow,
        layer_schedule=tuple(settings.layer_schedule),
        window=settings.window or None,
    )


def zoom_spec_from_request(request: dream_pb2.ZoomRequest) -> ZoomSpec:
    return ZoomSpec(
        dream=spec_from_request(request.dream),
        frames=request.frames,
        zoom=request.zoom if request.HasField("zoom") else None,
        rotate=request.rotate,
        shift=(request.shift_x, request.shift_y),
    )


def dream_response(event: DreamEvent) -> dream_pb2.DreamResponse | None:
    """The DreamResponse of one event of a dream; None for one the protocol does not carry (Queued)."""
    if isinstance(event, Started):
        return started_message(event.plan, event.request_id)
    if isinstance(event, Step):
        return progress_message(event)
    if isinstance(event, EncodedOctave):
        return frame_message(event)
    return None


def animation_frame(event: AnimationEvent) -> dream_pb2.AnimationFrame | None:
    """The AnimationFrame of one event of a video or zoom; None for the others (Queued, Started)."""
    if not isinstance(event, EncodedFrame):
        return None
    frame = event.frame
    height, width = frame.image.shape[:2]
    return dream_pb2.AnimationFrame(
        index=frame.index,
        width=width,
        height=height,
        image=event.data,
        format=event.format.enum,
        blend=frame.blend,
        layers=frame.layers,
        elapsed_seconds=frame.elapsed,
    )


def video_response(event: AnimationEvent) -> dream_pb2.DreamVideoResponse | None:
    frame = animation_frame(event)
    return None if frame is None else dream_pb2.DreamVideoResponse(frame=frame)


def zoom_response(event: AnimationEvent) -> dream_pb2.ZoomResponse | None:
    frame = animation_frame(event)
    return None if frame is None else dream_pb2.ZoomResponse(frame=frame)


def models_message(models: ModelRepository, untiled_limit: Callable[[Model], int]) -> dream_pb2.ListModelsResponse:
    """The served models with their layers, and those refused with the reason (ListModels)."""
    return dream_pb2.ListModelsResponse(
        models=[
            dream_pb2.Model(
                name=model.manifest.name,
                backbone=model.manifest.backbone,
                layers=[
                    dream_pb2.Layer(name=layer.name, channels=layer.channels, stride=layer.stride)
                    for layer in model.manifest.layers
                ],
                default_layers=model.manifest.default_layers,
                min_size=model.manifest.min_size,
                max_size=MAX_TILED_SIDE,
                supports_guide=all(layer.guide_graph for layer in model.manifest.layers),
                max_untiled_size=untiled_limit(model),
                can_classify=model.manifest.classifier is not None,
            )
            for model in models
        ],
        default_model=models.default_name,
        unavailable_models=[
            dream_pb2.UnavailableModel(name=name, problem=problem) for name, problem in models.refused.items()
        ],
    )


def classify_message(result: Classification) -> dream_pb2.ClassifyResponse:
    return dream_pb2.ClassifyResponse(
        model=result.model,
        classes=[
            dream_pb2.ClassProbability(label=cls.label, probability=cls.probability, index=cls.index)
            for cls in result.classes
        ],
    )


def started_message(plan: DreamPlan, request_id: str) -> dream_pb2.DreamResponse:
    params = plan.params
    return dream_pb2.DreamResponse(
        started=dream_pb2.DreamStarted(
            request_id=request_id,
            model=plan.model.name,
            layers=dict(params.layers),
            octave_sizes=[dream_pb2.ImageSize(width=width, height=height) for height, width in plan.sizes],
            octave_scale=params.octave_scale,
            steps_per_octave=params.steps_per_octave,
            step_size=params.step_size,
            jitter=params.jitter,
            seed=params.seed,
            format=plan.frame_format.enum,
            output_size=dream_pb2.ImageSize(width=plan.size[1], height=plan.size[0]),
        )
    )


def progress_message(step: Step) -> dream_pb2.DreamResponse:
    return dream_pb2.DreamResponse(
        progress=dream_pb2.Progress(
            octave=step.octave,
            octaves=step.octaves,
            step=step.step,
            steps_per_octave=step.steps,
            loss=step.loss,
            elapsed_seconds=step.elapsed,
            done=step.done,
            round=step.round,
            tiles=step.tiles,
        )
    )


def frame_message(event: EncodedOctave) -> dream_pb2.DreamResponse:
    octave = event.octave
    height, width = octave.image.shape[:2]
    return dream_pb2.DreamResponse(
        frame=dream_pb2.Frame(
            octave=octave.octave,
            octaves=octave.octaves,
            width=width,
            height=height,
            image=event.data,
            format=event.format.enum,
            final=octave.final,
            round=octave.round,
        )
    )
