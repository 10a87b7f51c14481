"""The gRPC adapter: proto -> validated parameters -> engine -> frames -> proto.

Each arrow is one function here; the engine knows nothing of gRPC, and the
status code of every refusal is chosen in one place, `status_of`.

The ascent runs in a worker thread (ONNX Runtime releases the GIL), frames are
encoded in another pool so that encoding never holds the ascent up, and the
event loop only moves events from the worker to the stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc

from dreamstream.server import imaging
from dreamstream.server.engine import (
    DEFAULT_JITTER,
    DEFAULT_MAX_SIZE,
    DEFAULT_OCTAVE_SCALE,
    DEFAULT_OCTAVES,
    DEFAULT_STEP_SIZE,
    DEFAULT_STEPS,
    DreamCancelled,
    DreamEngine,
    DreamParams,
    DreamPlan,
    InvalidParams,
    Octave,
    Step,
)
from dreamstream.server.models import UnknownModel
from dreamstream.v1 import dream_pb2, dream_pb2_grpc

log = logging.getLogger(__name__)

_FORMATS = {
    dream_pb2.IMAGE_FORMAT_UNSPECIFIED: "png",
    dream_pb2.IMAGE_FORMAT_PNG: "png",
    dream_pb2.IMAGE_FORMAT_JPEG: "jpeg",
    dream_pb2.IMAGE_FORMAT_WEBP: "webp",
}
_FORMAT_ENUMS = {
    "png": dream_pb2.IMAGE_FORMAT_PNG,
    "jpeg": dream_pb2.IMAGE_FORMAT_JPEG,
    "webp": dream_pb2.IMAGE_FORMAT_WEBP,
}


class Busy(Exception):
    """Every dream slot and every queue place is taken."""


class NotReady(Exception):
    """The server is still loading its models."""


def status_of(error: Exception) -> grpc.StatusCode:
    """The status a refusal is answered with: the one place that decides it."""
    if isinstance(error, InvalidParams | imaging.ImageError):
        return grpc.StatusCode.INVALID_ARGUMENT
    if isinstance(error, UnknownModel):
        return grpc.StatusCode.NOT_FOUND
    if isinstance(error, Busy):
        return grpc.StatusCode.RESOURCE_EXHAUSTED
    if isinstance(error, NotReady):
        return grpc.StatusCode.UNAVAILABLE
    return grpc.StatusCode.INTERNAL


@dataclass(frozen=True)
class DreamJob:
    """A validated request: the engine's plan and how to encode the frames."""

    plan: DreamPlan
    format: str


def params_from_request(request: dream_pb2.DreamRequest) -> DreamParams:
    """The request's parameters, zeros replaced by the defaults; DreamParams checks ranges."""
    return DreamParams(
        layers=dict(request.layers) or None,
        octaves=request.octaves or DEFAULT_OCTAVES,
        octave_scale=request.octave_scale or DEFAULT_OCTAVE_SCALE,
        steps=request.steps_per_octave or DEFAULT_STEPS,
        step_size=request.step_size or DEFAULT_STEP_SIZE,
        jitter=request.jitter if request.HasField("jitter") else DEFAULT_JITTER,
        seed=request.seed,
    )


def format_from_request(request: dream_pb2.DreamRequest) -> str:
    fmt = _FORMATS.get(request.format)
    if fmt is None:
        raise InvalidParams(f"unknown image format {request.format}: use PNG, JPEG or WEBP")
    return fmt


def noise_size(request: dream_pb2.DreamRequest) -> tuple[int, int] | None:
    """(height, width) of the noise to dream on, or None when the request has a picture."""
    if request.image:
        if request.width or request.height:
            raise InvalidParams("send an image or a width and height, not both")
        return None
    if request.width <= 0 or request.height <= 0:
        raise InvalidParams(
            "the request has no image: send one, or set width and height (both above 0) to dream on noise"
        )
    return request.height, request.width


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


def frame_message(octave: Octave, data: bytes, fmt: str) -> dream_pb2.DreamResponse:
    height, width = octave.image.shape[:2]
    return dream_pb2.DreamResponse(
        frame=dream_pb2.Frame(
            octave=octave.octave,
            octaves=octave.octaves,
            width=width,
            height=height,
            image=data,
            format=_FORMAT_ENUMS[fmt],
            final=octave.final,
        )
    )


class Admission:
    """At most `running` dreams at once and `waiting` more in line; beyond that, Busy.

    A slot is given back only when its worker thread has really stopped, so a
    cancelled dream's last step still counts against the limit.
    """

    def __init__(self, running: int, waiting: int) -> None:
        self._running = running
        self._capacity = running + waiting
        self._semaphore: asyncio.Semaphore | None = None
        self._held = 0  # running plus waiting

    async def acquire(self) -> None:
        if self._held >= self._capacity:
            raise Busy(
                f"the server is busy: {self._running} dream(s) running and "
                f"{self._capacity - self._running} waiting; retry later"
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


async def _abort(context: grpc.aio.ServicerContext, error: Exception) -> None:
    """End the call with the status `status_of` gives `error`; failures are logged whole."""
    code = status_of(error)
    if code == grpc.StatusCode.INTERNAL:
        log.error("dream failed", exc_info=error)
        await context.abort(code, f"the dream failed: {error}")
    log.info("refused (%s): %s", code.name, error)
    await context.abort(code, str(error))


class DreamService(dream_pb2_grpc.DreamServiceServicer):
    """dreamstream.v1.DreamService over a DreamEngine."""

    def __init__(self, engine: DreamEngine, *, max_concurrent: int = 1, max_queue: int = 4) -> None:
        self._engine = engine
        self._admission = Admission(max_concurrent, max_queue)
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
            await _abort(context, NotReady("the server is still loading its models; retry in a moment"))
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
        try:
            job = await self._job(request)
            async for response in self._stream(job):
                yield response
        except Exception as error:
            await _abort(context, error)

    async def _job(self, request: dream_pb2.DreamRequest) -> DreamJob:
        """Validate a request into a job; raises the refusals `status_of` knows."""
        if not self._engine.models.loaded:
            raise NotReady("the server is still loading its models; retry in a moment")
        params = params_from_request(request)
        fmt = format_from_request(request)
        size = noise_size(request)
        manifest = self._engine.models.get(request.model).manifest
        picture = None
        if size is None:
            if request.max_size < 0:
                raise InvalidParams(f"max_size {request.max_size} is negative: use 0 for the default")
            max_size = request.max_size or min(DEFAULT_MAX_SIZE, manifest.max_size)
            loop = asyncio.get_running_loop()
            picture = await loop.run_in_executor(self._imaging, imaging.decode, request.image, max_size)
        plan = self._engine.plan(picture, params, model=request.model, size=size)
        return DreamJob(plan=plan, format=fmt)

    async def _stream(self, job: DreamJob) -> AsyncIterator[dream_pb2.DreamResponse]:
        """Run `job` in a worker thread and turn its events into responses, in order."""
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
            plan = job.plan
            height, width = plan.size
            log.info(
                "dream on %s: %dx%d, %d octaves x %d steps, layers %s",
                plan.model.name,
                width,
                height,
                len(plan.sizes),
                plan.params.steps,
                plan.params.layers or plan.model.manifest.default_layers,
            )
            try:
                for event in self._engine.run(plan, cancel):
                    if isinstance(event, Octave):
                        # Encoding runs beside the ascent, which goes on with the next octave.
                        put((event, self._imaging.submit(imaging.encode, event.image, job.format)))
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
        try:
            while (item := await events.get()) is not _DONE:
                if isinstance(item, Exception):
                    raise item
                if isinstance(item, Step):
                    yield progress_message(item)
                else:
                    octave, encoded = item
                    data = await asyncio.wrap_future(encoded)
                    yield frame_message(octave, data, job.format)
        finally:
            # The client went away, its deadline passed, or the dream ended: in every case
            # the worker stops before its next step.
            cancel.set()
