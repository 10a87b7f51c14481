"""python -m benchmarks: our engine against a PyTorch eager reference, side by side, on this machine's CPU.

Three parts, in one run:

- dreams: the whole DeepDream of a 512 px photograph (4 octaves x 10 steps,
  default step size, jitter and octave scale, one seed) with googlenet-bvlc at
  inception_4c/output and efficientnet-lite0 at its default layers. Our side
  is the server's DreamEngine on ONNX Runtime's CPU provider, the reference is
  benchmarks/torch_reference.py (the same algorithm in PyTorch eager mode, same
  weights). Each measurement is a fresh process, the sides take turns. Printed:
  per-step time at each octave size, whole-dream time (median and min-max over
  the repeats), peak memory, ours / torch for each, and how closely the final
  pictures agree (PSNR).
- growth: step time and peak memory at 256, 512, 1024 and 2048 px (googlenet-bvlc
  at inception_4c/output, or efficientnet-lite0 at block10 without the BVLC
  weights), written as cost_growth.md and cost_growth.png.
- serving: time to the first frame and streaming overhead of the default model
  through `dreamstream serve`, from benchmarks/serving.py.

Everything goes to the console and to OUT/results.json and OUT/report.md. The
full run takes 10-15 minutes on 2 cores; --quick is a smoke run of a minute or two.
Needs the bench extra: pip install -e '.[bench]'.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from benchmarks import report, suite
from dreamstream.cmdline import positive_int

FULL_GROWTH_SIZES = (256, 512, 1024, 2048)
# --quick: Lite0 alone, small pictures, one repeat: proves the suite runs, measures little.
QUICK = {
    "size": 128,
    "octaves": 2,
    "steps": 3,
    "repeats": 1,
    "growth_sizes": (96, 128),
    "growth_steps": 2,
    "growth_steps_largest": 2,
    "serving_repeats": 1,
    "out": suite.REPO / "benchmarks" / "results" / "quick",
}
FULL = {
    "size": 512,
    "octaves": 4,
    "steps": 10,
    "repeats": 5,
    "growth_sizes": FULL_GROWTH_SIZES,
    "growth_steps": 5,
    "growth_steps_largest": 3,
    "serving_repeats": 5,
    "out": suite.REPO / "benchmarks" / "results",
}


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give sides in pixels separated by commas, e.g. 256,512") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be positive")
    return sizes


def _parts(text: str) -> tuple[str, ...]:
    parts = tuple(part.strip() for part in text.split(","))
    unknown = [part for part in parts if part not in suite.PARTS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown part(s) {', '.join(unknown)}: choose from {', '.join(suite.PARTS)}")
    return parts


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="a fast smoke run: efficientnet-lite0 only, a 128 px picture, 2 octaves x 3 steps, one repeat, "
        "cost growth at 96 and 128 px, one serving round; writes to benchmarks/results/quick unless --out",
    )
    p.add_argument(
        "--repeats",
        type=positive_int,
        help="processes per side for the whole dreams, and serving rounds (default 5; --quick 1)",
    )
    p.add_argument(
        "--out", type=Path, help="where results.json, report.md, cost_growth.md/.png go (default benchmarks/results)"
    )
    p.add_argument(
        "--models",
        type=Path,
        help="a models directory to reuse (as `dreamstream export --out DIR` writes it); missing models are "
        "exported into it. Default: a fresh export into a temporary directory, removed afterwards",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        default=os.cpu_count(),
        help="threads on each side: ONNX Runtime intra-op threads and torch.set_num_threads "
        f"(default os.cpu_count(), here {os.cpu_count()})",
    )
    p.add_argument(
        "--image", type=Path, default=suite.DEFAULT_IMAGE, help=f"the photograph (default {suite.DEFAULT_IMAGE})"
    )
    p.add_argument("--size", type=positive_int, help="longer side of the picture for dreams and serving (default 512)")
    p.add_argument("--seed", type=int, default=0, help="the dream's seed, the same on both sides (default 0)")
    p.add_argument(
        "--bvlc-weights",
        type=Path,
        default=suite.BVLC_WEIGHTS,
        help=f"BVLC GoogLeNet weights; googlenet-bvlc is skipped when absent (default {suite.BVLC_WEIGHTS})",
    )
    p.add_argument(
        "--growth-sizes",
        type=_sizes,
        help="picture sides for the cost growth, comma separated (default "
        + ",".join(map(str, FULL_GROWTH_SIZES))
        + ")",
    )
    p.add_argument("--growth-steps", type=positive_int, help="timed steps per side after one warm-up step (default 5)")
    p.add_argument("--growth-steps-largest", type=positive_int, help="timed steps at the largest side (default 3)")
    p.add_argument(
        "--parts",
        type=_parts,
        default=suite.PARTS,
        help="which parts to run, comma separated: dreams,growth,serving (default all)",
    )
    return p


def config_from(args: argparse.Namespace) -> tuple[suite.Config, Path]:
    preset = QUICK if args.quick else FULL

    def pick(name: str):
        value = getattr(args, name)
        return preset[name] if value is None else value

    config = suite.Config(
        image=args.image.resolve(),
        size=pick("size"),
        octaves=preset["octaves"],
        steps=preset["steps"],
        repeats=pick("repeats"),
        threads=args.threads,
        growth_sizes=pick("growth_sizes"),
        growth_steps=pick("growth_steps"),
        growth_steps_largest=pick("growth_steps_largest"),
        serving_repeats=pick("repeats") if args.repeats is not None else preset["serving_repeats"],
        parts=args.parts,
        backbones=(suite.LITE0,) if args.quick else (suite.GOOGLENET, suite.LITE0),
        bvlc_weights=args.bvlc_weights.resolve(),
        seed=args.seed,
    )
    return config, pick("out")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parser().parse_args(argv)
    if not args.image.is_file():
        parser().error(f"--image {args.image} does not exist")
    if "growth" in args.parts:
        try:
            import matplotlib  # noqa: F401  (checked now, used at the end)
        except ImportError:
            parser().error("the cost growth plot needs matplotlib: pip install -e '.[bench]'")
    config, out = config_from(args)
    command = "python -m benchmarks" + ("" if not argv else " " + shlex.join(argv))
    started = time.perf_counter()

    def say(line: str) -> None:
        print(f"[{time.perf_counter() - started:6.0f} s] {line}", flush=True)

    if args.quick:
        say(f"quick run: {suite.GOOGLENET} left out, numbers only prove the suite runs")
    results = suite.run_suite(config, args.models.resolve() if args.models else None, command, say)
    written = report.write_outputs(results, out)
    print()
    print(report.render_report(results))
    print()
    say("wrote " + ", ".join(str(path) for path in written))
    return 0


if __name__ == "__main__":
    sys.exit(main())
