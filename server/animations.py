"""The gRPC adapter of the animation calls, DreamVideo and Zoom: proto -> data plane -> frames -> proto.

`DreamService` takes these methods from `AnimationCalls`; as in `service`, this
module only converts messages: the data plane (`dataplane`) admits, runs and
records the animation, and the engine (`engine.video`, `engine.zoom`) decides
everything about the dreams. A DreamVideo call's messages become the settings and
a stream of frames, which the data plane reads only when its window has room.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from dreamstream.server.dataplane import Call, CallKind, DataPlane, Send
from dreamstream.server.error_status import call_request_id
from dreamstream.server.messages import video_response, video_spec_from_settings, zoom_response, zoom_spec_from_request
from dreamstream.server.refusals import InvalidRequest
from dreamstream.v1 import dream_pb2


async def read_settings(requests: AsyncIterator[dream_pb2.DreamVideoRequest]) -> dream_pb2.VideoSettings:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("message") != "settings":
        raise InvalidRequest("a DreamVideo call starts with one message holding settings", field="settings")
    return first.settings


async def video_frames(requests: AsyncIterator[dream_pb2.DreamVideoRequest]) -> AsyncIterator[bytes]:
    """The input frames of a DreamVideo call, after its settings message."""
    async for message in requests:
        if message.WhichOneof("message") != "frame":
            raise InvalidRequest(
                "a DreamVideo call has one settings message, first: the messages after it hold frames",
                field="settings",
            )
        yield message.frame


class AnimationCalls:
    """DreamVideo and Zoom, for DreamService (which holds the data plane, the writer of a stream and
    the way a call's end becomes its status)."""

    _plane: DataPlane
    _writer: Callable[[grpc.aio.ServicerContext, Callable[[object], object | None]], Send]
    _serve: Callable[[Call, grpc.aio.ServicerContext, Callable[[], Awaitable[None]]], Awaitable[None]]

    async def DreamVideo(
        self, request_iterator: AsyncIterator[dream_pb2.DreamVideoRequest], context: grpc.aio.ServicerContext
    ) -> None:
        call = self._plane.call(CallKind.VIDEO, call_request_id(context))

        async def work() -> None:
            spec = video_spec_from_settings(await read_settings(request_iterator))
            await call.video(spec, video_frames(request_iterator), self._writer(context, video_response))

        await self._serve(call, context, work)

    async def Zoom(self, request: dream_pb2.ZoomRequest, context: grpc.aio.ServicerContext) -> None:
        call = self._plane.call(CallKind.ZOOM, call_request_id(context))
        await self._serve(
            call, context, lambda: call.zoom(zoom_spec_from_request(request), self._writer(context, zoom_response))
        )
