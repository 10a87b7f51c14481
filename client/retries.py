"""When a client tries a refused call again: at once on the next server, after the server's
RetryInfo delay, or after a backoff.

Two layers, both only for a call that has sent no event (a dream that has started is never
run twice):

- failover, always on: a call answered UNAVAILABLE (draining, loading, gone) is sent again
  up to FAILOVER_ATTEMPTS times in all, after a short doubling backoff, so that round_robin
  picks the next replica; all those attempts share the try's deadline (`timeout`), and a
  backoff that would pass it is not waited: the refusal is raised at once. This replaces
  gRPC's own retries, which could wedge a call past its deadline (see `balancing`).
- retries, as many as the caller asks (`retries=`): a refusal that says "later"
  (RESOURCE_EXHAUSTED: the queue is full; UNAVAILABLE) starts a new try, with a new deadline,
  after the server's RetryInfo delay or a doubling backoff.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import grpc

from dreamstream.client.errors import DeadlineExceeded, DreamstreamError, from_rpc_error

RETRYABLE_CODES = frozenset({grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE})
# The first wait when the server named no delay; it doubles with each retry.
BACKOFF_SECONDS = 0.5
# Attempts of one try on UNAVAILABLE, and their backoff: 0.1, 0.2, 0.4, 0.8 s (what gRPC's
# retryPolicy of the service config did before: 5 attempts, 0.1 s doubling, at most 2 s).
FAILOVER_ATTEMPTS = 5
FAILOVER_BACKOFF_SECONDS = 0.1
FAILOVER_MAX_BACKOFF_SECONDS = 2.0

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


class Attempts:
    """The attempts of one call: failover within each try's deadline, then the policy's retries.

    Use: send with `timeout=attempts.time_left()`; on failure, wait
    `attempts.delay_or_raise(error, started=...)` seconds and send again.
    """

    def __init__(self, policy: RetryPolicy, timeout: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self._policy = policy
        self._timeout = timeout
        self._clock = clock
        self._try = 0
        self._new_try()

    def _new_try(self) -> None:
        self._failovers = 0
        self._deadline: float | None = None  # set when the try's first attempt is sent

    def time_left(self) -> float | None:
        """The timeout of the next attempt: what is left of this try's deadline (None: no deadline)."""
        if self._timeout is None:
            return None
        if self._deadline is None:
            self._deadline = self._clock() + self._timeout
        left = self._deadline - self._clock()
        if left <= 0:
            raise DeadlineExceeded(f"no answer within the call's timeout of {self._timeout:g} s")
        return left

    def delay_or_raise(self, error: DreamstreamError, *, started: bool) -> float:
        """Seconds to wait before the next attempt after `error`; raises `error` when it is final."""
        if not started and error.code == grpc.StatusCode.UNAVAILABLE and self._failovers + 1 < FAILOVER_ATTEMPTS:
            delay = min(FAILOVER_BACKOFF_SECONDS * 2**self._failovers, FAILOVER_MAX_BACKOFF_SECONDS)
            if self._deadline is None or self._clock() + delay < self._deadline:
                self._failovers += 1
                return delay
        delay = self._policy.delay_or_raise(error, self._try, started=started)
        self._try += 1
        self._new_try()
        return delay


OpenCall = Callable[[float | None], Any]
"""Starts one attempt of a server-streaming call with this timeout; returns the gRPC call."""


def stream_attempts(open_call: OpenCall, attempts: Attempts, target: str) -> Iterator[Any]:
    """The responses of a server-streaming call, sent again as `attempts` says while none has come;
    failures raised as DreamstreamErrors. Closing the iterator cancels the call."""
    while True:
        call = open_call(attempts.time_left())
        started = False
        try:
            for response in call:
                started = True
                yield response
            return
        except grpc.RpcError as rpc_error:
            delay = attempts.delay_or_raise(from_rpc_error(rpc_error, target), started=started)
        finally:
            call.cancel()  # a no-op once the stream has ended
        time.sleep(delay)


async def stream_attempts_async(open_call: OpenCall, attempts: Attempts, target: str) -> AsyncIterator[Any]:
    """The asyncio twin of `stream_attempts`."""
    while True:
        call = open_call(attempts.time_left())
        started = False
        try:
            async for response in call:
                started = True
                yield response
            return
        except grpc.RpcError as rpc_error:
            delay = attempts.delay_or_raise(from_rpc_error(rpc_error, target), started=started)
        finally:
            call.cancel()
        await asyncio.sleep(delay)
