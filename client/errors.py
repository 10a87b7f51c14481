"""The client's exceptions: one class per kind of refusal, with the status, the message and the
details the server attached (google.rpc.Status: ErrorInfo, BadRequest, RetryInfo, RequestInfo)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"
_DETAIL_KINDS = (
    error_details_pb2.ErrorInfo,
    error_details_pb2.BadRequest,
    error_details_pb2.RetryInfo,
    error_details_pb2.RequestInfo,
)


@dataclass(frozen=True)
class FieldViolation:
    """A request field the server refused (google.rpc.BadRequest)."""

    field: str  # the DreamRequest field's name in dream.proto, e.g. "layers"
    description: str  # what is wrong with it and what to change


@dataclass(frozen=True)
class ErrorDetails:
    """What a program can act on in a failed call's status; all empty when the server sent none."""

    reason: str | None = None  # stable (ErrorInfo), e.g. "UNKNOWN_LAYER"; dream.proto lists them
    field_violations: tuple[FieldViolation, ...] = ()
    retry_delay: float | None = None  # seconds the server asks to wait before trying again (RetryInfo)
    request_id: str | None = None  # the call's id in the server's logs (RequestInfo)


class DreamstreamError(Exception):
    """A call to a dreamstream server failed: `code` is the gRPC status, `message` the reason for
    people; `reason`, `field_violations`, `retry_delay` and `request_id` are for programs."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None, details: ErrorDetails | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details or ErrorDetails()

    @property
    def reason(self) -> str | None:
        """The server's stable reason, e.g. "QUEUE_FULL"; None when the status carried none."""
        return self.details.reason

    @property
    def field_violations(self) -> tuple[FieldViolation, ...]:
        """The request fields the server refused, with what to change."""
        return self.details.field_violations

    @property
    def retry_delay(self) -> float | None:
        """Seconds the server asks a caller to wait before retrying; None when it gave no delay."""
        return self.details.retry_delay

    @property
    def request_id(self) -> str | None:
        """The call's id in the server's logs, to quote when reporting a problem."""
        return self.details.request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidRequest(DreamstreamError):
    """The request cannot be dreamed as sent (bad image, unknown layer, value out of range)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ModelNotFound(DreamstreamError):
    """The server has no model of that name; the message lists those it has."""

    code = grpc.StatusCode.NOT_FOUND


class ServerBusy(DreamstreamError):
    """Every dream slot and queue place of the server is taken: retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class ServerUnavailable(DreamstreamError):
    """The server cannot be reached, or is still loading its models."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(DreamstreamError):
    """The dream did not finish within the call's timeout."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unauthenticated(DreamstreamError):
    """The server wants a valid token: pass token= or token_file=, or set DREAMSTREAM_TOKEN."""

    code = grpc.StatusCode.UNAUTHENTICATED


class ModelUnavailable(DreamstreamError):
    """The server has the model but cannot serve this call with it: it refused to load it (ListModels
    says why), or, for classify, the model has no classifier."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Cancelled(DreamstreamError):
    """The call was cancelled."""

    code = grpc.StatusCode.CANCELLED


_BY_CODE = {
    cls.code: cls
    for cls in (
        InvalidRequest,
        ModelNotFound,
        ServerBusy,
        ServerUnavailable,
        DeadlineExceeded,
        Unauthenticated,
        ModelUnavailable,
        Cancelled,
    )
}


# How gRPC words a server that cannot be reached (refused, unresolvable, gone away).
_UNREACHABLE_MARKERS = ("connect", "DNS", "resolution", "Socket closed", "Connection reset")


def details_of(trailing_metadata: Sequence[tuple[str, str | bytes]] | None) -> ErrorDetails:
    """The details of the google.rpc.Status in a failed call's trailing metadata."""
    encoded = next((value for key, value in trailing_metadata or () if key == _DETAILS_KEY), None)
    if not isinstance(encoded, bytes):
        return ErrorDetails()
    found: dict[type, Any] = {}
    for packed in status_pb2.Status.FromString(encoded).details:
        for kind in _DETAIL_KINDS:
            if packed.Is(kind.DESCRIPTOR):
                found[kind] = kind()
                packed.Unpack(found[kind])
    info, bad_request = found.get(error_details_pb2.ErrorInfo), found.get(error_details_pb2.BadRequest)
    retry, request = found.get(error_details_pb2.RetryInfo), found.get(error_details_pb2.RequestInfo)
    return ErrorDetails(
        reason=info.reason if info else None,
        field_violations=tuple(
            FieldViolation(violation.field, violation.description)
            for violation in (bad_request.field_violations if bad_request else ())
        ),
        retry_delay=retry.retry_delay.ToNanoseconds() / 1e9 if retry else None,
        request_id=request.request_id if request else None,
    )


def from_rpc_error(error: grpc.RpcError, target: str) -> DreamstreamError:
    """The exception for a failed call to `target`."""
    code = error.code()
    message = error.details() or code.name.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(m in message for m in _UNREACHABLE_MARKERS):
        # gRPC's own words for this are long and name no fix.
        message = (
            f"cannot reach a dreamstream server at {target}: is it running there? (start one with `dreamstream serve`)"
        )
    return _BY_CODE.get(code, DreamstreamError)(message, code, details_of(error.trailing_metadata()))
