"""ONNX Runtime's CPU memory settings side by side: step time, and the memory a burst holds.

The candidates (see server/providers.py for the one the server uses):

- `off`: no arena, every tensor is malloc'ed and freed (the server before issue 17);
- `session`: each session's own arena (ONNX Runtime's default, it keeps its peak);
- `session+shrink`: the same, shrunk (`memory.enable_memory_arena_shrinkage`) after every Run;
- `shared`: one arena for every session (`create_and_register_allocator` with
  the server's extend strategy, `session.use_env_allocators`), never shrunk;
- `shared+octave`: the same, shrunk after the last step of each octave;
- `shared+shrink`: the same, shrunk after every Run.

Speed: googlenet-bvlc's fused step graph at `inception_4c/output`, the default
dream's octave schedule of a 512 px square (10 steps an octave), one process
holding a session per candidate, the candidates dreaming in turn, `--rounds`
times; the median dream's wall and CPU time, and its ratio to `off`.

Memory: a fresh process per candidate with efficientnet-lite0's step graphs:
four threads each run one step at once on a `--burst-side` picture (the largest
legal dream of tests/test_memory.py's 320 MiB budget), then one step at a time
on four other layers' graphs; the peak over the resident memory after loading,
and what stays resident afterwards (after glibc's malloc_trim, as the server
does after each dream).

    python -m benchmarks.arena [--rounds 2] [--models DIR] [--threads 2] [--burst-side 390]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from benchmarks.provenance import RESULTS, stamp, write_results
from benchmarks.serving import CLI
from benchmarks.suite import BVLC_WEIGHTS, DEFAULT_IMAGE, GOOGLENET, LITE0
from dreamstream.cmdline import positive_int

CANDIDATES = ("off", "session", "session+shrink", "shared", "shared+octave", "shared+shrink")
DREAM_LAYER = {"inception_4c/output": 1.0}
BURST_LAYERS = ("block4", "block8", "block12", "head")
MIB = 2**20


def session_options(candidate: str, threads: int) -> ort.SessionOptions:
    """The server's session options (server/providers.py) with `candidate`'s memory settings."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.enable_mem_pattern = False
    options.enable_cpu_mem_arena = candidate != "off"
    if candidate.startswith("shared"):
        options.add_session_config_entry("session.use_env_allocators", "1")
    return options


def register_shared_arena() -> None:
    from dreamstream.server.providers import _ARENA_EXTEND_STRATEGY

    info = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(info, ort.OrtArenaCfg(0, _ARENA_EXTEND_STRATEGY, -1, -1))


def shrink_after(candidate: str, last_of_octave: bool) -> ort.RunOptions | None:
    if candidate.endswith("+shrink") or (candidate.endswith("+octave") and last_of_octave):
        options = ort.RunOptions()
        options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        return options
    return None


def _step_inputs(model_dir: Path, layers: dict[str, float], side: int) -> tuple[str, dict[str, np.ndarray]]:
    """The step graph serving `layers` and its feeds for a `side` px square picture, as the engine makes them.

    Read from the manifest: a ModelRepository would open a session with the server's own settings.
    """
    from dreamstream.modeldir import IMAGE, SHIFT, read_manifest
    from dreamstream.server import imaging
    from dreamstream.server.engine.octaves import resize
    from dreamstream.server.engine.request import DEFAULT_STEP_SIZE
    from dreamstream.server.engine.steppers import step_constants

    manifest = read_manifest(model_dir)
    layer_weights = np.zeros(len(manifest.layers), np.float32)
    for name, weight in layers.items():
        layer_weights[manifest.layer_index(name)] = weight
    deepest = max((manifest.layer(name) for name in layers), key=lambda layer: manifest.layer_index(layer.name))
    feeds = step_constants(layer_weights, np.ones(manifest.channel_total, np.float32), DEFAULT_STEP_SIZE)
    picture = imaging.decode(DEFAULT_IMAGE.read_bytes(), side)
    square = resize(np.ascontiguousarray(picture.transpose(2, 0, 1)), side, side)
    feeds[IMAGE] = np.ascontiguousarray(square[None], np.float32)
    feeds[SHIFT] = np.array([3, 5], np.int64)
    return str(model_dir / deepest.focus_step_graph), feeds


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def speed(model_dir: Path, threads: int, rounds: int, say=print) -> dict[str, Any]:
    """Each candidate dreams the octave schedule in turn; medians of wall and CPU seconds per dream."""
    from dreamstream.modeldir import IMAGE, IMAGE_OUT, LOSS
    from dreamstream.server.engine.octaves import octave_sizes, resize

    graph, feeds = _step_inputs(model_dir, DREAM_LAYER, 512)
    register_shared_arena()
    sessions = {
        candidate: ort.InferenceSession(graph, session_options(candidate, threads), providers=["CPUExecutionProvider"])
        for candidate in CANDIDATES
    }
    sizes = octave_sizes(512, 512, 4, 1.4, 32)
    pictures = [resize(feeds[IMAGE][0], height, width)[None] for height, width in sizes]
    times: dict[str, list[tuple[float, float]]] = {candidate: [] for candidate in CANDIDATES}
    for number in range(rounds + 1):  # the first round opens every shape once, untimed
        for candidate in CANDIDATES if number % 2 == 0 else CANDIDATES[::-1]:
            session, wall, cpu = sessions[candidate], time.perf_counter(), _cpu()
            for picture in pictures:
                inputs = {**feeds, IMAGE: np.ascontiguousarray(picture, np.float32)}
                for step in range(1, 11):
                    inputs[IMAGE] = session.run([IMAGE_OUT, LOSS], inputs, shrink_after(candidate, step == 10))[0]
            if number:
                times[candidate].append((time.perf_counter() - wall, _cpu() - cpu))
                say(f"speed round {number}/{rounds} {candidate:15} {times[candidate][-1][0]:6.2f} s")
    off = statistics.median(wall for wall, _ in times["off"])
    off_cpu = statistics.median(cpu for _, cpu in times["off"])
    return {
        candidate: {
            "dream_seconds": statistics.median(wall for wall, _ in runs),
            "dream_cpu_seconds": statistics.median(cpu for _, cpu in runs),
            "ratio_to_off": statistics.median(wall for wall, _ in runs) / off,
            "cpu_ratio_to_off": statistics.median(cpu for _, cpu in runs) / off_cpu,
        }
        for candidate, runs in times.items()
    }


def _status_mib(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1)) / 1024


def memory_in_this_process(candidate: str, model_dir: Path, threads: int, side: int) -> dict[str, float]:
    """The burst and the mix of layers, in this (fresh) process."""
    from dreamstream.modeldir import IMAGE_OUT, LOSS
    from dreamstream.server.memory import give_back_free_memory

    inputs = [_step_inputs(model_dir, {layer: 1.0}, side) for layer in ("block10", *BURST_LAYERS)]
    if candidate.startswith("shared"):
        register_shared_arena()
    sessions = [
        ort.InferenceSession(graph, session_options(candidate, threads), providers=["CPUExecutionProvider"])
        for graph, _ in inputs
    ]
    loaded = _status_mib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM from here on

    def step(index: int) -> None:
        sessions[index].run([IMAGE_OUT, LOSS], inputs[index][1], shrink_after(candidate, True))

    burst = [threading.Thread(target=step, args=(0,)) for _ in range(4)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join()
    give_back_free_memory()  # as the server does after every dream
    figures = {"burst_peak_mib": _status_mib("VmHWM") - loaded, "burst_held_mib": _status_mib("VmRSS") - loaded}
    for index in range(1, len(sessions)):
        step(index)
        give_back_free_memory()
    figures["mix_peak_mib"] = _status_mib("VmHWM") - loaded
    figures["mix_held_mib"] = _status_mib("VmRSS") - loaded
    return figures


def memory(model_dir: Path, threads: int, side: int, say=print) -> dict[str, Any]:
    """`memory_in_this_process` for every candidate, each in a fresh process."""
    results = {}
    for candidate in CANDIDATES:
        command = [sys.executable, "-m", "benchmarks.arena", "--memory-of", candidate, "--models", str(model_dir)]
        command += ["--threads", str(threads), "--burst-side", str(side)]
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        results[candidate] = json.loads(done.stdout.splitlines()[-1])
        say(f"memory {candidate:15} {results[candidate]}")
    return results


def table(figures: dict[str, Any]) -> list[str]:
    lines = [
        "| CPU memory setting | dream | CPU time | / off | burst peak | held after | 5 layers: peak | held after |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for candidate in CANDIDATES:
        s, m = figures["speed"][candidate], figures["memory"][candidate]
        lines.append(
            f"| `{candidate}` | {s['dream_seconds']:.2f} s | {s['dream_cpu_seconds']:.2f} s | "
            f"{s['ratio_to_off']:.2f} | "
            f"{m['burst_peak_mib']:.0f} MiB | {m['burst_held_mib']:.0f} MiB | {m['mix_peak_mib']:.0f} MiB | "
            f"{m['mix_held_mib']:.0f} MiB |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.arena", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=positive_int, default=2, help="timed dreams per candidate (default 2)")
    parser.add_argument("--threads", type=positive_int, default=os.cpu_count(), help="intra-op threads")
    parser.add_argument("--burst-side", type=positive_int, default=390, help="the burst's picture side (390)")
    parser.add_argument("--models", type=Path, help="a models directory with googlenet-bvlc and efficientnet-lite0")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of arena.json")
    parser.add_argument("--memory-of", choices=CANDIDATES, help=argparse.SUPPRESS)  # the fresh memory process
    args = parser.parse_args(argv)
    if args.memory_of:
        figures = memory_in_this_process(args.memory_of, args.models, args.threads, args.burst_side)
        print(json.dumps(figures))
        return 0
    provenance = stamp("python -m benchmarks.arena" + ("" if not argv else " " + shlex.join(argv)))
    with tempfile.TemporaryDirectory(prefix="dreamstream-arena-") as scratch:
        root = args.models or Path(scratch)
        for backbone, extra in ((GOOGLENET, ["--weights", str(BVLC_WEIGHTS)]), (LITE0, [])):
            if not (root / backbone / "manifest.json").is_file():
                command = [*CLI, "export", backbone, *extra, "--out", str(root)]
                subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        figures = {
            "threads": args.threads,
            "rounds": args.rounds,
            "burst_side": args.burst_side,
            "memory": memory(root / LITE0, args.threads, args.burst_side),
            "speed": speed(root / GOOGLENET, args.threads, args.rounds),
        }
    print("\n".join(table(figures)))
    print(f"wrote {write_results('arena', provenance, figures, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
