"""How a refused or failed call travels: a google.rpc.Status whose details let a program act on it.

Every error status carries ErrorInfo (a stable reason) and RequestInfo (the request id);
INVALID_ARGUMENT about one field adds BadRequest; RESOURCE_EXHAUSTED and UNAVAILABLE add
RetryInfo. dream.proto documents the reasons; `status_of` in service.py picks the code.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from dreamstream.server.refusals import Refusal

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
