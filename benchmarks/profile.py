"""Where one ascent step's time goes: ONNX Runtime's own profiler over the fused step graph.

    python -m benchmarks.profile --model googlenet-bvlc --layer inception_4c/output --size 512
    python -m benchmarks.profile --model efficientnet-lite0 --size 512   # its default layers

The step graph is the one a dream on those layers runs (as the engine chooses it),
opened with the session options the server uses (server/providers.py: the memory
arena, memory pattern and optimisation level are printed), with profiling added.
One warm-up step at the picture's size is left out; the timed steps follow. Printed:
each op type's kernel time per step and its share of all kernel time, and the share
that is convolution (Conv, ConvTranspose, FusedConv). --optimized writes the graph
ONNX Runtime really runs (after its fusions and layout changes) to look at.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.suite import BVLC_WEIGHTS, DEFAULT_IMAGE, GOOGLENET, LITE0, single_model_root, weights_for
from dreamstream.cmdline import positive_int

# The op types that are the convolution work a step exists for; the rest is overhead to cut.
CONVOLUTIONS = frozenset({"Conv", "ConvTranspose", "FusedConv"})


@dataclass(frozen=True)
class OpTime:
    op_type: str
    nodes: int  # distinct nodes of this type that ran
    microseconds: float  # kernel time per step (the sum of its nodes' medians)


@dataclass(frozen=True)
class StepProfile:
    graph: str
    size: tuple[int, int]
    steps: int  # timed steps the figures are the median of
    step_microseconds: float  # the whole run() of a step (median), as the profiler saw it
    ops: list[OpTime]  # slowest first
    slowest_nodes: list[tuple[str, str, float]]  # (node, op type, microseconds per step)
    session: dict[str, object]  # the server's session options that matter for time

    @property
    def kernel_microseconds(self) -> float:
        return sum(op.microseconds for op in self.ops)

    def share(self, op_types: frozenset[str] | set[str]) -> float:
        """The fraction of all kernel time spent in `op_types`."""
        return sum(op.microseconds for op in self.ops if op.op_type in op_types) / self.kernel_microseconds

    @property
    def convolution_share(self) -> float:
        return self.share(CONVOLUTIONS)


def kernel_times(events: list[dict], skip_runs: int) -> tuple[dict[str, tuple[str, float]], list[float]]:
    """Per node (op type, median kernel microseconds over the runs after the first `skip_runs`),
    and each of those runs' own duration. A node's time is assigned to the run whose span
    holds it. The median, not the mean: on a shared machine one step in a few is slowed by
    a neighbour, and that should not decide which op looks expensive."""
    runs = sorted((e["ts"], e["ts"] + e["dur"]) for e in events if e.get("name") == "model_run")
    timed = runs[skip_runs:]
    per_node: dict[str, tuple[str, list[float]]] = {}
    for event in events:
        if event.get("cat") != "Node" or not event.get("name", "").endswith("_kernel_time"):
            continue
        if not any(start <= event["ts"] <= end for start, end in timed):
            continue
        name = event["name"].removesuffix("_kernel_time")
        op_type = event.get("args", {}).get("op_name", "?")
        per_node.setdefault(name, (op_type, []))[1].append(float(event["dur"]))
    nodes = {name: (op_type, statistics.median(times)) for name, (op_type, times) in per_node.items()}
    return nodes, [float(end - start) for start, end in timed]


def step_profile(
    graph: str, size: tuple[int, int], events: list[dict], session: dict[str, object], top: int
) -> StepProfile:
    nodes, runs = kernel_times(events, skip_runs=1)
    by_type: dict[str, list[float]] = defaultdict(list)
    for op_type, microseconds in nodes.values():
        by_type[op_type].append(microseconds)
    ops = sorted(
        (OpTime(op_type, len(times), sum(times)) for op_type, times in by_type.items()),
        key=lambda op: -op.microseconds,
    )
    slowest = sorted(((name, op, us) for name, (op, us) in nodes.items()), key=lambda row: -row[2])[:top]
    return StepProfile(graph, size, len(runs), statistics.median(runs), ops, slowest, session)


def profile_steps(
    model_dirs: Sequence[Path],
    layers: Mapping[str, float] | None,
    image: Path,
    size: int,
    steps: int = 5,
    threads: int = 0,
    optimized: Path | None = None,
    top: int = 10,
) -> list[StepProfile]:
    """Profile `steps` ascent steps of the step graph that dreams `layers` on `image` (longer side
    `size`), for each exported model in `model_dirs` (say, before and after a change). The
    models take turns step by step, the order alternating, so that a neighbour's load
    slows them alike."""
    import onnxruntime as ort

    from dreamstream.modeldir import IMAGE, SHIFT
    from dreamstream.server import imaging
    from dreamstream.server.engine import DreamEngine, DreamSpec
    from dreamstream.server.engine.steppers import step_constants
    from dreamstream.server.models import ModelRepository

    pixels = imaging.decode(image.read_bytes(), size)
    height, width = pixels.shape[:2]
    with tempfile.TemporaryDirectory(prefix="dreamstream-profile-") as scratch:
        subjects = []
        for number, model_dir in enumerate(model_dirs):
            root = single_model_root(model_dir, Path(scratch))
            repository = ModelRepository(root, "cpu", threads=threads)
            repository.load()
            plan = DreamEngine(repository).plan(DreamSpec(pixels=pixels, model=repository.names()[0], layers=layers))
            served = plan.model.session(plan.step_graph)  # opened exactly as the server opens it
            options = served.get_session_options()
            facts = {
                "cpu_memory_arena": options.enable_cpu_mem_arena,
                "shared_env_allocator": _config_entry(options, "session.use_env_allocators") == "1",
                "memory_pattern": options.enable_mem_pattern,
                "graph_optimization_level": str(options.graph_optimization_level).rsplit(".", 1)[-1],
                "intra_op_threads": options.intra_op_num_threads,
            }
            options.enable_profiling = True
            options.profile_file_prefix = str(Path(scratch) / f"step-{number}")
            if optimized is not None and number == 0:
                options.optimized_model_filepath = str(optimized)
            path = plan.model.directory / plan.step_graph
            session = ort.InferenceSession(str(path), sess_options=options, providers=served.get_providers())
            feeds = step_constants(plan.layer_weights, plan.channel_weights, plan.params.step_size)
            feeds[IMAGE] = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], np.float32)  # HxWx3 -> 1x3xHxW
            subjects.append((plan.step_graph, session, feeds, facts))
        shifts = np.random.default_rng(0).integers(0, [height, width], (steps + 1, 2)).astype(np.int64)
        for step, shift in enumerate(shifts):  # the first run at a new size plans its memory: not timed
            order = subjects if step % 2 == 0 else subjects[::-1]
            for _, session, feeds, _ in order:
                session.run(None, {**feeds, SHIFT: shift})
        profiles = []
        for graph, session, _, facts in subjects:
            events = json.loads(Path(session.end_profiling()).read_text())
            profiles.append(step_profile(graph, (height, width), events, facts, top))
    return profiles


def _config_entry(options, key: str) -> str:
    try:
        return options.get_session_config_entry(key)
    except RuntimeError:  # ONNX Runtime raises for a key that was never set
        return ""


def report(profile: StepProfile, title: str = "") -> str:
    height, width = profile.size
    lines = [
        f"{title}{profile.graph} at {width}x{height}: median of {profile.steps} steps after one warm-up",
        "session options as the server sets them (server/providers.py): "
        + ", ".join(f"{key} {value}" for key, value in profile.session.items()),
        f"step {profile.step_microseconds / 1000:.1f} ms, kernels {profile.kernel_microseconds / 1000:.1f} ms",
        "",
        "| op type | nodes | ms per step | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    for op in profile.ops:
        share = op.microseconds / profile.kernel_microseconds
        lines.append(f"| {op.op_type} | {op.nodes} | {op.microseconds / 1000:.2f} | {share:.1%} |")
    lines += ["", f"convolution ({', '.join(sorted(CONVOLUTIONS))}): {profile.convolution_share:.1%} of kernel time"]
    lines += ["", "slowest nodes:"]
    lines += [f"  {us / 1000:7.2f} ms  {op:16} {name}" for name, op, us in profile.slowest_nodes]
    return "\n".join(lines)


def _layers(text: str) -> dict[str, float]:
    """name[:weight],name[:weight] as the CLI's --layers takes them."""
    layers = {}
    for part in text.split(","):
        name, _, weight = part.strip().partition(":")
        try:
            layers[name] = float(weight) if weight else 1.0
        except ValueError:
            raise argparse.ArgumentTypeError(f"{part!r}: a layer's weight must be a number, e.g. {name}:0.5") from None
    return layers


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.profile",
        description=__doc__.split("\n\n", 2)[2],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=GOOGLENET, help=f"the backbone, e.g. {GOOGLENET} or {LITE0}")
    p.add_argument("--layer", type=_layers, help="layers to dream on, name[:weight],... (default the model's own)")
    p.add_argument("--size", type=positive_int, default=512, help="longer side of the picture (default 512)")
    p.add_argument("--steps", type=positive_int, default=5, help="timed steps after the warm-up (default 5)")
    p.add_argument("--threads", type=int, default=0, help="intra-op threads, 0 as the server's default (one per core)")
    p.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help=f"the picture (default {DEFAULT_IMAGE})")
    p.add_argument(
        "--models", type=Path, help="a models directory to reuse; the model is exported into it when missing"
    )
    p.add_argument("--bvlc-weights", type=Path, default=BVLC_WEIGHTS, help="the googlenet-bvlc weights (.npz)")
    p.add_argument(
        "--against",
        type=Path,
        help="a second models directory (say, exported before a change): both are profiled, taking turns step by step",
    )
    p.add_argument("--optimized", type=Path, help="write the graph as ONNX Runtime optimised it to this .onnx")
    p.add_argument("--top", type=int, default=10, help="slowest nodes to list (default 10)")
    return p


def _model_dir(root: Path, backbone: str, bvlc_weights: Path) -> Path:
    from dreamstream.export.api import export_model
    from dreamstream.modeldir import MANIFEST_FILE

    if (root / backbone / MANIFEST_FILE).is_file():
        return root / backbone
    weights = weights_for(backbone, bvlc_weights)
    if weights is None:
        raise SystemExit(f"{backbone}: its weights {bvlc_weights} are absent (--bvlc-weights)")
    print(f"exporting {backbone} into {root}", file=sys.stderr)
    return export_model(backbone, root, weights=weights if backbone == GOOGLENET else None)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dreamstream-profile-models-") as fresh:
        root = args.models or Path(fresh)
        root.mkdir(parents=True, exist_ok=True)
        model_dirs = [_model_dir(root, args.model, args.bvlc_weights)]
        if args.against is not None:
            model_dirs.append(_model_dir(args.against, args.model, args.bvlc_weights))
        profiles = profile_steps(
            model_dirs, args.layer, args.image, args.size, args.steps, args.threads, args.optimized, args.top
        )
    if len(profiles) == 1:
        print(report(profiles[0]))
    else:
        ours, reference = profiles
        print(report(ours, f"{root}: ") + "\n\n" + report(reference, f"{args.against}: ") + "\n")
        ratio = ours.step_microseconds / reference.step_microseconds
        print(
            f"step {ours.step_microseconds / 1000:.1f} ms against {reference.step_microseconds / 1000:.1f} ms "
            f"(x{ratio:.2f}); convolution {ours.convolution_share:.1%} against {reference.convolution_share:.1%}"
        )
    print("rerun: python -m benchmarks.profile " + " ".join(sys.argv[1:] if argv is None else argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
