"""A progress line for dreams on a terminal: octave, step, a bar, loss, time left.

On a terminal the line is redrawn in place; elsewhere (a log, a pipe) only one
line per finished octave is written, so logs stay short.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from dreamstream.client.events import Frame, Progress

_BAR_WIDTH = 24
_MIN_BAR_WIDTH = 8
_REDRAW_SECONDS = 0.1  # fast GPUs send hundreds of steps a second


def clock(seconds: float) -> str:
    """Seconds as m:ss (or h:mm:ss)."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def progress_line(progress: Progress, width: int) -> str:
    """The progress line in at most `width` characters: the bar shrinks first, then details go.

    A line as wide as the terminal would wrap, and "\r" would then redraw only its last
    part, leaving a line behind per step.
    """
    left = progress.seconds_left
    where = f"octave {progress.octave}/{progress.octaves} step {progress.step}/{progress.steps}"
    percent = f"{progress.done:4.0%}"
    details = [f"loss {progress.loss:.3g}", f"{clock(progress.elapsed)} elapsed"]
    if left is not None:
        details[-1] += f", {clock(left)} left"
    while True:
        text = " ".join([where, "{bar}", percent, *details])
        bar_width = min(_BAR_WIDTH, width - (len(text) - len("{bar}")) - 2)
        if bar_width >= _MIN_BAR_WIDTH or not details:
            break
        details.pop(0)  # the loss goes before the time
    if bar_width < _MIN_BAR_WIDTH:
        return f"{where} {percent}"[:width]
    filled = round(progress.done * bar_width)
    return text.replace("{bar}", f"[{'#' * filled}{'-' * (bar_width - filled)}]")[:width]


class ProgressBar:
    """Follows one dream on `stream` (stderr by default)."""

    def __init__(self, stream: TextIO | None = None, columns: int | None = None) -> None:
        """`columns`: the terminal's width (default: asked of the terminal on each redraw)."""
        self._stream = stream or sys.stderr
        self._columns = columns
        self._live = self._stream.isatty()
        self._drawn_at = 0.0
        self._line_open = False

    def update(self, progress: Progress) -> None:
        """Redraw the line for a step (on a terminal, at most ten times a second)."""
        now = time.monotonic()
        if not self._live or now - self._drawn_at < _REDRAW_SECONDS:
            return
        self._drawn_at = now
        columns = self._columns or shutil.get_terminal_size().columns
        # "\r" back to the start, the line, then clear what a longer previous line left behind.
        self._stream.write(f"\r{progress_line(progress, columns - 1)}\x1b[K")
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
