"""When a client tries a refused call again: after the server's RetryInfo delay, or a backoff.

Only refusals that say "later" are retried (RESOURCE_EXHAUSTED: the queue is full;
UNAVAILABLE: loading, draining or unreachable), and a dream only while it has sent
no event: one that has started is never run twice.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from dreamstream.client.errors import DreamstreamError

RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
# The first wait when the server named no delay; it doubles with each retry.
BACKOFF_SECONDS = 0.5

RetryListener = Callable[[DreamstreamError, float], None]
"""Called with the refusal and the seconds the client will wait before trying again."""


class RetryPolicy:
    """Up to `retries` more tries of a refused call; `on_retry` hears of each before the wait."""

    def __init__(self, retries: int = 0, on_retry: RetryListener | None = None) -> None:
        if retries < 0:
            raise ValueError(f"retries {retries} is negative: use 0 to never retry")
        self.retries = retries
        self.on_retry = on_retry

    def delay_or_raise(self, error: DreamstreamError, attempt: int, *, started: bool = False) -> float:
        """Seconds to wait before trying again after `error` on try `attempt` (from 0): the
        server's RetryInfo delay when it gave one, else a doubling backoff. Raises `error` when
        it is final: not a "later" refusal, no retries left, or a dream that had `started`."""
        if started or attempt >= self.retries or error.code not in RETRYABLE_CODES:
            raise error from None
        delay = error.retry_delay if error.retry_delay is not None else BACKOFF_SECONDS * 2**attempt
        if self.on_retry is not None:
            self.on_retry(error, delay)
        return delay
