"""Video and zoom animations: the DreamVideo and Zoom calls, for both clients.

`DreamClient` and `AsyncDreamClient` take `dream_video` and `zoom` from
`AnimationCalls` and `AsyncAnimationCalls`. A video is sent frame by frame while
dreamed frames come back; the client keeps at most `window` frames unanswered,
so neither side holds more than a few frames however long the video.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Unpack

import grpc

from dreamstream.client.errors import from_rpc_error
from dreamstream.client.events import Frame
from dreamstream.client.retries import Attempts, RetryPolicy, stream_attempts, stream_attempts_async
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import format_of_enum

if TYPE_CHECKING:
    from dreamstream.client.client import DreamOptions, ImageInput

# `client` imports this module for the clients' base classes, so the request helpers of
# `client` are imported where they are used, not at the top.

DEFAULT_WINDOW = 4  # frames in flight; the server allows 1 to 32
Blend = float | Literal["loop", "random"]
_BLEND_MODES = {"loop": dream_pb2.BLEND_MODE_LOOP, "random": dream_pb2.BLEND_MODE_RANDOM}


@dataclass(frozen=True)
class AnimationFrame:
    """A dreamed frame of a video or a zoom animation, as the server encoded it."""

    index: int  # from 0, in the order the frames were sent or made
    width: int
    height: int
    data: bytes = field(repr=False)
    format: str  # "png", "jpeg" or "webp"
    blend: float  # the previous dreamed frame's share in this frame's start
    layers: Mapping[str, float]  # what this frame was dreamed on
    elapsed: float  # seconds the server spent on this frame

    # An encoded picture like a dream's Frame: the same ways to read and save it.
    image = Frame.image
    suffix = Frame.suffix
    save = Frame.save


def frame_from_message(frame: dream_pb2.AnimationFrame) -> AnimationFrame:
    return AnimationFrame(
        index=frame.index,
        width=frame.width,
        height=frame.height,
        data=frame.image,
        format=format_of_enum(frame.format).name,
        blend=frame.blend,
        layers=dict(frame.layers),
        elapsed=frame.elapsed_seconds,
    )


def video_settings(
    options: DreamOptions, blend: Blend, flow: bool, layer_schedule: Sequence[str], window: int
) -> dream_pb2.VideoSettings:
    """The settings message of a DreamVideo call; a bad option raises here, before any call."""
    from dreamstream.client.client import build_request

    if isinstance(blend, str):
        if blend not in _BLEND_MODES:
            raise ValueError(f"blend {blend!r}: use a number from 0 to 0.95, 'loop' or 'random'")
        mode, share = _BLEND_MODES[blend], 0.0
    else:
        mode, share = dream_pb2.BLEND_MODE_FIXED, float(blend)
    if isinstance(layer_schedule, str):
        raise TypeError("layer_schedule is a sequence of layer names, not one string")
    return dream_pb2.VideoSettings(
        dream=build_request(None, options),
        blend=share,
        blend_mode=mode,
        flow=flow,
        layer_schedule=list(layer_schedule),
        window=window,
    )


def zoom_request(
    image: ImageInput | None,
    frames: int,
    zoom: float,
    rotate: float,
    shift: tuple[float, float],
    options: DreamOptions,
) -> dream_pb2.ZoomRequest:
    from dreamstream.client.client import build_request

    return dream_pb2.ZoomRequest(
        dream=build_request(image, options),
        frames=frames,
        zoom=zoom,
        rotate=rotate,
        shift_x=shift[0],
        shift_y=shift[1],
    )


class AnimationCalls:
    """`dream_video` and `zoom` of DreamClient."""

    target: str
    _stub: dream_pb2_grpc.DreamServiceStub
    _auth: tuple[tuple[str, str], ...]  # the call metadata the connection's token asks for

    def dream_video(
        self,
        frames: Iterable[ImageInput],
        *,
        blend: Blend = 0.0,
        flow: bool = False,
        layer_schedule: Sequence[str] = (),
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> Iterator[AnimationFrame]:
        """Dream a video: send `frames` (pictures of one size) and yield one dreamed frame per frame, in order.

        `blend` is the previous dreamed frame's share in each frame's start (0: every
        frame alone), or "loop" or "random"; `flow` warps the previous dream along the
        scene's motion first; `layer_schedule` dreams frame i on layer_schedule[i mod n].
        The other options are `dream`'s. `frames` is read lazily, at most `window` frames
        ahead of the dreamed ones. Stopping the iteration early cancels the video.
        """
        settings = video_settings(options, blend, flow, layer_schedule, window)
        return self._video(settings, frames, window, timeout)

    def _video(
        self, settings: dream_pb2.VideoSettings, frames: Iterable[ImageInput], window: int, timeout: float | None
    ) -> Iterator[AnimationFrame]:
        from dreamstream.client.client import image_bytes

        room = threading.Semaphore(window)
        ended = threading.Event()

        def requests() -> Iterator[dream_pb2.DreamVideoRequest]:
            yield dream_pb2.DreamVideoRequest(settings=settings)
            for frame in frames:
                room.acquire()  # gRPC reads this iterator in its own thread: waiting here is backpressure
                if ended.is_set():
                    return
                yield dream_pb2.DreamVideoRequest(frame=image_bytes(frame))

        call = self._stub.DreamVideo(requests(), timeout=timeout, metadata=self._auth)
        try:
            for response in call:
                if response.WhichOneof("event") == "frame":
                    room.release()
                    yield frame_from_message(response.frame)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            ended.set()
            room.release()  # wakes the request thread if it waits, to see `ended`
            call.cancel()

    def zoom(
        self,
        image: ImageInput | None = None,
        *,
        frames: int,
        zoom: float = 1.05,
        rotate: float = 0.0,
        shift: tuple[float, float] = (0.0, 0.0),
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> Iterator[AnimationFrame]:
        """A zoom animation of `frames` frames from `image` (None: noise of `width` x `height`).

        Each frame is the previous dream zoomed by `zoom`, turned `rotate` degrees and
        its view moved by `shift` (x, y) pixels, then dreamed again; frames arrive as the
        server makes them. A few `steps_per_octave` per frame are usual.
        """
        request = zoom_request(image, frames, zoom, rotate, shift, options)
        return self._zoom(request, timeout)

    def _zoom(self, request: dream_pb2.ZoomRequest, timeout: float | None) -> Iterator[AnimationFrame]:
        def open_call(timeout: float | None) -> grpc.Call:
            return self._stub.Zoom(request, timeout=timeout, metadata=self._auth)

        # A replica refusing for now is skipped, as for a dream (no `retries`: a zoom has none).
        with contextlib.closing(stream_attempts(open_call, Attempts(RetryPolicy(), timeout), self.target)) as responses:
            for response in responses:
                if response.WhichOneof("event") == "frame":
                    yield frame_from_message(response.frame)


class AsyncAnimationCalls:
    """`dream_video` and `zoom` of AsyncDreamClient: async iterators."""

    target: str
    _stub: dream_pb2_grpc.DreamServiceStub
    _auth: tuple[tuple[str, str], ...]  # the call metadata the connection's token asks for

    def dream_video(
        self,
        frames: Iterable[ImageInput] | AsyncIterable[ImageInput],
        *,
        blend: Blend = 0.0,
        flow: bool = False,
        layer_schedule: Sequence[str] = (),
        window: int = DEFAULT_WINDOW,
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> AsyncIterator[AnimationFrame]:
        """Dream a video; `async for` the dreamed frames. See DreamClient.dream_video.
        `frames` may also be an async iterable."""
        settings = video_settings(options, blend, flow, layer_schedule, window)
        return self._video(settings, frames, window, timeout)

    async def _video(
        self,
        settings: dream_pb2.VideoSettings,
        frames: Iterable[ImageInput] | AsyncIterable[ImageInput],
        window: int,
        timeout: float | None,
    ) -> AsyncIterator[AnimationFrame]:
        from dreamstream.client.client import image_bytes

        room = asyncio.Semaphore(window)

        async def requests() -> AsyncIterator[dream_pb2.DreamVideoRequest]:
            yield dream_pb2.DreamVideoRequest(settings=settings)
            async for frame in _aiter(frames):
                await room.acquire()
                yield dream_pb2.DreamVideoRequest(frame=image_bytes(frame))

        call = self._stub.DreamVideo(requests(), timeout=timeout, metadata=self._auth)
        try:
            async for response in call:
                if response.WhichOneof("event") == "frame":
                    room.release()
                    yield frame_from_message(response.frame)
        except grpc.RpcError as error:
            raise from_rpc_error(error, self.target) from None
        finally:
            call.cancel()

    def zoom(
        self,
        image: ImageInput | None = None,
        *,
        frames: int,
        zoom: float = 1.05,
        rotate: float = 0.0,
        shift: tuple[float, float] = (0.0, 0.0),
        timeout: float | None = None,
        **options: Unpack[DreamOptions],
    ) -> AsyncIterator[AnimationFrame]:
        """A zoom animation; `async for` its frames. See DreamClient.zoom."""
        request = zoom_request(image, frames, zoom, rotate, shift, options)
        return self._zoom(request, timeout)

    async def _zoom(self, request: dream_pb2.ZoomRequest, timeout: float | None) -> AsyncIterator[AnimationFrame]:
        def open_call(timeout: float | None) -> grpc.aio.Call:
            return self._stub.Zoom(request, timeout=timeout, metadata=self._auth)

        responses = stream_attempts_async(open_call, Attempts(RetryPolicy(), timeout), self.target)
        try:
            async for response in responses:
                if response.WhichOneof("event") == "frame":
                    yield frame_from_message(response.frame)
        finally:
            await responses.aclose()


async def _aiter(items: Iterable[ImageInput] | AsyncIterable[ImageInput]) -> AsyncIterator[ImageInput]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item
