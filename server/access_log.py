"""One log line per call (the access log), and the JSON form of every log line (--log-format json).

The line is logged when the call ends, whatever its outcome, with the fields a log
pipeline indexes: request id, kind (dream, video, zoom, classify), model, picture size,
steps, frames, status, seconds, queue wait.
In text form they follow the message; in JSON form they are fields of the object.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from dreamstream.server.telemetry import DreamListener, DreamRecord

log = logging.getLogger("dreamstream.server.access")
# The attribute of a log record that holds the access log's fields.
FIELDS = "dream"


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 4)


def access_fields(record: DreamRecord) -> dict[str, Any]:
    return {
        "request_id": record.request_id,
        "kind": record.kind,
        "model": record.model,
        "width": record.width,
        "height": record.height,
        "octaves": record.octaves,
        "steps_per_octave": record.steps_per_octave,
        "steps": record.steps_done,
        "frames": record.frames_sent,
        "status": record.code,
        "seconds": _rounded(record.seconds),
        "queue_wait_seconds": _rounded(record.queue_wait),
        "first_frame_seconds": _rounded(record.first_frame_seconds),
    }


class AccessLog(DreamListener):
    """Logs each ended call at INFO on the `dreamstream.server.access` logger."""

    def ended(self, record: DreamRecord) -> None:
        fields = access_fields(record)
        wait = "-" if fields["queue_wait_seconds"] is None else f"{fields['queue_wait_seconds']:.3f} s"
        log.info(
            "%s %s %s: %s %s %dx%d, %d steps, %d frames in %.3f s, queued %s",
            record.kind,
            record.request_id,
            record.code,
            record.model or "-",
            f"{record.width}x{record.height}",
            record.octaves,
            record.steps_per_octave,
            record.steps_done,
            record.frames_sent,
            record.seconds or 0.0,
            wait,
            extra={FIELDS: fields},
        )


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: time, level, logger, message, and the access fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update(getattr(record, FIELDS, {}))
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)
