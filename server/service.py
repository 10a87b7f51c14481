"""The gRPC adapter: proto -> DreamSpec -> data plane -> events -> proto.

Each arrow is one function: `messages.spec_from_request` converts the message, the
data plane (`dataplane`) admits, plans, runs and records the call, `messages`'
`dream_response` and `animation_frame` convert its events back, and
`error_status.abort` ends a refused call with its status and details, chosen in one
place. The engine and the data plane know nothing of gRPC; this module decides
nothing about calls: it converts, and tells the data plane when the caller is gone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc

from dreamstream.server.animations import AnimationCalls
from dreamstream.server.dataplane import Call as PlaneCall
from dreamstream.server.dataplane import CallerLeft, CallKind, DataPlane, Send
from dreamstream.server.error_status import abort, call_request_id
from dreamstream.server.messages import classify_message, dream_response, models_message, spec_from_request
from dreamstream.server.refusals import NotReady
from dreamstream.v1 import dream_pb2, dream_pb2_grpc


def writer(context: grpc.aio.ServicerContext, convert: Callable[[object], object | None]) -> Send:
    """The data plane's `send` for one gRPC stream: converts each event and writes it (waiting
    on gRPC's flow control); an event `convert` has no message for is not sent."""

    async def send(event: object) -> None:
        message = convert(event)
        if message is None:
            return
        try:
            await context.write(message)
        except Exception as error:  # grpc's own (internal) error type
            # The stream closed under us: the caller cancelled, its deadline passed, or its
            # connection went, often before context.cancelled() says so.
            raise CallerLeft(f"the caller left: {error}") from error

    return send


class DreamService(AnimationCalls, dream_pb2_grpc.DreamServiceServicer):
    """dreamstream.v1.DreamService over a DataPlane; the animation calls come from AnimationCalls."""

    def __init__(self, plane: DataPlane) -> None:
        self._plane = plane

    async def ListModels(
        self, request: dream_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> dream_pb2.ListModelsResponse:
        try:
            models = self._plane.models()
        except NotReady as error:
            await abort(context, error, call_request_id(context))
        return models_message(models, self._plane.engine.untiled_limit)

    async def Classify(
        self, request: dream_pb2.ClassifyRequest, context: grpc.aio.ServicerContext
    ) -> dream_pb2.ClassifyResponse:
        call = self._plane.call(CallKind.CLASSIFY, call_request_id(context))
        try:
            async with call:
                result = await call.classify(request.image, request.model, request.top or None)
        except Exception as error:
            await abort(context, error, call.request_id)
        return classify_message(result)

    async def Dream(self, request: dream_pb2.DreamRequest, context: grpc.aio.ServicerContext) -> None:
        call = self._plane.call(CallKind.DREAM, call_request_id(context))
        await self._serve(
            call, context, lambda: call.dream(spec_from_request(request), self._writer(context, dream_response))
        )

    def _writer(self, context: grpc.aio.ServicerContext, convert: Callable[[object], object | None]) -> Send:
        return writer(context, convert)

    async def _serve(
        self, call: PlaneCall, context: grpc.aio.ServicerContext, work: Callable[[], Awaitable[None]]
    ) -> None:
        """Run a streaming call's `work` through the data plane and end the gRPC call as it ended:
        nothing more to say when the caller left, the refusal's status otherwise."""
        try:
            async with call:  # records the call's end before the caller hears of it
                await work()
        except CallerLeft:
            return  # no one to answer
        except Exception as error:
            await abort(context, error, call.request_id)
