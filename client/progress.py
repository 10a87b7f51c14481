"""A progress line for dreams on a terminal: octave, step, a bar, loss, time left.

On a terminal the line is redrawn in place; elsewhere (a log, a pipe) only one
line per finished octave is written, so logs stay short.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import TextIO

from dreamstream.client.events import Frame, Progress

_BAR_WIDTH = 24
_REDRAW_SECONDS = 0.1  # fast GPUs send hundreds of steps a second


def clock(seconds: float) -> str:
    """Seconds as m:ss (or h:mm:ss)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ProgressBar:
    """Follows one dream on `stream` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty()
        self._drawn_at = 0.0
        self._line_open = False

    def update(self, progress: Progress) -> None:
        """Redraw the line for a step (on a terminal, at most ten times a second)."""
        now = time.monotonic()
        if not self._live or now - self._drawn_at < _REDRAW_SECONDS:
            return
        self._drawn_at = now
        filled = round(progress.done * _BAR_WIDTH)
        left = progress.seconds_left
        self._stream.write(
            f"\roctave {progress.octave}/{progress.octaves} step {progress.step}/{progress.steps} "
            f"[{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] {progress.done:4.0%} "
            f"loss {progress.loss:.3g}  {clock(progress.elapsed)} elapsed"
            + (f", {clock(left)} left" if left is not None else "")
            + "\x1b[K"  # clear what a longer previous line left behind
        )
        self._stream.flush()
        self._line_open = True

    def frame(self, frame: Frame, saved: Path | None = None) -> None:
        """Write a lasting line for a finished octave."""
        self._end_line()
        where = f", saved to {saved}" if saved else ""
        self._stream.write(f"octave {frame.octave}/{frame.octaves}: {frame.width}x{frame.height}{where}\n")
        self._stream.flush()

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self._line_open:
            self._stream.write("\r\x1b[K")
            self._line_open = False
