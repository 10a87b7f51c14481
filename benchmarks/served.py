"""The bar: a served dream against the independent PyTorch eager reference, measured in the same run.

googlenet-bvlc at inception_4c/output, astronaut.png at 512 px, 4 octaves x 10
steps, seed 0. Our side is a real `dreamstream serve` process dreaming for the
client (`DreamClient`, loopback): the client's wall time from the call to the
last frame, decoding and every frame's encoding included. The reference is
benchmarks/torch_reference.py in a fresh `benchmarks.worker` process per repeat
(its warm dream: the second of two in that process). The sides take turns (ours
first on even repeats), never run at once, with the same thread count. The
server dreams once before the timed dreams (its warm-up for that size); its peak
memory is its VmHWM over the timed dreams (the loaded model included).

Prints the medians, the ratio ours / torch and the peak, writes
benchmarks/results/served.json, and exits 1 when the bar is not met: the ratio
at most 0.55 and the peak at most 600 MiB.

    python -m benchmarks.served [--repeats 3] [--threads N] [--models DIR] [--out DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from benchmarks.provenance import RESULTS, stamp, write_results
from benchmarks.serving import CLI
from benchmarks.suite import BVLC_WEIGHTS, DEFAULT_IMAGE, GOOGLENET, run_worker, side_order
from benchmarks.worker import Spec
from dreamstream.client import DreamClient, Frame
from dreamstream.cmdline import positive_int

LAYERS = {"inception_4c/output": 1.0}
SIZE, OCTAVES, STEPS, SEED = 512, 4, 10, 0
RATIO_BAR = 0.55  # the bar; its goal is 0.34
PEAK_BAR_MIB = 600
MIB = 2**20


@contextlib.contextmanager
def googlenet_models(given: Path | None, weights: Path) -> Iterator[Path]:
    """A models directory holding googlenet-bvlc: the given one, or a fresh export removed afterwards."""
    if given is not None:
        yield given
        return
    with tempfile.TemporaryDirectory(prefix="dreamstream-served-") as root:
        # A child process: the export's own memory stays out of every measured process.
        command = [*CLI, "export", GOOGLENET, "--weights", str(weights), "--out", root]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        yield Path(root)


class ServedDreams:
    """`dreamstream serve` with googlenet-bvlc only, and a client dreaming the bar's dream on it."""

    def __init__(self, root: Path, threads: int, image: Path) -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from serve_process import ServeProcess  # the tests' helper: port, log, /proc memory

        self.server = ServeProcess(root, "--threads", str(threads), "--no-warm-start")
        self._client = DreamClient(self.server.target)
        self._picture = image.read_bytes()

    def dream(self) -> tuple[float, float]:
        """(seconds to the first frame, seconds to the last) of one dream, as the client sees them."""
        started = time.perf_counter()
        first = None
        events = self._client.dream(
            self._picture,
            model=GOOGLENET,
            layers=LAYERS,
            octaves=OCTAVES,
            steps_per_octave=STEPS,
            max_size=SIZE,
            seed=SEED,
        )
        for event in events:
            if first is None and isinstance(event, Frame):
                first = time.perf_counter() - started
        return first or 0.0, time.perf_counter() - started

    def close(self) -> None:
        self._client.close()
        self.server.stop()


def torch_dream(model_dir: Path, threads: int, image: Path, weights: Path, scratch: Path) -> float:
    """The warm dream's seconds of the torch reference, in a fresh worker process."""
    spec = Spec(
        side="torch",
        model_dir=str(model_dir),
        image=str(image),
        size=SIZE,
        octaves=OCTAVES,
        steps=STEPS,
        threads=threads,
        seed=SEED,
        layers=LAYERS,
        weights=str(weights),
        dreams=2,
    )
    return run_worker(spec, scratch)["dreams"][-1]["seconds"]


def measure(root: Path, threads: int, repeats: int, image: Path, weights: Path, say=print) -> dict[str, Any]:
    """The bar's figures: per-repeat seconds of both sides, medians, the ratio and the server's peak."""
    ours: list[float] = []
    first_frames: list[float] = []
    torch: list[float] = []
    served = ServedDreams(root, threads, image)
    try:
        loaded = served.server.status("VmRSS")
        served.dream()  # the server's first dream at these sizes, as a warm-up
        served.server.reset_peak()
        with tempfile.TemporaryDirectory(prefix="dreamstream-served-") as scratch:
            for repeat in range(repeats):
                for side in side_order(repeat):
                    if side == "ours":
                        first, total = served.dream()
                        ours.append(total)
                        first_frames.append(first)
                    else:
                        torch.append(torch_dream(root / GOOGLENET, threads, image, weights, Path(scratch)))
                    say(f"repeat {repeat + 1}/{repeats} {side:5}: {(ours if side == 'ours' else torch)[-1]:.2f} s")
        peak = served.server.status("VmHWM") * 1024
    finally:
        served.close()
    ratios = [o / t for o, t in zip(ours, torch, strict=True)]
    ratio = statistics.median(ours) / statistics.median(torch)
    return {
        "dream": {"model": GOOGLENET, "layers": LAYERS, "image": image.name, "size": SIZE, "octaves": OCTAVES},
        "steps_per_octave": STEPS,
        "threads": threads,
        "repeats": repeats,
        "ours_seconds": ours,
        "ours_first_frame_seconds": first_frames,
        "torch_seconds": torch,
        "ours_median_seconds": statistics.median(ours),
        "torch_median_seconds": statistics.median(torch),
        "ratio": ratio,
        "ratio_per_repeat": ratios,
        "server_loaded_mib": loaded / 1024,
        "server_peak_mib": peak / MIB,
        "bar": {"ratio": RATIO_BAR, "peak_mib": PEAK_BAR_MIB},
        "passed": ratio <= RATIO_BAR and peak / MIB <= PEAK_BAR_MIB,
    }


def describe(figures: dict[str, Any]) -> list[str]:
    f = figures
    return [
        f"served googlenet-bvlc dream (median of {f['repeats']}): {f['ours_median_seconds']:.2f} s "
        f"(first frame {statistics.median(f['ours_first_frame_seconds']):.2f} s); "
        f"torch eager {f['torch_median_seconds']:.2f} s",
        f"ratio ours / torch: {f['ratio']:.2f} (per repeat {', '.join(f'{r:.2f}' for r in f['ratio_per_repeat'])}; "
        f"bar {RATIO_BAR}, goal 0.34)",
        f"server peak memory over the dreams: {f['server_peak_mib']:.0f} MiB (after loading "
        f"{f['server_loaded_mib']:.0f} MiB; bar {PEAK_BAR_MIB} MiB)",
        "bar " + ("met" if f["passed"] else "NOT met"),
    ]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.served", description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed dreams per side (default 3)")
    parser.add_argument(
        "--threads", type=positive_int, default=os.cpu_count(), help="threads on each side (default the CPU count)"
    )
    parser.add_argument("--models", type=Path, help="a models directory holding googlenet-bvlc (default: export one)")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--weights", type=Path, default=BVLC_WEIGHTS, help="the BVLC GoogLeNet weights (.npz)")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of served.json (default benchmarks/results)")
    args = parser.parse_args(argv)
    for path in (args.image, args.weights):
        if not path.is_file():
            parser.error(f"{path} does not exist")
    provenance = stamp("python -m benchmarks.served" + ("" if not argv else " " + shlex.join(argv)))
    with googlenet_models(args.models, args.weights) as root:
        figures = measure(root, args.threads, args.repeats, args.image.resolve(), args.weights.resolve())
    for line in describe(figures):
        print(line)
    print(f"wrote {write_results('served', provenance, figures, args.out)}")
    return 0 if figures["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
