"""What each call did, as the data plane saw it, for whoever watches: metrics, the access log.

The data plane fills one `DreamRecord` per call (dream, video, zoom or classification) and
tells a `Telemetry` as the call moves on (queued, admitted, each step, each frame, ended);
listeners such as the Prometheus metrics and the JSON access log turn the same record into
their own form. Nothing here
knows gRPC or the engine, and the engine knows nothing of this.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class DreamRecord:
    """One call (a dream, video, zoom or classification). Times are time.monotonic() readings;
    None until the moment happens."""

    request_id: str
    kind: str = "dream"  # dream, video, zoom or classify (dataplane.CallKind)
    received_at: float = field(default_factory=time.monotonic)
    model: str = ""  # empty until the request is planned (a refused request may name none)
    width: int = 0
    height: int = 0
    octaves: int = 0
    steps_per_octave: int = 0
    steps_done: int = 0
    frames_sent: int = 0
    queued_at: float | None = None
    admitted_at: float | None = None
    first_frame_at: float | None = None
    ended_at: float | None = None
    code: str = "OK"  # the call's final status, by its canonical code name (OK, CANCELLED, INVALID_ARGUMENT...)

    def planned(self, model: str, size: tuple[int, int], octaves: int, steps_per_octave: int) -> None:
        self.model = model
        self.height, self.width = size
        self.octaves = octaves
        self.steps_per_octave = steps_per_octave

    @property
    def queue_wait(self) -> float | None:
        """Seconds between asking for a dream slot and getting one."""
        if self.queued_at is None or self.admitted_at is None:
            return None
        return self.admitted_at - self.queued_at

    @property
    def running_seconds(self) -> float | None:
        """Seconds the dream ran, from its admission to its end."""
        if self.admitted_at is None or self.ended_at is None:
            return None
        return self.ended_at - self.admitted_at

    @property
    def seconds(self) -> float | None:
        """Seconds the whole call took, queue included."""
        return None if self.ended_at is None else self.ended_at - self.received_at

    @property
    def first_frame_seconds(self) -> float | None:
        """Seconds from the request's arrival to its first frame."""
        return None if self.first_frame_at is None else self.first_frame_at - self.received_at


class DreamListener:
    """Told of each moment of every dream (override what you need). Called on the server's
    event loop, so a listener must not block."""

    def queued(self, record: DreamRecord) -> None:
        """The dream asks for a slot."""

    def admitted(self, record: DreamRecord) -> None:
        """The dream got a slot and starts."""

    def stepped(self, record: DreamRecord) -> None:
        """One ascent step ran."""

    def framed(self, record: DreamRecord) -> None:
        """One frame (a dream's octave, a video's or zoom's frame) goes to the client."""

    def ended(self, record: DreamRecord) -> None:
        """The call ended (record.code says how), whether or not the dream started."""


class Telemetry:
    """Stamps the record at each moment of a dream and tells every listener."""

    def __init__(self, listeners: Iterable[DreamListener] = ()) -> None:
        self.listeners = list(listeners)

    def queued(self, record: DreamRecord) -> None:
        record.queued_at = time.monotonic()
        for listener in self.listeners:
            listener.queued(record)

    def admitted(self, record: DreamRecord) -> None:
        record.admitted_at = time.monotonic()
        for listener in self.listeners:
            listener.admitted(record)

    def stepped(self, record: DreamRecord) -> None:
        record.steps_done += 1
        for listener in self.listeners:
            listener.stepped(record)

    def framed(self, record: DreamRecord) -> None:
        record.frames_sent += 1
        if record.first_frame_at is None:
            record.first_frame_at = time.monotonic()
        for listener in self.listeners:
            listener.framed(record)

    def ended(self, record: DreamRecord, code: str) -> None:
        record.ended_at = time.monotonic()
        record.code = code
        for listener in self.listeners:
            listener.ended(record)
