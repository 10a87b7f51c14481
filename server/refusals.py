"""Why the server refuses a request, in terms that know nothing of gRPC.

Every refusal is a `Refusal`: its `kind` says what sort of problem it is (the
gRPC adapter turns each kind into one status code, in one place), its `reason`
is a stable machine-readable code that callers may branch on, `field` names
the request field at fault when there is one, and `retry_after` says when
trying again makes sense. The message (`str(refusal)`) tells a person what to
change.
"""

from __future__ import annotations

import difflib
import enum


class RefusalKind(enum.Enum):
    """What sort of problem a refusal is; the adapter maps each to one status. Each kind is named
    as the canonical status code it maps to: metrics and access lines record the call's end by
    that name, whatever the transport."""

    INVALID_ARGUMENT = "invalid argument"  # the request itself must change
    NOT_FOUND = "not found"  # it names something the server does not have
    RESOURCE_EXHAUSTED = "resource exhausted"  # the server is full: retry later
    UNAVAILABLE = "unavailable"  # the server cannot serve now (loading, draining): retry, maybe elsewhere
    FAILED_PRECONDITION = "failed precondition"  # the server is not in a state to serve this
    UNAUTHENTICATED = "unauthenticated"  # the call lacks a valid bearer token


class Refusal(Exception):
    """A request the server will not run, with what to change."""

    kind = RefusalKind.INVALID_ARGUMENT
    reason = "INVALID_REQUEST"
    retry_after: float | None = None  # seconds; a subclass may give its own default

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
        if retry_after is not None:
            self.retry_after = retry_after


class InvalidRequest(Refusal):
    """A request that cannot be dreamed as sent: a value out of range, a bad picture, an unknown layer."""


class UnknownModel(Refusal):
    """A request named a model this server does not have."""

    kind = RefusalKind.NOT_FOUND
    reason = "UNKNOWN_MODEL"

    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(
            f"unknown model {shown(name)}{did_you_mean(name, known)}: this server has {', '.join(known) or 'none'}",
            field="model",
        )


class Busy(Refusal):
    """Every dream slot and every queue place is taken."""

    kind = RefusalKind.RESOURCE_EXHAUSTED
    reason = "QUEUE_FULL"


class NotReady(Refusal):
    """The server cannot take dreams yet: it is still loading its models."""

    kind = RefusalKind.UNAVAILABLE
    reason = "LOADING"


class Draining(Refusal):
    """The server is shutting down: it finishes the dreams it runs and takes no new one."""

    kind = RefusalKind.UNAVAILABLE
    reason = "DRAINING"
    retry_after = 0.0  # at once: the balancer sends the retry to another replica


class TooCostly(Refusal):
    """A request whose work or memory is above what this server allows for one dream."""

    kind = RefusalKind.INVALID_ARGUMENT
    reason = "COST_TOO_HIGH"


class TimeLimit(Refusal):
    """A dream ran past the server's time limit per dream and was stopped."""

    kind = RefusalKind.RESOURCE_EXHAUSTED
    reason = "TIME_LIMIT"


class SlowReader(Refusal):
    """The caller stopped reading the stream for longer than the server waits."""

    kind = RefusalKind.RESOURCE_EXHAUSTED
    reason = "READER_IDLE"


class ModelUnavailable(Refusal):
    """A request named a model this server found but refused to load (see its log)."""

    kind = RefusalKind.FAILED_PRECONDITION
    reason = "MODEL_UNAVAILABLE"

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"model {shown(name)} is not served: {problem}", field="model")


class ModelCannotRun(Refusal):
    """The model's graphs failed on a dream's picture: a size or input the export did not find it
    could not take (a model exported before the export probed for sizes that fit, say)."""

    kind = RefusalKind.FAILED_PRECONDITION
    reason = "MODEL_CANNOT_RUN"


class NoClassifier(Refusal):
    """Classify named a model exported without a classifier head."""

    kind = RefusalKind.FAILED_PRECONDITION
    reason = "NO_CLASSIFIER"

    def __init__(self, name: str, classifying: list[str]) -> None:
        others = f"; these can: {', '.join(classifying)}" if classifying else ""
        super().__init__(
            f"model {shown(name)} has no classifier: its weights had no classifier head{others}", field="model"
        )


# Longest piece of a request echoed back in a message: status messages travel in
# gRPC metadata, which is limited to a few kB.
_SHOWN_CHARS = 64


def shown(text: str) -> str:
    """`text` as a message quotes it (repr), cut to a readable length."""
    if len(text) <= _SHOWN_CHARS:
        return repr(text)
    return f"{text[:_SHOWN_CHARS]!r}... ({len(text)} characters)"


def did_you_mean(name: str, known: list[str]) -> str:
    """ " (did you mean 'x'?)" for the closest of `known` to a misspelt `name`, or ""."""
    close = difflib.get_close_matches(name[: _SHOWN_CHARS * 2], known, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


class Unauthenticated(Refusal):
    """A call without one of the server's bearer tokens (MISSING_TOKEN), or with another (WRONG_TOKEN)."""

    kind = RefusalKind.UNAUTHENTICATED
    reason = "MISSING_TOKEN"
