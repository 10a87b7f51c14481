"""What serving costs: a dream through gRPC against the same dream in-process.

For the default model at 512 px (default dream parameters), this measures

- the engine's own compute time: DreamEngine.run in this process, no gRPC;
- the client's wall time for the same request to a `dreamstream serve`
  subprocess on loopback, and the server's own elapsed time for it (the last
  Progress.elapsed_seconds);
- the time to the first frame (end of the first octave), both ways;

and prints the ratios against the in-process reference measured in the same run.
The two take turns, one dream each, and never run at once. `measure` gives the
figures to other benchmarks (`python -m benchmarks` reports them too).

    python -m benchmarks.serving [--image PATH] [--size 512] [--repeats 5] [--device auto]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from dreamstream.client import DreamClient, Frame, Progress
from dreamstream.server import imaging
from dreamstream.server.engine import DreamEngine, DreamSpec, Octave
from dreamstream.server.engine.request import DEFAULT_OCTAVES, DEFAULT_STEPS_PER_OCTAVE
from dreamstream.server.models import DEFAULT_MODEL, ModelRepository
from dreamstream.server.providers import available_cpus, gpu_expected, serving_defaults

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "images" / "coffee.png"
CLI = [sys.executable, "-c", "import sys; from dreamstream.cli import main; sys.exit(main())"]


def timed_stream(events: Iterable[object], is_frame: Callable[[object], bool]) -> tuple[float, float, list[object]]:
    """(seconds to the first frame, seconds to the end, the events) of an event stream."""
    started = time.perf_counter()
    first_frame = None
    collected = []
    for event in events:
        collected.append(event)
        if first_frame is None and is_frame(event):
            first_frame = time.perf_counter() - started
    return first_frame or 0.0, time.perf_counter() - started, collected


@contextlib.contextmanager
def models_dir(given: Path | None) -> Iterator[Path]:
    """A models directory holding the default model: the given one, or a fresh export
    that is removed afterwards."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="dreamstream-bench-") as root:
        # In a child process, so that the export's own ONNX Runtime session and memory
        # stay out of the process the in-process engine is measured in.
        subprocess.run([*CLI, "export", DEFAULT_MODEL, "--out", root], check=True, stdout=subprocess.DEVNULL)
        yield Path(root)


class InProcess:
    """The reference: the engine in this process, no gRPC."""

    def __init__(self, root: Path, device: str, picture: bytes, size: int) -> None:
        # The threads a dream gets from `dreamstream serve`'s defaults, as the served side does.
        _, threads = serving_defaults(available_cpus(), gpu_expected(device))
        repository = ModelRepository(root, device, threads)
        repository.load()
        self.device = repository.device.describe
        self._engine = DreamEngine(repository)
        self._picture, self._size = picture, size

    def run(self) -> tuple[float, float]:
        """(seconds to the first octave, seconds to the end), decoding included as the server does."""
        started = time.perf_counter()
        plan = self._engine.plan(DreamSpec(pixels=imaging.decode(self._picture, self._size)))
        setup = time.perf_counter() - started
        first, total, _ = timed_stream(self._engine.run(plan), lambda event: isinstance(event, Octave))
        return setup + first, setup + total


class Served:
    """The same dream through a `dreamstream serve` subprocess on loopback."""

    def __init__(self, root: Path, device: str, picture: bytes, size: int) -> None:
        self._server = subprocess.Popen(
            [*CLI, "serve", "--models", str(root), "--host", "127.0.0.1", "--port", "0", "--device", device],
            stderr=subprocess.PIPE,
            text=True,
        )
        self._client = DreamClient(f"127.0.0.1:{_wait_for_port(self._server)}")
        self._picture, self._size = picture, size

    def run(self) -> tuple[float, float, float]:
        """(seconds to the first frame, seconds to the end, the server's own ascent seconds)."""
        stream = self._client.dream(self._picture, max_size=self._size, model=DEFAULT_MODEL)
        first, total, events = timed_stream(stream, lambda event: isinstance(event, Frame))
        return first, total, [event for event in events if isinstance(event, Progress)][-1].elapsed

    def close(self) -> None:
        self._client.close()
        self._server.send_signal(signal.SIGTERM)
        self._server.wait(timeout=30)


def _wait_for_port(server: subprocess.Popen) -> int:
    port = None
    for line in server.stderr:
        if match := re.search(r"listening on [^ ]+:(\d+)", line):
            port = int(match.group(1))
        if "serving" in line and port:
            return port
    raise RuntimeError("the server stopped before serving")


@dataclass(frozen=True)
class ServingFigures:
    """Medians over the repeats, in seconds: the in-process engine and the served dream of the same request."""

    device: str  # the engine's device, as the repository describes it
    repeats: int
    engine_total: float  # in-process, decoding included
    engine_first: float  # in-process, to the end of the first octave
    wall_total: float  # the client's wall time for the served dream
    wall_first: float  # the client's time to the first frame
    server_total: float  # the server's own ascent time (the last Progress.elapsed_seconds)
    outside: float  # client wall time outside the server's ascent

    @property
    def overhead(self) -> float:
        """Streaming overhead: the served dream's wall time over the in-process engine's, minus 1."""
        return self.wall_total / self.engine_total - 1


def measure(root: Path, device: str, picture: bytes, size: int, repeats: int) -> ServingFigures:
    """Dream `picture` (longer side `size`) with the default model in `root`, in-process and served, in turns.

    One warm-up dream each, then `repeats` timed ones each.
    """
    # The two are interleaved, never run at once: both see the same machine, and a
    # neighbour's load on a shared box biases neither.
    reference = InProcess(root, device, picture, size)
    remote = Served(root, device, picture, size)
    local_runs, remote_runs = [], []
    try:
        for _ in range(repeats + 1):
            local_runs.append(reference.run())
            remote_runs.append(remote.run())
    finally:
        remote.close()
    local_runs, remote_runs = local_runs[1:], remote_runs[1:]
    return ServingFigures(
        device=reference.device,
        repeats=repeats,
        engine_total=statistics.median(total for _, total in local_runs),
        engine_first=statistics.median(first for first, _ in local_runs),
        wall_total=statistics.median(total for _, total, _ in remote_runs),
        wall_first=statistics.median(first for first, _, _ in remote_runs),
        server_total=statistics.median(elapsed for _, _, elapsed in remote_runs),
        outside=statistics.median(total - elapsed for _, total, elapsed in remote_runs),
    )


def describe(figures: ServingFigures) -> list[str]:
    """The figures as the lines `python -m benchmarks.serving` prints."""
    f = figures
    return [
        f"engine device: {f.device}",
        f"{'':34}{'in-process':>12}{'served':>12}{'ratio':>8}",
        f"{'whole dream (s)':34}{f.engine_total:12.3f}{f.wall_total:12.3f}{f.wall_total / f.engine_total:8.3f}",
        f"{'time to first frame (s)':34}{f.engine_first:12.3f}{f.wall_first:12.3f}{f.wall_first / f.engine_first:8.3f}",
        f"{'server-side ascent (s)':34}{'':12}{f.server_total:12.3f}{f.server_total / f.engine_total:8.3f}",
        f"streaming overhead against the in-process engine: {f.wall_total - f.engine_total:+.3f} s per dream "
        f"({f.overhead * 100:+.1f}%)",
        "client wall time outside the server's ascent (decode, last frame's encoding, transport): "
        f"{f.outside:.3f} s ({f.outside / f.wall_total * 100:.1f}% of the wall time)",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--size", type=int, default=512, help="longer side of the picture (default 512)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    args = parser.parse_args()

    picture = args.image.read_bytes()
    print(
        f"{DEFAULT_MODEL}, {args.image.name} at {args.size} px, "
        f"{DEFAULT_OCTAVES} octaves x {DEFAULT_STEPS_PER_OCTAVE} steps, "
        f"median of {args.repeats} runs each after one warm-up, {os.cpu_count()} CPUs"
    )
    with models_dir(args.models) as root:
        figures = measure(root, args.device, picture, args.size, args.repeats)
    for line in describe(figures):
        print(line)
    print("rerun: python -m benchmarks.serving " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
