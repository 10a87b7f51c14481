"""The gRPC adapter: proto -> DreamSpec -> plan -> engine -> frames -> proto.

Each arrow is one function: `spec_from_request` converts the message, the
engine's planning step checks it (all validation and defaults live there),
`progress_message` and `frame_message` convert the events back, and `status_of`
turns every refusal into its status in one place. The engine knows nothing of
gRPC; this module decides nothing about dreams.

The ascent runs in a worker thread (ONNX Runtime releases the GIL), frames are
encoded in another pool so that encoding never holds the ascent up, and the
event loop only moves events from the worker to the stream.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from dreamstream.server import imaging
from dreamstream.server.animations import AnimationCalls
from dreamstream.server.engine import (
    DreamCancelled,
    DreamEngine,
    DreamPlan,
    DreamSpec,
    Octave,
    Step,
)
from dreamstream.server.engine.classify import Classification, classify
from dreamstream.server.engine.limits import decode_memory
from dreamstream.server.engine.request import ChannelMode
from dreamstream.server.engine.tiling import MAX_TILED_SIDE
from dreamstream.server.error_status import error_status
from dreamstream.server.memory import give_back_free_memory
from dreamstream.server.refusals import (
    Busy,
    Draining,
    InvalidRequest,
    NotReady,
    Refusal,
    RefusalKind,
    SlowReader,
)
from dreamstream.server.request_ids import request_id_of
from dreamstream.server.running import RunningDreams
from dreamstream.server.telemetry import DreamRecord, Telemetry
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import REQUEST_ID_METADATA, UnknownFormat, format_of_enum

log = logging.getLogger(__name__)

# The one place a refusal's kind becomes a status; anything that is no Refusal is INTERNAL.
_STATUS_OF_KIND = {
    RefusalKind.INVALID_ARGUMENT: grpc.StatusCode.INVALID_ARGUMENT,
    RefusalKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    RefusalKind.RESOURCE_EXHAUSTED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    RefusalKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
    RefusalKind.FAILED_PRECONDITION: grpc.StatusCode.FAILED_PRECONDITION,
    RefusalKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
}


def status_of(error: Exception) -> grpc.StatusCode:
    """The status a refusal is answered with: the one place that decides it."""
    if isinstance(error, Refusal):
        return _STATUS_OF_KIND[error.kind]
    return grpc.StatusCode.INTERNAL


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


class Admission:
    """At most `running` dreams at once, taking at most `memory_budget` bytes together, and
    `waiting` more in line, first come first served; beyond that, Busy. While draining,
    Draining for new and waiting dreams alike.

    A slot is given back only when its worker thread has really stopped, so a
    cancelled dream's last step still counts against the limit. `retry_after` says
    when a refused caller should come back (None: no estimate).
    """

    def __init__(
        self,
        running: int,
        waiting: int,
        memory_budget: int | None = None,
        retry_after: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._running_limit = running
        self._waiting_limit = waiting
        self._memory_budget = memory_budget
        self._retry_after = retry_after
        self._running = 0
        self._memory = 0  # bytes the running dreams are expected to take
        self._waiters: collections.deque[tuple[asyncio.Future[None], int]] = collections.deque()
        self._draining = False
        self._idle: asyncio.Event | None = None

    @property
    def running(self) -> int:
        return self._running

    async def acquire(self, memory: int = 0) -> None:
        """Wait for a slot (and `memory` bytes of the budget); raises Busy or Draining."""
        if self._draining:
            raise _draining()
        if not self._waiters and self._fits(memory):
            self._take(memory)
            return
        if len(self._waiters) >= self._waiting_limit:
            raise Busy(
                f"the server is busy: {self._running} dream(s) running and {len(self._waiters)} waiting; retry later",
                retry_after=self._retry_after(),
            )
        waiter = asyncio.get_running_loop().create_future()
        entry = (waiter, memory)
        self._waiters.append(entry)
        log.info("dream waits for a slot: %d running, %d waiting", self._running, len(self._waiters))
        try:
            await waiter
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(memory)  # granted just as the caller went away
            raise

    def release(self, memory: int = 0) -> None:
        self._running -= 1
        self._memory -= memory
        self._grant()
        if self._running == 0 and self._idle is not None:
            self._idle.set()

    def drain(self) -> None:
        """Refuse new dreams and end every waiting one with Draining at once."""
        self._draining = True
        while self._waiters:
            waiter, _ = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(_draining())

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every running dream ended within `timeout` seconds."""
        if self._running == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _fits(self, memory: int) -> bool:
        if self._running >= self._running_limit:
            return False
        # One dream always runs: planning refused any that alone is above the budget.
        return self._memory_budget is None or self._running == 0 or self._memory + memory <= self._memory_budget

    def _take(self, memory: int) -> None:
        self._running += 1
        self._memory += memory

    def _grant(self) -> None:
        while self._waiters and self._fits(self._waiters[0][1]):
            waiter, memory = self._waiters.popleft()
            if waiter.done():  # its caller went away
                continue
            self._take(memory)
            waiter.set_result(None)


def _draining() -> Draining:
    return Draining("the server is shutting down and takes no new dream: retry (another replica)")


_DONE = object()


class CallerLeft(Exception):
    """A message could not be written: nobody is reading the stream any more."""


# Events a stream may hold that its reader has not taken yet: the ascent waits beyond
# this (keeping its slot), so memory per stream stays at a few frames however slowly
# the caller reads. Four lets the ascent run a few steps ahead while a frame encodes.
STREAM_BUFFER = 4
# Seconds a stream may wait for its reader to take the next message before the
# dream is stopped and its slot freed (`serve --reader-timeout`).
READER_TIMEOUT = 60.0


class _Control:
    """How the server stops one admitted dream: the flag its worker checks, and the refusal to end it with."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.stopped_by: Refusal | None = None

    def stop(self, refusal: Refusal) -> None:
        self.stopped_by = refusal
        self.cancel.set()


async def _abort(context: grpc.aio.ServicerContext, error: Exception, request_id: str) -> None:
    """End the call with the status `status_of` gives `error`, its details attached; failures are
    logged whole."""
    code = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("dream %s failed", request_id, exc_info=error)
        message = f"the dream failed: {error}"
    else:
        log.info("refused %s (%s): %s", request_id, code.name, error)
        message = str(error)
    status = error_status(code, message, error, request_id)
    await context.abort(status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_METADATA, request_id)))


def _call_request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request id (see request_ids), also returned in its trailing metadata."""
    request_id = request_id_of(context.invocation_metadata())
    context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
    return request_id


class DreamService(AnimationCalls, dream_pb2_grpc.DreamServiceServicer):
    """dreamstream.v1.DreamService over a DreamEngine; the animation calls come from AnimationCalls."""

    def __init__(
        self,
        engine: DreamEngine,
        *,
        max_concurrent: int = 1,
        max_queue: int = 4,
        reader_timeout: float = READER_TIMEOUT,
        telemetry: Telemetry | None = None,
    ) -> None:
        self._engine = engine
        self._telemetry = telemetry or Telemetry()
        self._running = RunningDreams()
        self._admission = Admission(
            max_concurrent, max_queue, engine.limits.memory_budget, self._running.seconds_until_one_ends
        )
        self._reader_timeout = reader_timeout
        self._controls: set[_Control] = set()
        self._dreamers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="dream")
        self._imaging = ThreadPoolExecutor(2, thread_name_prefix="imaging")

    def close(self) -> None:
        self._dreamers.shutdown(wait=False, cancel_futures=True)
        self._imaging.shutdown(wait=False, cancel_futures=True)

    async def drain(self, grace: float) -> bool:
        """Take no new dream, end the waiting ones, give the running ones `grace` seconds.

        Dreams still running then are stopped (their callers get UNAVAILABLE). Returns
        whether every running dream finished within the grace.
        """
        self._admission.drain()
        finished = await self._admission.wait_idle(grace)
        if not finished:
            for control in list(self._controls):
                control.stop(
                    Draining(f"the server shut down before the dream finished (it had {grace:g} s): retry (elsewhere)")
                )
            await self._admission.wait_idle(grace)
        return finished

    async def ListModels(
        self, request: dream_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> dream_pb2.ListModelsResponse:
        models = self._engine.models
        if not models.loaded:
            request_id = _call_request_id(context)
            await _abort(context, NotReady("the server is still loading its models; retry in a moment"), request_id)
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
                    max_untiled_size=self._engine.untiled_limit(model),
                    can_classify=model.manifest.classifier is not None,
                )
                for model in models
            ],
            default_model=models.default_name,
            unavailable_models=[
                dream_pb2.UnavailableModel(name=name, problem=problem) for name, problem in models.refused.items()
            ],
        )

    async def Classify(
        self, request: dream_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> dream_pb2.ClassifyResponse:
        request_id = _call_request_id(context)
        try:
            if not self._engine.models.loaded:
                raise NotReady("the server is still loading its models; retry in a moment")
            result = await self._classify(request)
        except Exception as error:
            await _abort(context, error, request_id)
        return classify_message(result)

    async def _classify(self, request: dream_pb2.ClassifyRequest) -> Classification:
        """One forward pass at the network's own size, off the event loop.

        Decoding a picture can cost hundreds of MB, so a classification takes a slot (and
        its decoding's share of the memory budget) from the same admission as the dreams:
        a burst of them waits in the same bounded line, or is refused as Busy.
        """
        header = imaging.probe(request.image, self._engine.limits.max_input_pixels) if request.image else None
        memory = decode_memory(header.width * header.height) if header else 0
        await self._admission.acquire(memory)
        try:
            limits = self._engine.limits
            return await asyncio.to_thread(
                classify, self._engine.models, request.image, request.model, request.top or None, limits
            )
        finally:
            self._admission.release(memory)

    async def Dream(self, request: dream_pb2.DreamRequest, context: grpc.aio.ServicerContext) -> None:
        record = DreamRecord(_call_request_id(context))
        try:
            if not self._engine.models.loaded:
                raise NotReady("the server is still loading its models; retry in a moment")
            plan = self._engine.plan(spec_from_request(request))
            record.planned(plan.model.name, plan.size, len(plan.sizes), plan.params.steps_per_octave)
            # aclosing: a failed write stops the worker now, not when the generator is collected.
            async with contextlib.aclosing(self._stream(plan, record)) as responses:
                async for response in responses:
                    await self._send(context, response)
        except asyncio.CancelledError:  # the caller left, or its deadline passed
            self._telemetry.ended(record, grpc.StatusCode.CANCELLED.name)
            raise
        except CallerLeft as left:  # no one to answer
            log.info("dream %s: %s", record.request_id, left)
            self._telemetry.ended(record, grpc.StatusCode.CANCELLED.name)
        except Exception as error:
            # Recorded before the caller hears of it, as a finished dream is.
            self._telemetry.ended(record, status_of(error).name)
            await _abort(context, error, record.request_id)
        else:
            self._telemetry.ended(record, grpc.StatusCode.OK.name)

    async def _send(self, context: grpc.aio.ServicerContext, response: dream_pb2.DreamResponse) -> None:
        """Write one message; a reader that takes nothing for `reader_timeout` seconds ends the dream."""
        try:
            await asyncio.wait_for(context.write(response), self._reader_timeout)
        except TimeoutError:
            raise SlowReader(
                f"the client read nothing for {self._reader_timeout:g} s; the dream was stopped to free its slot"
            ) from None
        except Exception as error:  # grpc's own (internal) error type
            # The stream closed under us: the caller cancelled, its deadline passed, or its
            # connection went, often before context.cancelled() says so.
            raise CallerLeft(f"the caller left: {error}") from error

    async def _stream(self, plan: DreamPlan, record: DreamRecord) -> AsyncIterator[dream_pb2.DreamResponse]:
        """Run `plan` in a worker thread and turn its events into responses, in order: the
        DreamStarted first, once the dream has its slot.

        The worker hands over at most STREAM_BUFFER events the stream has not sent yet;
        beyond that it waits (a slow reader slows the ascent instead of filling memory).
        """
        request_id = record.request_id
        self._telemetry.queued(record)
        await self._admission.acquire(plan.memory)
        self._telemetry.admitted(record)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        room = threading.Semaphore(STREAM_BUFFER)
        control = _Control()
        cancel = control.cancel

        def put(item: object, wait: bool = True) -> None:
            # Waiting for room is given up when the dream is cancelled (the reader left).
            while wait and not room.acquire(timeout=0.1):
                if cancel.is_set():
                    raise DreamCancelled("cancelled while waiting for the reader")
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                cancel.set()

        def work() -> None:
            height, width = plan.size
            log.info(
                "dream %s on %s: %dx%d, %d octaves x %d steps, layers %s",
                request_id,
                plan.model.name,
                width,
                height,
                len(plan.sizes),
                plan.params.steps_per_octave,
                dict(plan.params.layers),
            )
            try:
                for event in self._engine.run(plan, cancel):
                    if isinstance(event, Octave):
                        # Encoding runs beside the ascent, which goes on with the next octave.
                        put((event, self._imaging.submit(imaging.encode, event.image, plan.frame_format)))
                    else:
                        put(event)
                log.info("dream %s done in %.2f s", request_id, event.elapsed)
            except DreamCancelled as stopped:
                log.info("dream %s %s", request_id, stopped)
                if control.stopped_by is not None:
                    put(control.stopped_by, wait=False)
            except Exception as error:  # handed to the stream, which answers with its status
                put(error, wait=False)
            finally:
                give_back_free_memory()  # before the slot (and its share of the budget) is freed
                put(_DONE, wait=False)

        try:
            worker = loop.run_in_executor(self._dreamers, work)
        except BaseException:
            self._admission.release(plan.memory)
            raise
        self._controls.add(control)

        def finished(_: object) -> None:
            self._controls.discard(control)
            self._admission.release(plan.memory)

        worker.add_done_callback(finished)
        running = self._running.started()
        try:
            yield started_message(plan, request_id)
            while (item := await events.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Step):
                    self._running.stepped(running, item)
                    self._telemetry.stepped(record)
                    yield progress_message(item)
                else:
                    octave, encoded = item
                    data = await asyncio.wrap_future(encoded)
                    self._telemetry.framed(record)
                    yield frame_message(octave, data, plan)
                room.release()
        finally:
            # The client went away, its deadline passed, or the dream ended: in every case
            # the worker stops before its next step.
            cancel.set()
            self._running.ended(running)
