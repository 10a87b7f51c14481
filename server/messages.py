"""Messages to engine values and back: the conversions of the gRPC adapter, nothing more.

`spec_from_request` turns a DreamRequest into the engine's DreamSpec (the proto's
zeros become None, "the default"); the `*_message` functions turn the engine's
events and results into responses. Every check lives in the engine's planning step.
"""

from __future__ import annotations

from dreamstream.server.engine import DreamPlan, DreamSpec, Octave, Step
from dreamstream.server.engine.classify import Classification
from dreamstream.server.engine.request import ChannelMode
from dreamstream.server.refusals import InvalidRequest
from dreamstream.v1 import dream_pb2
from dreamstream.wire import UnknownFormat, format_of_enum

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


def frame_message(octave: Octave, data: bytes, plan: DreamPlan) -> dream_pb2.DreamResponse:
    height, width = octave.image.shape[:2]
    return dream_pb2.DreamResponse(
        frame=dream_pb2.Frame(
            octave=octave.octave,
            octaves=octave.octaves,
            width=width,
            height=height,
            image=data,
            format=plan.frame_format.enum,
            final=octave.final,
            round=octave.round,
        )
    )
