"""Serving under concurrency on the CPU: dreams per second and time to the first frame.

For each server configuration (`--max-concurrent` M, `--threads` T; T 0 is the
server's default, the CPUs shared out among the dreams running) a real
`dreamstream serve` process serves the default model, and 1, 2 and 4 client
streams each dream the same picture `--dreams` times back to back. Printed per
configuration and stream count: dreams per second over the whole burst, and
the median time from the call to the first frame (the wait for a slot
included). The configurations take turns round by round, so a neighbour's load
on a shared machine biases none of them.

    python -m benchmarks.concurrency [--configs 2x0,1x2,2x1,2x2] [--streams 1,2,4] [--size 384] [--rounds 1]
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from benchmarks.provenance import RESULTS, stamp, write_results
from benchmarks.serving import DEFAULT_IMAGE, models_dir
from dreamstream.client import DreamClient, Frame
from dreamstream.cmdline import positive_int

_TESTS = Path(__file__).resolve().parents[1] / "tests"


def _configs(text: str) -> tuple[tuple[int, int], ...]:
    try:
        pairs = tuple(tuple(int(part) for part in item.split("x")) for item in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give MAXCONCURRENTxTHREADS pairs, e.g. 2x0,1x2,2x1") from None
    if any(len(pair) != 2 or pair[0] < 1 or pair[1] < 0 for pair in pairs):
        raise argparse.ArgumentTypeError(f"{text!r}: each pair is a positive number and a number of threads, e.g. 2x1")
    return pairs  # type: ignore[return-value]


def _counts(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def burst(target: str, picture: bytes, size: int, streams: int, dreams: int) -> dict[str, Any]:
    """`streams` clients at once, each dreaming `dreams` times in a row: throughput and first frames."""
    first_frames: list[float] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def client() -> None:
        try:
            with DreamClient(target) as dreamer:
                for _ in range(dreams):
                    started = time.perf_counter()
                    first = None
                    for event in dreamer.dream(picture, max_size=size, seed=1):
                        if first is None and isinstance(event, Frame):
                            first = time.perf_counter() - started
                    with lock:
                        first_frames.append(first or 0.0)
        except BaseException as error:  # reported after the burst
            errors.append(error)

    threads = [threading.Thread(target=client) for _ in range(streams)]
    began = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - began
    if errors:
        raise RuntimeError(f"a stream failed: {errors[0]!r}")
    return {
        "streams": streams,
        "dreams": streams * dreams,
        "seconds": wall,
        "dreams_per_second": streams * dreams / wall,
        "first_frame_median_seconds": statistics.median(first_frames),
    }


def measure(
    root: Path,
    configs: tuple[tuple[int, int], ...],
    stream_counts: tuple[int, ...],
    picture: bytes,
    size: int,
    dreams: int,
    rounds: int,
    say=print,
) -> list[dict[str, Any]]:
    """One row per configuration and stream count, medians over `rounds`."""
    if str(_TESTS) not in sys.path:
        sys.path.insert(0, str(_TESTS))
    from serve_process import ServeProcess  # the tests' helper: a real serve process, its port and log

    runs: dict[tuple[int, int, int], list[dict[str, Any]]] = {}
    for number in range(rounds):
        for concurrent, threads in configs if number % 2 == 0 else configs[::-1]:
            queue = str(max(stream_counts))  # every stream waits for a slot rather than being refused
            server = ServeProcess(
                root, "--max-concurrent", str(concurrent), "--threads", str(threads), "--max-queue", queue
            )
            try:
                burst(server.target, picture, size, 1, 1)  # warm-up: the first run at these sizes
                for streams in stream_counts:
                    row = burst(server.target, picture, size, streams, dreams)
                    runs.setdefault((concurrent, threads, streams), []).append(row)
                    say(
                        f"round {number + 1} --max-concurrent {concurrent} --threads {threads}, {streams} streams: "
                        f"{row['dreams_per_second']:.3f} dreams/s, "
                        f"first frame {row['first_frame_median_seconds']:.2f} s"
                    )
            finally:
                server.stop()
    return [
        {
            "max_concurrent": concurrent,
            "threads": threads,
            "streams": streams,
            "dreams_per_second": statistics.median(row["dreams_per_second"] for row in rows),
            "first_frame_median_seconds": statistics.median(row["first_frame_median_seconds"] for row in rows),
            "rounds": len(rows),
        }
        for (concurrent, threads, streams), rows in runs.items()
    ]


def table(rows: list[dict[str, Any]]) -> list[str]:
    """The rows as a Markdown table: one line per configuration, one column pair per stream count."""
    counts = sorted({row["streams"] for row in rows})
    configs = list(dict.fromkeys((row["max_concurrent"], row["threads"]) for row in rows))
    cell = {(row["max_concurrent"], row["threads"], row["streams"]): row for row in rows}
    header = "| `--max-concurrent` | `--threads` | " + " | ".join(
        f"{n} stream{'s' if n > 1 else ''}: dreams/s | first frame" for n in counts
    )
    lines = [header + " |", "| ---: | ---: | " + " | ".join("---: | ---:" for _ in counts) + " |"]
    for concurrent, threads in configs:
        cells = []
        for n in counts:
            row = cell[(concurrent, threads, n)]
            cells.append(f"{row['dreams_per_second']:.2f} | {row['first_frame_median_seconds']:.2f} s")
        shown = threads or "0 (shared out)"
        lines.append(f"| {concurrent} | {shown} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.concurrency", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--configs", type=_configs, default=((2, 0), (1, 2), (2, 1), (2, 2)), help="MxT pairs (2x0,1x2,2x1,2x2)"
    )
    parser.add_argument("--streams", type=_counts, default=(1, 2, 4), help="concurrent streams (default 1,2,4)")
    parser.add_argument("--dreams", type=positive_int, default=2, help="dreams per stream in a row (default 2)")
    parser.add_argument("--size", type=positive_int, default=384, help="the picture's longer side (default 384)")
    parser.add_argument("--rounds", type=positive_int, default=1, help="rounds over every configuration (default 1)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of concurrency.json")
    args = parser.parse_args(argv)
    provenance = stamp("python -m benchmarks.concurrency" + ("" if not argv else " " + shlex.join(argv)))
    with models_dir(args.models) as root:
        rows = measure(root, args.configs, args.streams, args.image.read_bytes(), args.size, args.dreams, args.rounds)
    figures = {"image": args.image.name, "size": args.size, "dreams_per_stream": args.dreams, "rows": rows}
    print("\n".join(table(rows)))
    print(f"wrote {write_results('concurrency', provenance, figures, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
