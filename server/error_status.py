"""How a refused or failed call travels: a google.rpc.Status whose details let a program act on it.

Every error status carries ErrorInfo (a stable reason) and RequestInfo (the request id);
INVALID_ARGUMENT about one field adds BadRequest; RESOURCE_EXHAUSTED and UNAVAILABLE add
RetryInfo. dream.proto documents the reasons. `status_of` picks the code, in one table, and
`abort` ends a call with it: every refusal of every call goes through them.
"""

from __future__ import annotations

import logging

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dreamstream.server.refusals import Refusal, RefusalKind
from dreamstream.server.request_ids import request_id_of
from dreamstream.wire import REQUEST_ID_METADATA

log = logging.getLogger(__name__)

ERROR_DOMAIN = "dreamstream.v1"
# The reason of a dream that failed on the server rather than being refused.
FAILED_REASON = "DREAM_FAILED"
# The retry delay of a refusal that names none (models still loading, say), in seconds.
DEFAULT_RETRY_AFTER = 1.0
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


def error_status(code: grpc.StatusCode, message: str, error: Exception, request_id: str) -> grpc.Status:
    """The status that ends a call refused or failed with `error`, details included."""
    refusal = error if isinstance(error, Refusal) else None
    reason = refusal.reason if refusal else FAILED_REASON
    field = refusal.field if refusal else None
    details: list = [
        error_details_pb2.ErrorInfo(reason=reason, domain=ERROR_DOMAIN, metadata={"field": field} if field else {}),
        error_details_pb2.RequestInfo(request_id=request_id),
    ]
    if code == grpc.StatusCode.INVALID_ARGUMENT and field:
        violation = error_details_pb2.BadRequest.FieldViolation(field=field, description=message, reason=reason)
        details.append(error_details_pb2.BadRequest(field_violations=[violation]))
    if code in _RETRYABLE:
        retry_after = refusal.retry_after if refusal and refusal.retry_after is not None else DEFAULT_RETRY_AFTER
        details.append(error_details_pb2.RetryInfo(retry_delay=_duration(retry_after)))
    return rpc_status.to_status(
        status_pb2.Status(code=code.value[0], message=message, details=[_packed(detail) for detail in details])
    )


def _packed(message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    duration = duration_pb2.Duration()
    duration.FromNanoseconds(round(seconds * 1e9))
    return duration


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


async def abort(context: grpc.aio.ServicerContext, error: Exception, request_id: str) -> None:
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


def call_request_id(context: grpc.aio.ServicerContext) -> str:
    """The call's request id (see request_ids), also returned in its trailing metadata."""
    request_id = request_id_of(context.invocation_metadata())
    context.set_trailing_metadata(((REQUEST_ID_METADATA, request_id),))
    return request_id
