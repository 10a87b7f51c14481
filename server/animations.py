"""The gRPC adapter of the animation calls, DreamVideo and Zoom: proto -> engine -> frames -> proto.

`DreamService` takes these methods from `AnimationCalls`; as in `service`, this
module only converts messages and moves frames, and the engine
(`engine.video`, `engine.zoom`) decides everything about the dreams.

One worker thread dreams a whole animation, one frame after the other (each
frame depends on the last), and holds one of the server's dream slots while it
does. At most `window` frames are in flight: for a video, the server reads the
next input frame only when fewer than `window` frames are read and not yet
answered; for a zoom, the worker makes the next frame only when fewer than
`window` are made and not yet sent. Sending waits for the client to read
(gRPC's flow control), so a slow client slows the dream down instead of
filling the server's memory.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing

import grpc

from dreamstream.server import imaging
from dreamstream.server.admission import Admission, Control
from dreamstream.server.engine import DreamCancelled, DreamEngine
from dreamstream.server.engine.video import BlendMode, DreamedFrame, VideoDreamer, VideoSpec, plan_video
from dreamstream.server.engine.zoom import ZoomSpec, plan_zoom, zoom_frames
from dreamstream.server.error_status import abort, call_request_id
from dreamstream.server.memory import give_back_free_memory
from dreamstream.server.messages import spec_from_request
from dreamstream.server.refusals import InvalidRequest, NotReady
from dreamstream.v1 import dream_pb2
from dreamstream.wire import ImageFormat

log = logging.getLogger(__name__)

_BLEND_MODES = {
    dream_pb2.BLEND_MODE_UNSPECIFIED: BlendMode.FIXED,
    dream_pb2.BLEND_MODE_FIXED: BlendMode.FIXED,
    dream_pb2.BLEND_MODE_LOOP: BlendMode.LOOP,
    dream_pb2.BLEND_MODE_RANDOM: BlendMode.RANDOM,
}
ZOOM_WINDOW = 4  # zoom frames made ahead of the client
_END = object()


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


def animation_frame(frame: DreamedFrame, data: bytes, fmt: ImageFormat) -> dream_pb2.AnimationFrame:
    height, width = frame.image.shape[:2]
    return dream_pb2.AnimationFrame(
        index=frame.index,
        width=width,
        height=height,
        image=data,
        format=fmt.enum,
        blend=frame.blend,
        layers=frame.layers,
        elapsed_seconds=frame.elapsed,
    )


async def _read_settings(requests: AsyncIterator[dream_pb2.DreamVideoRequest]) -> dream_pb2.VideoSettings:
    first = await anext(requests, None)
    if first is None or first.WhichOneof("message") != "settings":
        raise InvalidRequest("a DreamVideo call starts with one message holding settings", field="settings")
    return first.settings


async def _read_frame(requests: AsyncIterator[dream_pb2.DreamVideoRequest]) -> bytes | None:
    """The next input frame; None once the client has sent its last."""
    message = await anext(requests, None)
    if message is None:
        return None
    if message.WhichOneof("message") != "frame":
        raise InvalidRequest(
            "a DreamVideo call has one settings message, first: the messages after it hold frames", field="settings"
        )
    return message.frame


async def _read_frames(
    requests: AsyncIterator[dream_pb2.DreamVideoRequest], inbox: queue.SimpleQueue, window: asyncio.Semaphore
) -> None:
    """Move input frames into `inbox`, one only when the window has room; then the end mark."""
    try:
        while True:
            await window.acquire()
            frame = await _read_frame(requests)
            if frame is None:
                break
            inbox.put(frame)
    except Exception as error:  # the worker raises it in its thread, which ends the call
        inbox.put(error)
    finally:
        inbox.put(_END)


def _inbox_frames(inbox: queue.SimpleQueue) -> Iterator[bytes]:
    while (item := inbox.get()) is not _END:
        if isinstance(item, Exception):
            raise item
        yield item


def _windowed(
    frames: Iterator[DreamedFrame], window: threading.Semaphore, cancel: threading.Event
) -> Iterator[DreamedFrame]:
    """`frames`, the next one made only when the window has room."""
    while True:
        window.acquire()
        if cancel.is_set():
            return
        frame = next(frames, None)
        if frame is None:
            return
        yield frame


class AnimationCalls:
    """DreamVideo and Zoom, for DreamService (which holds the engine, its admission, its pools, the
    controls that stop admitted dreams and the writer that gives up on a client that reads nothing)."""

    _engine: DreamEngine
    _admission: Admission
    _controls: set[Control]
    _dreamers: ThreadPoolExecutor
    _imaging: ThreadPoolExecutor
    _send: Callable[[grpc.aio.ServicerContext, object], Awaitable[None]]

    async def DreamVideo(
        self, request_iterator: AsyncIterator[dream_pb2.DreamVideoRequest], context: grpc.aio.ServicerContext
    ) -> None:

        request_id = call_request_id(context)
        reader = None
        try:
            self._check_loaded()
            plan = plan_video(video_spec_from_settings(await _read_settings(request_iterator)), self._engine)
            first = await _read_frame(request_iterator)
            if first is None:
                return
            # Every frame has the first one's size (the dreamer refuses others): its plan says
            # what the whole video costs, and refuses it before it takes a slot.
            memory = self._engine.plan(plan.frame_spec(0, first)).memory
            inbox: queue.SimpleQueue = queue.SimpleQueue()
            inbox.put(first)
            window = asyncio.Semaphore(plan.window - 1)  # the first frame holds one place
            reader = asyncio.create_task(_read_frames(request_iterator, inbox, window))
            dreamer = VideoDreamer(self._engine, plan)
            frames = self._animate(
                lambda cancel: dreamer.dream_frames(_inbox_frames(inbox), cancel),
                plan.frame_format,
                memory,
                sent=window.release,
                stop=lambda: inbox.put(_END),
            )
            async with aclosing(frames):
                async for frame in frames:
                    await self._send(context, dream_pb2.DreamVideoResponse(frame=frame))
        except Exception as error:
            await abort(context, error, request_id)
        finally:
            if reader is not None:
                reader.cancel()

    async def Zoom(self, request: dream_pb2.ZoomRequest, context: grpc.aio.ServicerContext) -> None:

        request_id = call_request_id(context)
        try:
            self._check_loaded()
            plan = plan_zoom(zoom_spec_from_request(request), self._engine)
            window = threading.Semaphore(ZOOM_WINDOW)
            frames = self._animate(
                lambda cancel: _windowed(zoom_frames(self._engine, plan, cancel), window, cancel),
                plan.first.frame_format,
                plan.first.memory,
                sent=window.release,
                stop=window.release,
            )
            async with aclosing(frames):
                async for frame in frames:
                    await self._send(context, dream_pb2.ZoomResponse(frame=frame))
        except Exception as error:
            await abort(context, error, request_id)

    def _check_loaded(self) -> None:
        if not self._engine.models.loaded:
            raise NotReady("the server is still loading its models; retry in a moment")

    async def _animate(
        self,
        produce: Callable[[threading.Event], Iterator[DreamedFrame]],
        fmt: ImageFormat,
        memory: int,
        *,
        sent: Callable[[], None],
        stop: Callable[[], None],
    ) -> AsyncIterator[dream_pb2.AnimationFrame]:
        """Run `produce` in a worker thread, holding one dream slot and `memory` bytes of the
        budget, and yield its frames, encoded, in order.

        `sent` is called after each frame is written; `stop` when the stream ends for any
        reason, to wake a worker waiting for input or for room in the window.
        """

        await self._admission.acquire(memory)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        control = Control()
        cancel = control.cancel

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                cancel.set()

        def work() -> None:
            try:
                for frame in produce(cancel):
                    # Encoding runs beside the dream, which goes on with the next frame.
                    put((frame, self._imaging.submit(imaging.encode, frame.image, fmt)))
            except DreamCancelled as stopped:
                log.info("animation %s", stopped)
                if control.stopped_by is not None:  # the server stopped it (draining): say why
                    put(control.stopped_by)
            except Exception as error:  # handed to the stream, which answers with its status
                put(error)
            finally:
                give_back_free_memory()  # before the slot (and its share of the budget) is freed
                put(_END)

        try:
            worker = loop.run_in_executor(self._dreamers, work)
        except BaseException:
            self._admission.release(memory)
            raise
        self._controls.add(control)

        def finished(_: object) -> None:
            self._controls.discard(control)
            self._admission.release(memory)

        worker.add_done_callback(finished)
        try:
            while (item := await events.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                frame, encoded = item
                yield animation_frame(frame, await asyncio.wrap_future(encoded), fmt)
                sent()
        finally:
            # The client went away, its deadline passed, or the animation ended: the worker
            # stops before its next step, or wakes up and stops if it waits for a frame.
            cancel.set()
            stop()
