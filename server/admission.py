"""Who may run now: the bounded line of dreams (slots, memory budget, drain) and the stop of one admitted dream.

Dreams, animations and classifications all wait in the same `Admission`, so
whatever mix of calls arrives, the server holds at most its slots and its memory
budget, and a line of bounded length; beyond that a call is refused as Busy.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from dreamstream.server.refusals import Busy, Draining

log = logging.getLogger(__name__)

# Told a waiting call's place in line (1: next) and how many wait in all, each time they change.
PlaceListener = Callable[[int, int], None]


@dataclass(eq=False)
class _Waiter:
    granted: asyncio.Future[None]
    memory: int
    on_place: PlaceListener | None = None
    told: tuple[int, int] | None = field(default=None)


class Admission:
    """At most `running` dreams at once, taking at most `memory_budget` bytes together, and
    `waiting` more in line, first come first served; beyond that, Busy. While draining,
    Draining for new and waiting dreams alike.

    A slot is given back only when its worker thread has really stopped, so a
    cancelled dream's last step still counts against the limit. `retry_after` says
    when a refused caller should come back (None: no estimate).
    """

    def __init__(
        self,
        running: int,
        waiting: int,
        memory_budget: int | None = None,
        retry_after: Callable[[], float | None] = lambda: None,
    ) -> None:
        self._running_limit = running
        self._waiting_limit = waiting
        self._memory_budget = memory_budget
        self._retry_after = retry_after
        self._running = 0
        self._memory = 0  # bytes the running dreams are expected to take
        self._waiters: collections.deque[_Waiter] = collections.deque()
        self._draining = False
        self._idle: asyncio.Event | None = None

    @property
    def running(self) -> int:
        return self._running

    async def acquire(self, memory: int = 0, on_place: PlaceListener | None = None) -> None:
        """Wait for a slot (and `memory` bytes of the budget); raises Busy or Draining.

        `on_place(place, waiting)` hears the call's place in line whenever it changes, while it waits.
        """
        if self._draining:
            raise draining()
        if not self._waiters and self._fits(memory):
            self._take(memory)
            return
        if len(self._waiters) >= self._waiting_limit:
            raise Busy(
                f"the server is busy: {self._running} dream(s) running and {len(self._waiters)} waiting; retry later",
                retry_after=self._retry_after(),
            )
        waiter = asyncio.get_running_loop().create_future()
        entry = _Waiter(waiter, memory, on_place)
        self._waiters.append(entry)
        log.info("dream waits for a slot: %d running, %d waiting", self._running, len(self._waiters))
        self._tell_places()
        try:
            await waiter
        except BaseException:
            if entry in self._waiters:
                self._waiters.remove(entry)
                self._tell_places()
            elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release(memory)  # granted just as the caller went away
            raise

    def release(self, memory: int = 0) -> None:
        self._running -= 1
        self._memory -= memory
        self._grant()
        if self._running == 0 and self._idle is not None:
            self._idle.set()

    def drain(self) -> None:
        """Refuse new dreams and end every waiting one with Draining at once."""
        self._draining = True
        while self._waiters:
            waiter = self._waiters.popleft().granted
            if not waiter.done():
                waiter.set_exception(draining())

    async def wait_idle(self, timeout: float) -> bool:
        """Whether every running dream ended within `timeout` seconds."""
        if self._running == 0:
            return True
        self._idle = asyncio.Event()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True

    def _fits(self, memory: int) -> bool:
        if self._running >= self._running_limit:
            return False
        # One dream always runs: planning refused any that alone is above the budget.
        return self._memory_budget is None or self._running == 0 or self._memory + memory <= self._memory_budget

    def _take(self, memory: int) -> None:
        self._running += 1
        self._memory += memory

    def _grant(self) -> None:
        granted = False
        while self._waiters and self._fits(self._waiters[0].memory):
            entry = self._waiters.popleft()
            granted = True
            if entry.granted.done():  # its caller went away
                continue
            self._take(entry.memory)
            entry.granted.set_result(None)
        if granted:
            self._tell_places()

    def _tell_places(self) -> None:
        """Tell each waiting call whose place changed (the line is short: max_queue)."""
        waiting = len(self._waiters)
        for place, entry in enumerate(self._waiters, start=1):
            if entry.on_place is not None and entry.told != (place, waiting):
                entry.told = (place, waiting)
                entry.on_place(place, waiting)


def draining() -> Draining:
    return Draining("the server is draining (shutting down) and takes no new dream: retry (another replica)")


class Control:
    """How the server stops one admitted call: the flag its worker checks, and the error to end it with
    (a Refusal such as Draining, or the data plane's CallCancelled when its caller cancels it)."""

    def __init__(self) -> None:
        self.cancel = threading.Event()
        self.stopped_by: Exception | None = None

    def stop(self, reason: Exception) -> None:
        self.stopped_by = reason
        self.cancel.set()
