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
import logging
import threading
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from dreamstream.server import imaging
from dreamstream.server.engine import (
    DreamCancelled,
    DreamEngine,
    DreamPlan,
    DreamSpec,
    Octave,
    Step,
)
from dreamstream.server.error_status import error_status
from dreamstream.server.refusals import Busy, InvalidRequest, NotReady, Refusal, RefusalKind
from dreamstream.server.request_ids import request_id_of
from dreamstream.server.running import RunningDreams
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
}


def status_of(error: Exception) -> grpc.StatusCode:
    """The status a refusal is answered with: the one place that decides it."""
    if isinstance(error, Refusal):
        return _STATUS_OF_KIND[error.kind]
    return grpc.StatusCode.INTERNAL


def spec_from_request(request: dream_pb2.DreamRequest) -> DreamSpec:
    """The request as the engine's DreamSpec: the proto's zeros become None ("the default")."""
    try:
        frame_format = format_of_enum(request.format)
    except UnknownFormat as error:
        raise InvalidRequest(str(error), field="format") from None
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
        )
    )


class Admission:
    """At most `running` dreams at once and `waiting` more in line; beyond that, Busy.

    A slot is given back only when its worker thread has really stopped, so a
    cancelled dream's last step still counts against the limit. `retry_after` says
    when a refused caller should come back (None: no estimate).
    """

    def __init__(self, running: int, waiting: int, retry_after: Callable[[], float | None] = lambda: None) -> None:
        self._running = running
        self._retry_after = retry_after
        self._capacity = running + waiting
        self._semaphore: asyncio.Semaphore | None = None
        self._held = 0  # running plus waiting

    async def acquire(self) -> None:
        if self._held >= self._capacity:
            raise Busy(
                f"the server is busy: {self._running} dream(s) running and "
                f"{self._capacity - self._running} waiting; retry later",
                retry_after=self._retry_after(),
            )
        if self._semaphore is None:  # created here, inside the server's event loop
            self._semaphore = asyncio.Semaphore(self._running)
        self._held += 1
        try:
            await self._semaphore.acquire()
        except BaseException:
            self._held -= 1
            raise

    def release(self) -> None:
        self._held -= 1
        self._semaphore.release()


_DONE = object()


async def _abort(context: grpc.aio.ServicerContext, error: Exception, request_id: str) -> None:
    """End the call with the status `status_of` gives `error`, its details attached; failures are
    logged whole."""
    code = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("dream failed", exc_info=error)
        message = f"the dream failed: {error}"
    else:
        log.info("refused (%s): %s", code.name, error)
        message = str(error)
    status = error_status(code, message, error, request_id)
    await context.abort(status.code, status.details, (*status.trailing_metadata, (REQUEST_ID_METADATA, request_id)))


def _call_request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request id (see request_ids), also returned in its trailing metadata."""
    request_id = request_id_of(context.invocation_metadata())
    context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
    return request_id


class DreamService(dream_pb2_grpc.DreamServiceServicer):
    """dreamstream.v1.DreamService over a DreamEngine."""

    def __init__(self, engine: DreamEngine, *, max_concurrent: int = 1, max_queue: int = 4) -> None:
        self._engine = engine
        self._running = RunningDreams()
        self._admission = Admission(max_concurrent, max_queue, self._running.seconds_until_one_ends)
        self._dreamers = ThreadPoolExecutor(max_concurrent, thread_name_prefix="dream")
        self._imaging = ThreadPoolExecutor(2, thread_name_prefix="imaging")

    def close(self) -> None:
        self._dreamers.shutdown(wait=False, cancel_futures=True)
        self._imaging.shutdown(wait=False, cancel_futures=True)

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
                    max_size=model.manifest.max_size,
                )
                for model in models
            ],
            default_model=models.default_name,
        )

    async def Dream(
        self, request: dream_pb2.DreamRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[dream_pb2.DreamResponse]:
        request_id = _call_request_id(context)
        try:
            if not self._engine.models.loaded:
                raise NotReady("the server is still loading its models; retry in a moment")
            plan = self._engine.plan(spec_from_request(request))
            async for response in self._stream(plan, request_id):
                yield response
        except Exception as error:
            await _abort(context, error, request_id)

    async def _stream(self, plan: DreamPlan, request_id: str) -> AsyncIterator[dream_pb2.DreamResponse]:
        """Run `plan` in a worker thread and turn its events into responses, in order: the
        DreamStarted first, once the dream has its slot."""
        await self._admission.acquire()
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[object] = asyncio.Queue()
        cancel = threading.Event()

        def put(item: object) -> None:
            try:
                loop.call_soon_threadsafe(events.put_nowait, item)
            except RuntimeError:  # the loop is closed: the server is shutting down
                cancel.set()

        def work() -> None:
            height, width = plan.size
            log.info(
                "dream on %s: %dx%d, %d octaves x %d steps, layers %s",
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
                log.info("dream done in %.2f s", event.elapsed)
            except DreamCancelled as stopped:
                log.info("dream %s", stopped)
            except Exception as error:  # handed to the stream, which answers INTERNAL
                put(error)
            finally:
                put(_DONE)

        try:
            worker = loop.run_in_executor(self._dreamers, work)
        except BaseException:
            self._admission.release()
            raise
        worker.add_done_callback(lambda _: self._admission.release())
        running = self._running.started()
        try:
            yield started_message(plan, request_id)
            while (item := await events.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Step):
                    self._running.stepped(running, item)
                    yield progress_message(item)
                else:
                    octave, encoded = item
                    data = await asyncio.wrap_future(encoded)
                    yield frame_message(octave, data, plan)
        finally:
            # The client went away, its deadline passed, or the dream ended: in every case
            # the worker stops before its next step.
            cancel.set()
            self._running.ended(running)
