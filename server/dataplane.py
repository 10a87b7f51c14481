"""The data plane: every call, from every transport, enters here and is decided here.

A transport (the gRPC servicer, the HTTP gateway) converts its request into the
engine's transport-free values (`DreamSpec`, `VideoSpec`, `ZoomSpec`, picture bytes),
opens a `Call` on the `DataPlane`, and converts the events the call sends back
into its own messages. Everything else happens here, the same way for every call
and every transport:

- admission: one bounded line of slots and memory budget for dreams, videos,
  zooms and classifications alike (`admission`); refusals are `refusals.Refusal`s;
- the worker threads (ONNX Runtime releases the GIL), the encoding pool, and the
  bounded stream buffer: a worker runs at most STREAM_BUFFER events ahead of its
  reader, then waits, keeping its slot (memory per stream stays at a few frames);
- the slow-reader rule: a reader that takes nothing for `reader_timeout` seconds
  ends the call with `SlowReader`, freeing its slot;
- telemetry: one `DreamRecord` per call, with its kind, told to the listeners
  (Prometheus metrics, the access log); the running-call estimate that Busy's
  retry delay comes from; drain.

Nothing here knows gRPC or HTTP (tests/test_architecture.py keeps it so). A call's
outcome is named by the canonical status codes (OK, CANCELLED, and each
`RefusalKind`'s name; INTERNAL for anything else): the transports map the refusal
itself to their status, in their one place (`error_status` for gRPC).

Usage, from a transport::

    call = plane.call(CallKind.DREAM, request_id)
    async with call:  # records how the call ended, whatever happens inside
        await call.dream(spec, send)  # send(event) writes one event; raises CallerLeft if nobody reads

`call.dream` returns when the dream has finished and its last event was sent; it
raises the Refusal that ended the call (Busy, Draining, SlowReader, InvalidRequest,
...), CallCancelled after `call.cancel()`, CallerLeft when `send` said the caller is
gone, or any other exception for a failure of the server (INTERNAL).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import queue
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np

from dreamstream.server import imaging
from dreamstream.server.admission import Admission, Control
from dreamstream.server.engine import DreamCancelled, DreamEngine, DreamPlan, DreamSpec, Octave, Step
from dreamstream.server.engine.classify import Classification, classify
from dreamstream.server.engine.limits import decode_memory
from dreamstream.server.engine.video import (
    DreamedFrame,
    StepListener,
    VideoDreamer,
    VideoPlan,
    VideoSpec,
    plan_video,
)
from dreamstream.server.engine.zoom import ZoomPlan, ZoomSpec, plan_zoom, zoom_frames
from dreamstream.server.memory import give_back_free_memory
from dreamstream.server.models import ModelRepository
from dreamstream.server.refusals import Draining, NotReady, Refusal, SlowReader
from dreamstream.server.running import RunningDreams
from dreamstream.server.telemetry import DreamRecord, Telemetry
from dreamstream.wire import ImageFormat

log = logging.getLogger(__name__)

# Events a stream may hold that its reader has not taken yet: the worker waits beyond
# this (keeping its slot), so memory per stream stays at a few frames however slowly
# the caller reads. Four lets the ascent run a few steps ahead while a frame encodes.
STREAM_BUFFER = 4
# Seconds a stream may wait for its reader to take the next event before the call is
# stopped and its slot freed (`serve --reader-timeout`).
READER_TIMEOUT = 60.0
# Threads that encode frames beside the ascents.
ENCODERS = 2

_END = object()


class CallKind(enum.Enum):
    """What a call does; metrics and access lines carry its value."""

    DREAM = "dream"
    VIDEO = "video"
    ZOOM = "zoom"
    CLASSIFY = "classify"


class CallerLeft(Exception):
    """Raised by a transport's `send` when its caller is gone (cancelled, deadline, connection lost)."""


class CallCancelled(Exception):
    """The call was stopped through its handle, `Call.cancel()`."""


# The events a call sends, in order: Queued (only while it waits for a slot, each time its
# place changes), Started once it has its slot, then the work's own events.


@dataclass(frozen=True)
class Queued:
    """The call waits for a slot: `place` 1 runs next; `waiting` calls wait in all."""

    place: int
    waiting: int


@dataclass(frozen=True)
class Started:
    """The call has its slot and starts. `plan` is the dream's, or the first frame's for an animation;
    `frames` is the number of frames a zoom makes (None for a dream, and for a video: its caller decides)."""

    request_id: str
    kind: CallKind
    plan: DreamPlan
    frames: int | None = None


@dataclass(frozen=True)
class EncodedOctave:
    """A dream's picture at the end of an octave, encoded in the plan's format."""

    octave: Octave
    data: bytes = field(repr=False)
    format: ImageFormat


@dataclass(frozen=True)
class EncodedFrame:
    """One frame of a video or a zoom, encoded."""

    frame: DreamedFrame
    data: bytes = field(repr=False)
    format: ImageFormat


DreamEvent = Queued | Started | Step | EncodedOctave
AnimationEvent = Queued | Started | Step | EncodedFrame  # a Step of an animation is one of its current frame
# Writes one event to the caller, waiting while the caller's transport has no room (its
# flow control); raises CallerLeft when the caller is gone. It may drop events its
# transport has no form for (gRPC has no Queued message).
Send = Callable[[DreamEvent | AnimationEvent], Awaitable[None]]


def outcome_of(error: BaseException | None) -> str:
    """How a call ended, as the canonical status code name its record and metrics carry."""
    if error is None:
        return "OK"
    if isinstance(error, CallerLeft | CallCancelled | asyncio.CancelledError):
        return "CANCELLED"
    if isinstance(error, Refusal):
        return error.kind.name
    return "INTERNAL"


class DataPlane:
    """Admission, workers, stream buffers, telemetry and drain for the calls of one server.

    Every method runs on the server's event loop. `max_concurrent` calls run at once
    (each holds a worker thread), `max_queue` more wait; the engine's memory budget
    bounds what the running ones take together.
    """

    def __init__(
        self,
        engine: DreamEngine,
        *,
        max_concurrent: int = 1,
        max_queue: int = 4,
        reader_timeout: float = READER_TIMEOUT,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.engine = engine
        self.reader_timeout = reader_timeout
        self.telemetry = telemetry or Telemetry()
        self.running = RunningDreams()
        self.admission = Admission(
            max_concurrent, max_queue, engine.limits.memory_budget, self.running.seconds_until_one_ends
        )
        self._controls: set[Control] = set()
        self._workers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="dream")
        self._encoders = ThreadPoolExecutor(ENCODERS, thread_name_prefix="imaging")

    def call(self, kind: CallKind, request_id: str) -> Call:
        """A new call of `kind`; use it as `async with` so that its end is recorded."""
        return Call(self, kind, request_id)

    def models(self) -> ModelRepository:
        """The served models; NotReady while they are still loading."""
        if not self.engine.models.loaded:
            raise NotReady("the server is still loading its models; retry in a moment")
        return self.engine.models

    async def drain(self, grace: float) -> bool:
        """Take no new call, end the waiting ones, give the running ones `grace` seconds.

        Calls still running then are stopped with Draining. Returns whether every
        running call finished within the grace.
        """
        self.admission.drain()
        finished = await self.admission.wait_idle(grace)
        if not finished:
            for control in list(self._controls):
                control.stop(
                    Draining(f"the server shut down before the dream finished (it had {grace:g} s): retry (elsewhere)")
                )
            await self.admission.wait_idle(grace)
        return finished

    def close(self) -> None:
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._encoders.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True)
class _Picture:
    """A picture the worker made, to encode in `format`; `event_of` makes its event from the bytes."""

    pixels: np.ndarray
    format: ImageFormat
    event_of: Callable[[bytes], DreamEvent | AnimationEvent]


@dataclass(frozen=True)
class _Pending:
    """A picture handed over by the worker while it encodes: its event is made once the bytes are there."""

    event_of: Callable[[bytes], DreamEvent | AnimationEvent]
    encoded: Future[bytes]


class Call:
    """One call through the data plane: its record, its cancel handle, and the work it does.

    `async with call:` records the call's end (OK, CANCELLED, the refusal's code, or
    INTERNAL) for the metrics and the access log, before the exception goes on to the
    transport. Inside, run exactly one of `dream`, `video`, `zoom`, `classify`, the one
    of the call's kind; whatever happens before it (converting the request) is part of
    the call, so a request that cannot even be converted is counted too.
    """

    def __init__(self, plane: DataPlane, kind: CallKind, request_id: str) -> None:
        self.kind = kind
        self.request_id = request_id
        self.record = DreamRecord(request_id, kind=kind.value)
        self._plane = plane
        self._cancelled = asyncio.Event()
        self._control: Control | None = None

    async def __aenter__(self) -> Call:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if isinstance(error, CallerLeft):
            log.info("%s %s: %s", self.kind.value, self.request_id, error)
        self._plane.telemetry.ended(self.record, outcome_of(error))

    def cancel(self) -> None:
        """Stop the call: a waiting call leaves the line, a running one stops before its next step;
        the call then raises CallCancelled. Safe to call at any time, more than once."""
        self._cancelled.set()
        if self._control is not None:
            self._control.stop(CallCancelled("the dream was cancelled"))

    async def dream(self, spec: DreamSpec, send: Send) -> None:
        """Plan and dream `spec`, sending Queued*, Started, then Step and EncodedOctave events in order."""
        self._expect(CallKind.DREAM)
        self._plane.models()
        plan = self._plane.engine.plan(spec)
        self.record.planned(plan.model.name, plan.size, len(plan.sizes), plan.params.steps_per_octave)
        engine = self._plane.engine

        def produce(cancel: threading.Event, _: StepListener) -> Iterator[Step | Octave]:
            height, width = plan.size
            log.info(
                "dream %s on %s: %dx%d, %d octaves x %d steps, layers %s",
                self.request_id,
                plan.model.name,
                width,
                height,
                len(plan.sizes),
                plan.params.steps_per_octave,
                dict(plan.params.layers),
            )
            for event in engine.run(plan, cancel):
                yield event
            log.info("dream %s done in %.2f s", self.request_id, event.elapsed)

        def encode(item: object) -> _Picture | None:
            if not isinstance(item, Octave):
                return None  # a Step goes as it is
            return _Picture(item.image, plan.frame_format, lambda data: EncodedOctave(item, data, plan.frame_format))

        await self._run(produce, plan.memory, Started(self.request_id, self.kind, plan), send, encode=encode)

    async def video(self, spec: VideoSpec, frames: AsyncIterator[bytes], send: Send) -> None:
        """Dream each encoded frame of `frames` in turn, sending Queued*, Started, then each frame's Steps
        and its EncodedFrame.

        At most the plan's window of frames is read and not yet answered: `frames` is read
        only when there is room, so a client that sends faster than the server dreams waits.
        An exception `frames` raises (a malformed message: a Refusal) ends the call with it.
        """
        self._expect(CallKind.VIDEO)
        engine = self._plane.engine
        self._plane.models()
        plan: VideoPlan = plan_video(spec, engine)
        first = await anext(frames, None)
        if first is None:
            return  # a video without frames: nothing to dream
        # Every frame has the first one's size (the dreamer refuses others): its plan says
        # what the whole video costs, and refuses it before it takes a slot.
        first_plan = engine.plan(plan.frame_spec(0, first))
        self.record.planned(
            first_plan.model.name, first_plan.size, len(first_plan.sizes), first_plan.params.steps_per_octave
        )
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        inbox.put(first)
        window = asyncio.Semaphore(plan.window - 1)  # the first frame holds one place
        reader = asyncio.create_task(read_frames(frames, inbox, window))
        dreamer = VideoDreamer(engine, plan)
        try:
            await self._run(
                lambda cancel, on_step: dreamer.dream_frames(inbox_frames(inbox), cancel, on_step),
                first_plan.memory,
                Started(self.request_id, self.kind, first_plan),
                send,
                encode=self._frame_encoder(plan.frame_format),
                sent=window.release,
                stop=lambda: inbox.put(_END),
            )
        finally:
            reader.cancel()

    async def zoom(self, spec: ZoomSpec, send: Send) -> None:
        """Dream the zoom's frames one after the other, sending Queued*, Started, then each frame's Steps
        and its EncodedFrame."""
        self._expect(CallKind.ZOOM)
        engine = self._plane.engine
        self._plane.models()
        plan: ZoomPlan = plan_zoom(spec, engine)
        first = plan.first
        self.record.planned(first.model.name, first.size, len(first.sizes), first.params.steps_per_octave)
        await self._run(
            lambda cancel, on_step: zoom_frames(engine, plan, cancel, on_step),
            first.memory,
            Started(self.request_id, self.kind, first, frames=plan.frames),
            send,
            encode=self._frame_encoder(first.frame_format),
            frames=plan.frames,
        )

    async def classify(self, image: bytes, model: str = "", top: int | None = None) -> Classification:
        """The classes the network `model` (the default for "") sees in `image`, most probable first.

        Decoding a picture can cost hundreds of MB, so a classification takes a slot (and
        its decoding's share of the memory budget) from the same admission as the dreams:
        a burst of them waits in the same bounded line, or is refused as Busy.
        """
        self._expect(CallKind.CLASSIFY)
        # The model is looked up before the call takes a slot: a wrong name is refused at once.
        self.record.model = self._plane.models().get(model).name
        limits = self._plane.engine.limits
        header = imaging.probe(image, limits.max_input_pixels) if image else None
        memory = decode_memory(header.width * header.height) if header else 0
        if header:
            self.record.width, self.record.height = header.width, header.height
        await self._admit(memory, send=None)
        running = self._plane.running.started()
        try:
            result = await asyncio.to_thread(classify, self._plane.engine.models, image, model, top, limits)
        finally:
            self._plane.running.ended(running)
            self._plane.admission.release(memory)
        return result

    # The machinery every streaming call shares.

    def _expect(self, kind: CallKind) -> None:
        if kind is not self.kind:
            raise TypeError(f"a {self.kind.value} call cannot run a {kind.value}")

    @staticmethod
    def _frame_encoder(fmt: ImageFormat) -> Callable[[object], _Picture | None]:
        def encode(item: object) -> _Picture:
            assert isinstance(item, DreamedFrame)
            return _Picture(item.image, fmt, lambda data: EncodedFrame(item, data, fmt))

        return encode

    async def _admit(self, memory: int, send: Send | None) -> None:
        """Wait for a slot and `memory` bytes of the budget, sending Queued each time the place
        in line changes; raises Busy, Draining, or CallCancelled after `cancel()`."""
        plane = self._plane
        if self._cancelled.is_set():
            raise CallCancelled("the dream was cancelled")
        plane.telemetry.queued(self.record)
        places: asyncio.Queue[tuple[int, int]] = asyncio.Queue()
        acquiring = asyncio.ensure_future(plane.admission.acquire(memory, lambda *place: places.put_nowait(place)))
        cancelled = asyncio.ensure_future(self._cancelled.wait())
        try:
            while not acquiring.done():
                moved = asyncio.ensure_future(places.get())
                await asyncio.wait({acquiring, moved, cancelled}, return_when=asyncio.FIRST_COMPLETED)
                if not moved.done():
                    moved.cancel()
                elif send is not None and not acquiring.done():
                    place = moved.result()
                    while not places.empty():  # only the latest place matters
                        place = places.get_nowait()
                    await self._deliver(send, Queued(*place))
                if cancelled.done() and not acquiring.done():
                    raise CallCancelled("the dream was cancelled while it waited for a slot")
            acquiring.result()  # Busy or Draining
        except BaseException:
            if not acquiring.done():
                acquiring.cancel()  # admission leaves the line, or gives back a slot granted just now
                with contextlib.suppress(BaseException):
                    await acquiring
            elif not acquiring.cancelled() and acquiring.exception() is None:
                plane.admission.release(memory)
            raise
        finally:
            cancelled.cancel()
        plane.telemetry.admitted(self.record)

    async def _deliver(self, send: Send, event: DreamEvent | AnimationEvent) -> None:
        """Send one event; a reader that takes nothing for `reader_timeout` seconds ends the call."""
        timeout = self._plane.reader_timeout
        try:
            await asyncio.wait_for(send(event), timeout)
        except TimeoutError:
            raise SlowReader(
                f"the client read nothing for {timeout:g} s; the dream was stopped to free its slot"
            ) from None

    async def _run(
        self,
        produce: Callable[[threading.Event, StepListener], Iterator[object]],
        memory: int,
        started: Started,
        send: Send,
        *,
        encode: Callable[[object], _Picture | None],
        sent: Callable[[], None] = lambda: None,
        stop: Callable[[], None] = lambda: None,
        frames: int | None = None,
    ) -> None:
        """Admit the call, run `produce` in a worker thread holding its slot and `memory` bytes of
        the budget, and send Started, then its items in order.

        `encode(item)` says how an item becomes an event: None for one sent as it is (a Step),
        or the _Picture to encode in the encoding pool, beside the work. The worker hands over
        at most STREAM_BUFFER items not yet sent; beyond that it waits (a slow reader slows
        the work instead of filling memory).
        `sent` is called after each picture is sent; `stop` when the stream ends for any
        reason, to wake a worker waiting for input. A zoom's `frames` lets the running
        estimate count its frames done.
        """
        plane = self._plane
        await self._admit(memory, send)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        room = threading.Semaphore(STREAM_BUFFER)
        control = Control()
        cancel = control.cancel

        def put(item: object, wait: bool = True) -> None:
            # Waiting for room is given up when the call is cancelled (the reader left).
            while wait and not room.acquire(timeout=0.1):
                if cancel.is_set():
                    raise DreamCancelled("cancelled while waiting for the reader")
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                cancel.set()

        def work() -> None:
            try:
                for item in produce(cancel, put):
                    picture = encode(item)
                    if picture is None:
                        put(item)
                    else:
                        # Encoding runs beside the work, which goes on with the next octave or frame.
                        encoding = plane._encoders.submit(imaging.encode, picture.pixels, picture.format)
                        put(_Pending(picture.event_of, encoding))
            except DreamCancelled as stopped:
                log.info("%s %s %s", self.kind.value, self.request_id, stopped)
                if control.stopped_by is not None:  # stopped by the server or the handle: say why
                    put(control.stopped_by, wait=False)
            except Exception as error:  # handed to the stream, which raises it
                put(error, wait=False)
            finally:
                give_back_free_memory()  # before the slot (and its share of the budget) is freed
                put(_END, wait=False)

        try:
            worker = loop.run_in_executor(plane._workers, work)
        except BaseException:
            plane.admission.release(memory)
            raise
        plane._controls.add(control)
        self._control = control
        if self._cancelled.is_set():
            control.stop(CallCancelled("the dream was cancelled"))

        def finished(_: object) -> None:
            plane._controls.discard(control)
            plane.admission.release(memory)

        worker.add_done_callback(finished)
        running = plane.running.started()
        elapsed = 0.0
        try:
            await self._deliver(send, started)
            while (item := await events.get()) is not _END:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Step):
                    if self.kind is CallKind.DREAM:  # an animation's Step is one frame's: no estimate of it all
                        plane.running.stepped(running, item)
                    plane.telemetry.stepped(self.record)
                    await self._deliver(send, item)
                else:
                    assert isinstance(item, _Pending)
                    event = item.event_of(await asyncio.wrap_future(item.encoded))
                    if isinstance(event, EncodedFrame):
                        elapsed += event.frame.elapsed
                        if frames:  # a zoom knows its length: its time left is estimated from the frames
                            plane.running.progressed(running, elapsed, (event.frame.index + 1) / frames)
                    plane.telemetry.framed(self.record)
                    await self._deliver(send, event)
                    sent()
                room.release()
        finally:
            # The caller went away, its deadline passed, or the call ended: in every case
            # the worker stops before its next step, or wakes up and stops if it waits for input.
            cancel.set()
            stop()
            plane.running.ended(running)


async def read_frames(frames: AsyncIterator[bytes], inbox: queue.SimpleQueue, window: asyncio.Semaphore) -> None:
    """Move input frames into `inbox`, one only when the window has room; then the end mark."""
    try:
        while True:
            await window.acquire()
            frame = await anext(frames, None)
            if frame is None:
                break
            inbox.put(frame)
    except Exception as error:  # the worker raises it in its thread, which ends the call
        inbox.put(error)
    finally:
        inbox.put(_END)


def inbox_frames(inbox: queue.SimpleQueue) -> Iterator[bytes]:
    while (item := inbox.get()) is not _END:
        if isinstance(item, Exception):
            raise item
        yield item
