"""The client's exceptions: one class per kind of refusal, with the status and the reason."""

from __future__ import annotations

import grpc


class DreamstreamError(Exception):
    """A call to a dreamstream server failed: `code` is the gRPC status, `message` the reason."""

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

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
        Cancelled,
    )
}


# How gRPC words a server that cannot be reached (refused, unresolvable, gone away).
_UNREACHABLE_MARKERS = ("connect", "DNS", "resolution", "Socket closed", "Connection reset")


def from_rpc_error(error: grpc.RpcError, target: str) -> DreamstreamError:
    """The exception for a failed call to `target`."""
    code = error.code()
    message = error.details() or code.name.lower()
    if code == grpc.StatusCode.UNAVAILABLE and any(m in message for m in _UNREACHABLE_MARKERS):
        # gRPC's own words for this are long and name no fix.
        message = (
            f"cannot reach a dreamstream server at {target}: is it running there? (start one with `dreamstream serve`)"
        )
    return _BY_CODE.get(code, DreamstreamError)(message, code)
