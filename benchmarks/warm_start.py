"""What the warm start saves: the first dream after a server starts, with and without it.

Each measurement is a fresh process (a fresh ONNX Runtime) that loads the models as
`dreamstream serve` does, runs the warm-up or not, then dreams the same picture twice;
the two sides take turns. The process's CPU time is printed beside the wall time: on a
shared machine it is the steadier of the two.

    python -m benchmarks.warm_start [--models DIR] [--image PATH] [--size 256] [--repeats 4] [--device auto]
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.provenance import RESULTS, stamp, write_results
from benchmarks.serving import DEFAULT_IMAGE, models_dir

SIDES = ("without", "with")
# Small enough that a start-up cost, if any, is not lost in the dream's own time.
OCTAVES, STEPS_PER_OCTAVE = 2, 5


def first_two_dreams(root: Path, device: str, warm: bool, image: Path, size: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of the first and the second dream of a fresh server's engine."""
    from dreamstream.server.engine import DreamEngine, DreamSpec
    from dreamstream.server.models import ModelRepository
    from dreamstream.server.warmup import warm_up

    repository = ModelRepository(root, device)
    repository.load()
    engine = DreamEngine(repository)
    if warm:
        warm_up(engine)
    spec = DreamSpec(image=image.read_bytes(), max_size=size, octaves=OCTAVES, steps_per_octave=STEPS_PER_OCTAVE)
    times = []
    for _ in range(2):
        wall, cpu = time.perf_counter(), time.process_time()
        for _ in engine.run(engine.plan(spec)):
            pass
        times.append((time.perf_counter() - wall, time.process_time() - cpu))
    return times


def in_fresh_process(root: Path, device: str, warm: bool, image: Path, size: int) -> list[tuple[float, float]]:
    code = (
        "import json, sys; from pathlib import Path; from benchmarks.warm_start import first_two_dreams; "
        "print(json.dumps(first_two_dreams(Path(sys.argv[1]), sys.argv[2], sys.argv[3] == 'with', "
        "Path(sys.argv[4]), int(sys.argv[5]))))"
    )
    arguments = [str(root), device, "with" if warm else "without", str(image), str(size)]
    done = subprocess.run(
        [sys.executable, "-c", code, *arguments],
        cwd=Path(__file__).resolve().parents[1],
        capture_output=True,
        text=True,
        check=True,
    )
    return [tuple(pair) for pair in json.loads(done.stdout.splitlines()[-1])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE)
    parser.add_argument("--size", type=int, default=256, help="longer side of the picture (default 256)")
    parser.add_argument("--repeats", type=int, default=4, help="fresh processes per side (default 4)")
    parser.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of warm_start.json (benchmarks/results)")
    args = parser.parse_args()
    provenance = stamp(shlex.join(["python", "-m", "benchmarks.warm_start", *sys.argv[1:]]))

    runs: dict[str, list[list[tuple[float, float]]]] = {side: [] for side in SIDES}
    with models_dir(args.models) as root:
        for _ in range(args.repeats):
            for side in SIDES:
                runs[side].append(in_fresh_process(root, args.device, side == "with", args.image, args.size))
    dream = f"{OCTAVES} octaves x {STEPS_PER_OCTAVE} steps"
    print(f"{args.image.name} at {args.size} px, {dream}, median of {args.repeats} fresh processes per side")
    print("| warm start | first dream wall | first dream CPU | second dream wall | second dream CPU |")
    print("| --- | ---: | ---: | ---: | ---: |")
    medians = {}
    for side in SIDES:
        cells = [statistics.median(run[dream][kind] for run in runs[side]) for dream in (0, 1) for kind in (0, 1)]
        medians[side] = cells
        print(f"| {side} | " + " | ".join(f"{seconds:.3f} s" for seconds in cells) + " |")
    figures = {"image": args.image.name, "size": args.size, "dream": dream, "repeats": args.repeats, "medians": medians}
    print(f"wrote {write_results('warm_start', provenance, figures, args.out)}")
    print("rerun: python -m benchmarks.warm_start " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
