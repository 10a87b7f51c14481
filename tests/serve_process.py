"""`dreamstream serve` as a real process: its port, its log as it is written, its memory, signals."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

CLI = [sys.executable, "-c", "import sys; from dreamstream.cli import main; sys.exit(main())"]


class ServeProcess:
    """`dreamstream serve --models ROOT --port 0 ...` on 127.0.0.1, its stderr collected line by line."""

    def __init__(self, models: Path, *flags: str, start_timeout: float = 120) -> None:
        self.process = subprocess.Popen(
            [*CLI, "serve", "--models", str(models), "--host", "127.0.0.1", "--port", "0", "--device", "cpu", *flags],
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: list[str] = []
        self._changed = threading.Condition()
        threading.Thread(target=self._collect, daemon=True).start()
        port = self.wait_for(r"listening on 127\.0\.0\.1:(\d+)", start_timeout).group(1)
        self.wait_for(r"serving ", start_timeout)
        self.target = f"127.0.0.1:{port}"

    def _collect(self) -> None:
        for line in self.process.stderr:
            with self._changed:
                self._lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._lines.append("")  # end of the log
            self._changed.notify_all()

    @property
    def log(self) -> str:
        with self._changed:
            return "".join(self._lines)

    def wait_for(self, pattern: str, timeout: float = 60) -> re.Match[str]:
        """The first log line matching `pattern`, waiting for it to be written."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for line in self._lines:
                    if match := re.search(pattern, line):
                        return match
                if self._lines[-1:] == [""]:
                    raise AssertionError(f"the server ended without logging {pattern!r}:\n{self.log}")
                if not self._changed.wait(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no {pattern!r} in the server's log within {timeout} s:\n{self.log}")

    def count(self, pattern: str) -> int:
        with self._changed:
            return sum(1 for line in self._lines if re.search(pattern, line))

    def status(self, field: str) -> int:
        """A kB figure of /proc/PID/status, e.g. VmRSS or VmHWM (the peak resident memory)."""
        text = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))

    def reset_peak(self) -> None:
        """Start VmHWM afresh from the current RSS (Linux: "5" to clear_refs)."""
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def terminate(self) -> None:
        self.process.send_signal(signal.SIGTERM)

    def exit_status(self, timeout: float = 60) -> int:
        """Wait for the process to end by itself (after a signal already sent)."""
        return self.process.wait(timeout)

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise
