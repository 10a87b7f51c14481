"""The gRPC adapter: proto -> DreamSpec -> plan -> engine -> frames -> proto.

Each arrow is one function: `messages.spec_from_request` converts the message,
the engine's planning step checks it (all validation and defaults live there),
`messages.progress_message` and `frame_message` convert the events back, and
`error_status.abort` ends a refused call with its status and details, chosen in
one place. `admission` decides who runs now. The engine knows nothing of gRPC;
this module decides nothing about dreams.

The ascent runs in a worker thread (ONNX Runtime releases the GIL), frames are
encoded in another pool so that encoding never holds the ascent up, and the
event loop only moves events from the worker to the stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc

from dreamstream.server import imaging
from dreamstream.server.admission import Admission, Control
from dreamstream.server.animations import AnimationCalls
from dreamstream.server.engine import (
    DreamCancelled,
    DreamEngine,
    DreamPlan,
    Octave,
    Step,
)
from dreamstream.server.engine.classify import Classification, classify
from dreamstream.server.engine.limits import decode_memory
from dreamstream.server.engine.tiling import MAX_TILED_SIDE
from dreamstream.server.error_status import abort, call_request_id, status_of
from dreamstream.server.memory import give_back_free_memory
from dreamstream.server.messages import (
    classify_message,
    frame_message,
    progress_message,
    spec_from_request,
    started_message,
)
from dreamstream.server.refusals import (
    Draining,
    NotReady,
    SlowReader,
)
from dreamstream.server.running import RunningDreams
from dreamstream.server.telemetry import DreamRecord, Telemetry
from dreamstream.v1 import dream_pb2, dream_pb2_grpc

log = logging.getLogger(__name__)

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
        self._controls: set[Control] = set()
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
            request_id = call_request_id(context)
            await abort(context, NotReady("the server is still loading its models; retry in a moment"), request_id)
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
        request_id = call_request_id(context)
        try:
            if not self._engine.models.loaded:
                raise NotReady("the server is still loading its models; retry in a moment")
            result = await self._classify(request)
        except Exception as error:
            await abort(context, error, request_id)
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
        record = DreamRecord(call_request_id(context))
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
            await abort(context, error, record.request_id)
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
        control = Control()
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
