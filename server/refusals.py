"""Why the server refuses a request, in terms that know nothing of gRPC.

Every refusal is a `Refusal`: its `kind` says what sort of problem it is (the
gRPC adapter turns each kind into one status code, in one place), its `reason`
is a stable machine-readable code that callers may branch on, `field` names
the request field at fault when there is one, and `retry_after` says when
trying again makes sense. The message (`str(refusal)`) tells a person what to
change.
"""

from __future__ import annotations

import enum


class RefusalKind(enum.Enum):
    """What sort of problem a refusal is; the adapter maps each to one status."""

    INVALID_ARGUMENT = "invalid argument"  # the request itself must change
    NOT_FOUND = "not found"  # it names something the server does not have
    RESOURCE_EXHAUSTED = "resource exhausted"  # the server is full: retry later
    UNAVAILABLE = "unavailable"  # the server cannot serve now (loading, draining): retry, maybe elsewhere
    FAILED_PRECONDITION = "failed precondition"  # the server is not in a state to serve this


class Refusal(Exception):
    """A request the server will not run, with what to change."""

    kind = RefusalKind.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        field: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason
        self.field = field
        self.retry_after = retry_after


class InvalidRequest(Refusal):
    """A request that cannot be dreamed as sent: a value out of range, a bad picture, an unknown layer."""


class UnknownModel(Refusal):
    """A request named a model this server does not have."""

    kind = RefusalKind.NOT_FOUND
    reason = "UNKNOWN_MODEL"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown model {name!r}: this server has {', '.join(known)}", field="model")


class Busy(Refusal):
    """Every dream slot and every queue place is taken."""

    kind = RefusalKind.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"


class NotReady(Refusal):
    """The server cannot take dreams yet: it is still loading its models."""

    kind = RefusalKind.UNAVAILABLE
    reason = "LOADING"
