"""When the dreams running now are expected to end: the retry delay a full server suggests.

A queue place frees when the first running dream ends, so a refused caller is told
to come back then. Each dream's time left is estimated from its last step (the
work done so far and how long it took), counted down since that step.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dreamstream.server.engine import Step


@dataclass(frozen=True)
class _LastStep:
    elapsed: float  # seconds the dream had run at this step
    done: float  # fraction of its work done
    at: float  # clock reading when the step arrived


class RunningDreams:
    """The running dreams' progress, by a key each dream gets when it starts."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._last_steps: dict[int, _LastStep | None] = {}
        self._next_key = 0

    def started(self) -> int:
        key = self._next_key
        self._next_key += 1
        self._last_steps[key] = None
        return key

    def stepped(self, key: int, step: Step) -> None:
        self.progressed(key, step.elapsed, step.done)

    def progressed(self, key: int, elapsed: float, done: float) -> None:
        """The call `key` has run `elapsed` seconds and done the fraction `done` of its work."""
        self._last_steps[key] = _LastStep(elapsed, done, self._clock())

    def ended(self, key: int) -> None:
        self._last_steps.pop(key, None)

    def seconds_until_one_ends(self) -> float | None:
        """The shortest expected time left of the running dreams; None before any has stepped."""
        now = self._clock()
        left = [
            max(0.0, step.elapsed * (1 - step.done) / step.done - (now - step.at))
            for step in self._last_steps.values()
            if step is not None and step.done > 0
        ]
        return min(left, default=None)
