"""What serving costs: a dream through gRPC against the same dream in-process.

For the default model at 512 px (default dream parameters), this measures

- the engine's own compute time: DreamEngine.run in this process, no gRPC;
- the client's wall time for the same request to a `dreamstream serve`
  subprocess on loopback, and the server's own elapsed time for it (the last
  Progress.elapsed_seconds);
- the time to the first frame (end of the first octave), both ways;

and prints the ratios against the in-process reference measured in the same run.
The two are never run at once, so they do not share the CPU.

    python -m benchmarks.serving [--image PATH] [--size 512] [--repeats 3] [--device auto]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from dreamstream.client import DreamClient, Frame, Progress
from dreamstream.server import imaging
from dreamstream.server.engine import DreamEngine, DreamParams, Octave
from dreamstream.server.models import DEFAULT_MODEL, ModelRepository

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "images" / "coffee.png"
CLI = [sys.executable, "-c", "import sys; from dreamstream.client.cli import main; sys.exit(main())"]


def timed_stream(events: Iterator[object], is_frame: Callable[[object], bool]) -> tuple[float, float, list[object]]:
    """(seconds to the first frame, seconds to the end, the events) of an event stream."""
    started = time.perf_counter()
    first_frame = None
    collected = []
    for event in events:
        collected.append(event)
        if first_frame is None and is_frame(event):
            first_frame = time.perf_counter() - started
    return first_frame or 0.0, time.perf_counter() - started, collected


def models_dir(given: Path | None) -> Path:
    """A models directory holding the default model: the given one, or a fresh export."""
    if given is not None:
        return given
    root = Path(tempfile.mkdtemp(prefix="dreamstream-bench-"))
    # In a child process: the export tool loads torch, whose threads would share this
    # process with the in-process engine and bias the reference.
    subprocess.run([*CLI, "export", DEFAULT_MODEL, "--out", str(root)], check=True, stdout=subprocess.DEVNULL)
    return root


def in_process(root: Path, device: str, picture: bytes, size: int, repeats: int) -> list[tuple[float, float]]:
    repository = ModelRepository(root, device)
    repository.load()
    engine = DreamEngine(repository)
    runs = []
    for _ in range(repeats + 1):  # the first run warms up
        image = imaging.decode(picture, size)
        plan = engine.plan(image, DreamParams(), DEFAULT_MODEL)
        first, total, _ = timed_stream(engine.run(plan), lambda event: isinstance(event, Octave))
        runs.append((first, total))
    print(f"engine device: {repository.device.describe}")
    return runs[1:]


def served(root: Path, device: str, picture: bytes, size: int, repeats: int) -> list[tuple[float, float, float]]:
    server = subprocess.Popen(
        [*CLI, "serve", "--models", str(root), "--host", "127.0.0.1", "--port", "0", "--device", device],
        stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        port = _wait_for_port(server)
        runs = []
        with DreamClient(f"127.0.0.1:{port}") as client:
            for _ in range(repeats + 1):
                stream = client.dream(picture, max_size=size, model=DEFAULT_MODEL)
                first, total, events = timed_stream(stream, lambda event: isinstance(event, Frame))
                server_elapsed = [event for event in events if isinstance(event, Progress)][-1].elapsed
                runs.append((first, total, server_elapsed))
        return runs[1:]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


def _wait_for_port(server: subprocess.Popen) -> int:
    port = None
    for line in server.stderr:
        if match := re.search(r"listening on [^ ]+:(\d+)", line):
            port = int(match.group(1))
        if "serving" in line and port:
            return port
    raise RuntimeError("the server stopped before serving")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--size", type=int, default=512, help="longer side of the picture (default 512)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    args = parser.parse_args()

    picture = args.image.read_bytes()
    root = models_dir(args.models)
    params = DreamParams()
    print(
        f"{DEFAULT_MODEL}, {args.image.name} at {args.size} px, {params.octaves} octaves x {params.steps} steps, "
        f"median of {args.repeats} runs after one warm-up, {os.cpu_count()} CPUs"
    )
    reference = in_process(root, args.device, picture, args.size, args.repeats)
    remote = served(root, args.device, picture, args.size, args.repeats)

    engine_total = statistics.median(total for _, total in reference)
    engine_first = statistics.median(first for first, _ in reference)
    wall_total = statistics.median(total for _, total, _ in remote)
    wall_first = statistics.median(first for first, _, _ in remote)
    server_total = statistics.median(elapsed for _, _, elapsed in remote)
    print(f"{'':34}{'in-process':>12}{'served':>12}{'ratio':>8}")
    print(f"{'whole dream (s)':34}{engine_total:12.3f}{wall_total:12.3f}{wall_total / engine_total:8.3f}")
    print(f"{'time to first frame (s)':34}{engine_first:12.3f}{wall_first:12.3f}{wall_first / engine_first:8.3f}")
    print(f"{'server-side ascent (s)':34}{'':12}{server_total:12.3f}{server_total / engine_total:8.3f}")
    print(
        f"streaming overhead against the in-process engine: {wall_total - engine_total:+.3f} s per dream "
        f"({(wall_total / engine_total - 1) * 100:+.1f}%)"
    )
    outside = statistics.median(total - elapsed for _, total, elapsed in remote)
    print(
        f"client wall time outside the server's ascent (decode, last frame's encoding, transport): "
        f"{outside:.3f} s ({outside / wall_total * 100:.1f}% of the wall time)"
    )
    print("rerun: python -m benchmarks.serving " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
