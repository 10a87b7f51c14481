"""The open ONNX Runtime sessions of every model, held within a memory budget.

Each session holds its own copy of the weights its graph reads (external data is
not shared between sessions): measured on the CPU provider at 1.0 to 1.6 times those
bytes, plus a few MiB. A model has five graphs per layer group, ninety for
efficientnet-lite0 or googlenet-bvlc, so a server that had opened every graph of both
would hold about 2.4 GB of sessions (their graphs read 580 and 1,050 MiB of weights
in all). The sessions therefore share a budget: when opening one would pass it, the
least recently used are closed first. A dream still running on a closed session keeps
it alive (its stepper holds it, see Model.session_source) until the dream ends or its
share of the CPUs changes; the next dream on that graph opens it again (a second or
so). A graph run on several thread counts has a session for each (ONNX Runtime fixes
a session's threads when it opens it).
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import onnxruntime as ort

log = logging.getLogger(__name__)
Session = ort.InferenceSession
SessionKey = tuple[Path, int]  # the graph's path, and the threads its session runs on

# A session's memory: a base (its own allocations and kernels) and its graph's weights, with
# the copies ONNX Runtime makes while optimising (measured 1.03-1.55 over both backbones).
SESSION_BASE_BYTES = 8 * 2**20
SESSION_BYTES_PER_WEIGHTS_BYTE = 1.6


def session_memory(weights_bytes: int) -> int:
    """Bytes a session is expected to hold for a graph that reads `weights_bytes` of weights."""
    return SESSION_BASE_BYTES + int(SESSION_BYTES_PER_WEIGHTS_BYTE * weights_bytes)


class SessionCache:
    """Sessions by graph path and threads, least recently used closed first beyond `budget` bytes (None: no bound).

    A session larger than the whole budget still opens, alone: a dream must be able to run.
    """

    def __init__(self, budget: int | None = None) -> None:
        self.budget = budget
        self._open: OrderedDict[SessionKey, tuple[Session, int]] = OrderedDict()
        self._held = 0  # bytes of the open sessions and of those being opened
        self._lock = threading.Lock()  # the table and the bytes: held for moments only
        # Opening a session takes a second or more: two requests wanting the same new session
        # wait for one opening; a request for an open one, or for another, never waits for it.
        self._opening: dict[SessionKey, threading.Lock] = {}

    def get(
        self, key: SessionKey, weights_bytes: int, open_session: Callable[[], ort.InferenceSession]
    ) -> ort.InferenceSession:
        """The session of `key`, opened with `open_session()` when it is not open."""
        with self._lock:
            if key in self._open:
                self._open.move_to_end(key)
                return self._open[key][0]
            opening = self._opening.setdefault(key, threading.Lock())
        with opening:
            with self._lock:
                if key in self._open:  # opened while this request waited
                    self._open.move_to_end(key)
                    return self._open[key][0]
                need = session_memory(weights_bytes)
                self._make_room(need)
                self._held += need  # reserved now: two openings at once do not pass the budget
            try:
                session = open_session()
            except BaseException:
                with self._lock:
                    self._held -= need
                raise
            with self._lock:
                self._open[key] = (session, need)
                self._opening.pop(key, None)
            return session

    def _make_room(self, need: int) -> None:
        """Close the least recently used sessions until `need` more bytes fit (the lock held)."""
        while self._open and self.budget is not None and self._held + need > self.budget:
            (closed, threads), (_, size) = self._open.popitem(last=False)
            self._held -= size
            log.info(
                "closed the session of %s on %d threads (least recently used; sessions hold %d MiB)",
                closed,
                threads,
                self._held >> 20,
            )

    def count(self, under: Path | None = None) -> int:
        """Sessions open (of graphs under folder `under` only, when given)."""
        with self._lock:
            return sum(1 for path, _ in self._open if under is None or path.parent == under)

    @property
    def held(self) -> int:
        """Bytes the open sessions are expected to hold."""
        return self._held
