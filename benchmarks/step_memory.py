"""The memory one dream step takes, as server/engine/limits.py estimates it: measured on a real server.

A `dreamstream serve` process (CPU, no memory budget) dreams seeded noise, one
octave of two steps, on the deepest layer of each built-in backbone that matters
(efficientnet-lite0 `head`, googlenet-bvlc `inception_5b/output`) at 512 and
1024 px square, one dream at a time. Printed for each: the server's peak RSS
over its RSS just before the dream, and what `limits.step_memory` allows.

    python -m benchmarks.step_memory [--models DIR] [--sizes 512,1024]
"""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.provenance import RESULTS, stamp, write_results
from benchmarks.serving import CLI
from benchmarks.suite import BVLC_WEIGHTS, GOOGLENET, LITE0
from dreamstream.client import DreamClient
from dreamstream.cmdline import positive_int
from dreamstream.server.engine.limits import step_memory

DEEPEST = {LITE0: "head", GOOGLENET: "inception_5b/output"}
MIB = 2**20


def measure(root: Path, sizes: tuple[int, ...], say=print) -> list[dict[str, Any]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from serve_process import ServeProcess  # the tests' helper: a real serve process and its /proc memory

    server = ServeProcess(root, "--max-input-pixels", str(max(sizes) ** 2), "--no-warm-start")
    rows = []
    try:
        with DreamClient(server.target) as client:
            for model, layer in DEEPEST.items():
                for side in sizes:
                    server.reset_peak()
                    before = server.status("VmRSS")
                    options = {"width": side, "height": side, "octaves": 1, "steps_per_octave": 2, "max_size": side}
                    list(client.dream(None, model=model, layers={layer: 1.0}, **options))
                    peak = (server.status("VmHWM") - before) / 1024
                    allowed = step_memory(side * side) / MIB
                    row = {"model": model, "layer": layer, "side": side, "peak_mib": peak, "allowed_mib": allowed}
                    rows.append(row)
                    say(f"{model} {layer} {side} px: peak {peak:.0f} MiB over the RSS before, estimate {allowed:.0f}")
    finally:
        server.stop()
    return rows


def _sides(text: str) -> tuple[int, ...]:
    return tuple(positive_int(part) for part in text.split(","))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.step_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=Path, help="a models directory with both models (default: export them)")
    parser.add_argument(
        "--sizes", type=_sides, default=(512, 1024), help="square sides, comma separated (default 512,1024)"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of step_memory.json")
    args = parser.parse_args(argv)
    sizes = args.sizes
    provenance = stamp("python -m benchmarks.step_memory" + ("" if not argv else " " + shlex.join(argv)))
    with tempfile.TemporaryDirectory(prefix="dreamstream-step-memory-") as scratch:
        root = args.models or Path(scratch)
        for backbone, extra in ((GOOGLENET, ["--weights", str(BVLC_WEIGHTS)]), (LITE0, [])):
            if not (root / backbone / "manifest.json").is_file():
                command = [*CLI, "export", backbone, *extra, "--out", str(root)]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        rows = measure(root, sizes)
    fits = all(row["peak_mib"] <= row["allowed_mib"] for row in rows)
    print("every step within the estimate" if fits else "a step took MORE than the estimate: raise limits.py's")
    print(f"wrote {write_results('step_memory', provenance, {'rows': rows, 'fits': fits}, args.out)}")
    return 0 if fits else 1


if __name__ == "__main__":
    sys.exit(main())
