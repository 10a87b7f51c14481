"""How a refused or failed call is answered over HTTP: the status, in one table, and a JSON body.

The gRPC status comes from `error_status.status_of` (the one place a refusal becomes a
status); this module only maps it to the HTTP status of Google's own table (google.rpc.Code)
and writes the same details a gRPC error carries: the reason, the message that says what
to change, the field, the request id, and the retry delay (also as `Retry-After`).
"""

from __future__ import annotations

import logging
import math
from http import HTTPStatus
from typing import Any

import grpc
from starlette.responses import JSONResponse

from dreamstream.server.dataplane import CallCancelled, CallerLeft
from dreamstream.server.error_status import DEFAULT_RETRY_AFTER, FAILED_REASON, status_of
from dreamstream.server.refusals import InvalidRequest, Refusal, SlowReader, Unauthenticated
from dreamstream.wire import REQUEST_ID_METADATA

log = logging.getLogger(__name__)

# gRPC status -> HTTP status, as google.rpc.Code documents each (and grpc-gateway maps them).
HTTP_STATUS_OF_GRPC = {
    grpc.StatusCode.OK: HTTPStatus.OK,
    grpc.StatusCode.CANCELLED: 499,  # "client closed request": no HTTPStatus member has it
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.OUT_OF_RANGE: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS: HTTPStatus.CONFLICT,
    grpc.StatusCode.ABORTED: HTTPStatus.CONFLICT,
    grpc.StatusCode.RESOURCE_EXHAUSTED: HTTPStatus.TOO_MANY_REQUESTS,
    grpc.StatusCode.UNIMPLEMENTED: HTTPStatus.NOT_IMPLEMENTED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED: HTTPStatus.GATEWAY_TIMEOUT,
    grpc.StatusCode.INTERNAL: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.UNKNOWN: HTTPStatus.INTERNAL_SERVER_ERROR,
    grpc.StatusCode.DATA_LOSS: HTTPStatus.INTERNAL_SERVER_ERROR,
}
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class UploadTooLarge(InvalidRequest):
    """A request body above the gateway's limit, refused before it is read whole: HTTP 413, as a
    proxy in front would answer (gRPC refuses such a message before any handler sees it)."""

    reason = "UPLOAD_TOO_LARGE"


class UploadStalled(SlowReader):
    """An upload whose client sent nothing for the reader timeout: HTTP 408, its place freed."""

    reason = "UPLOAD_IDLE"


# The gateway's own refusals, which HTTP has a more exact status for than the gRPC one's.
_HTTP_STATUS_OF_UPLOAD = {
    UploadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    UploadStalled: HTTPStatus.REQUEST_TIMEOUT,
}


def error_response(error: Exception, request_id: str) -> JSONResponse:
    """The answer to a call refused (or failed) before its first event: the status and the JSON body."""
    body = error_body(error, request_id)
    status = _HTTP_STATUS_OF_UPLOAD.get(type(error)) or HTTP_STATUS_OF_GRPC[grpc.StatusCode[body["code"]]]
    headers = {**_retry_after(body), REQUEST_ID_METADATA: request_id}
    if isinstance(error, Unauthenticated):
        headers["WWW-Authenticate"] = "Bearer"
    return JSONResponse(body, status_code=int(status), headers=headers)


def error_body(error: Exception, request_id: str) -> dict[str, Any]:
    """The JSON an HTTP caller gets for `error`: what a gRPC caller finds in the status details."""
    if isinstance(error, CallCancelled | CallerLeft):
        return {"code": "CANCELLED", "reason": "CANCELLED", "message": str(error), "request_id": request_id}
    code = status_of(error)
    refusal = error if isinstance(error, Refusal) else None
    if refusal is None:
        log.error("dream %s failed", request_id, exc_info=error)
    body: dict[str, Any] = {
        "code": code.name,
        "reason": refusal.reason if refusal else FAILED_REASON,
        "message": str(error) if refusal else f"the dream failed: {error}",
        "request_id": request_id,
    }
    if refusal is not None and refusal.field:
        body["field"] = refusal.field
    if code in _RETRYABLE:
        retry = refusal.retry_after if refusal and refusal.retry_after is not None else DEFAULT_RETRY_AFTER
        body["retry_after_seconds"] = retry
    return body


def _retry_after(body: dict[str, Any]) -> dict[str, str]:
    """`Retry-After` (whole seconds, rounded up) for the refusals that say when to retry."""
    retry = body.get("retry_after_seconds")
    return {} if retry is None else {"Retry-After": str(math.ceil(retry))}
