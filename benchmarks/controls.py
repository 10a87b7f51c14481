"""python -m benchmarks.controls: what each dream control does to the picture, and what it costs.

googlenet-bvlc (the original DeepDream network, weights from ../shared) dreams
on inception_4c/output over a photograph, once plainly and once with each
control, at the same settings and seed, in one process on the server's engine
(CPU provider). Printed and written to OUT/controls.md:

- the quality bar of issue 10: the guided dream's channel means against the
  guide's (cosine similarity, against the plain dream's), the rise of chosen
  channels against the others', original colours' chroma and luminance PSNR
  against the photograph, and how far every other control moves the picture
  from the plain dream (mean absolute difference, 0-1);
- each dream's time, and its ratio to the plain dream's in the same run.

Needs the dev extra (pip install -e '.[dev]') and ../shared beside the checkout.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.provenance import stamp, write_results
from dreamstream.cmdline import positive_int
from dreamstream.export.api import export_model
from dreamstream.modeldir import CHANNEL_MEANS, CHANNEL_WEIGHTS, IMAGE, LAYER_WEIGHTS
from dreamstream.server import imaging
from dreamstream.server.engine import DreamEngine, DreamSpec, Octave
from dreamstream.server.engine.colours import to_ycbcr
from dreamstream.server.engine.request import ChannelMode
from dreamstream.server.models import Model, ModelRepository

SHARED = Path(__file__).resolve().parents[2] / "shared"
WEIGHTS = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"
LAYER = "inception_4c/output"
CHOSEN = (12, 99, 140, 301)


def channel_means_of(model: Model) -> Callable[[np.ndarray], np.ndarray]:
    """inception_4c/output's channel means of an HxWx3 picture, from the model's gradient graph."""
    manifest = model.manifest
    session = model.session(model.graph_for({LAYER: 1.0}))
    layer = manifest.layer(LAYER)
    layer_weights = np.zeros(len(manifest.layers), np.float32)
    layer_weights[manifest.layer_index(LAYER)] = 1.0

    def means(picture: np.ndarray) -> np.ndarray:
        feeds = {
            IMAGE: np.ascontiguousarray(picture.transpose(2, 0, 1)[None], np.float32),
            LAYER_WEIGHTS: layer_weights,
            CHANNEL_WEIGHTS: np.ones(manifest.channel_total, np.float32),
        }
        return session.run([CHANNEL_MEANS], feeds)[0][0, layer.channel_offset : layer.channel_offset + layer.channels]

    return means


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean(np.square(a - b))))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.controls", description=__doc__.splitlines()[0])
    parser.add_argument("--photo", type=Path, default=SHARED / "images" / "coffee.png", help="picture to dream on")
    parser.add_argument("--guide", type=Path, default=SHARED / "images" / "brick.png", help="guide picture")
    parser.add_argument("--size", type=positive_int, default=256, help="longer side of the picture (default 256)")
    parser.add_argument("--octaves", type=positive_int, default=2, help="octaves (default 2)")
    parser.add_argument("--steps", type=positive_int, default=6, help="steps per octave (default 6)")
    parser.add_argument("--seed", type=int, default=3, help="seed of every dream (default 3)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="folder of controls.md")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    provenance = stamp("python -m benchmarks.controls" + ("" if not argv else " " + shlex.join(argv)))
    for needed in (args.photo, args.guide, WEIGHTS):
        if not needed.exists():
            print(f"{needed} is absent: the shared data folder must sit beside the checkout", file=sys.stderr)
            return 1

    with tempfile.TemporaryDirectory() as models:
        export_model("googlenet-bvlc", Path(models), weights=WEIGHTS)
        repository = ModelRepository(Path(models), device="cpu")
        repository.load()
        engine = DreamEngine(repository)
        base = {
            "image": args.photo.read_bytes(),
            "model": "googlenet-bvlc",
            "layers": {LAYER: 1.0},
            "max_size": args.size,
            "octaves": args.octaves,
            "steps_per_octave": args.steps,
            "seed": args.seed,
        }

        def dream(**options: Any) -> tuple[np.ndarray, float]:
            began = time.perf_counter()
            plan = engine.plan(DreamSpec(**{**base, **options}))
            final = [event for event in engine.run(plan) if isinstance(event, Octave)][-1]
            return final.image, time.perf_counter() - began

        means = channel_means_of(repository.get("googlenet-bvlc"))
        photo = imaging.decode(args.photo.read_bytes(), args.size)
        guide = imaging.decode(args.guide.read_bytes(), args.size)
        dream()  # opens the sessions, so that no timing below pays for it
        plain, plain_time = dream()
        rows = [("plain", "", plain_time)]

        def measured(name: str, result: str, seconds: float) -> None:
            rows.append((name, result, seconds))
            print(f"{name:28} {result:60} {seconds:6.2f} s  x{seconds / plain_time:.2f}")

        guided, seconds = dream(guide=args.guide.read_bytes())
        target = means(guide)
        measured(
            "guide",
            f"cosine to the guide {cosine(means(guided), target):.3f} (plain {cosine(means(plain), target):.3f})",
            seconds,
        )
        chosen, seconds = dream(channels={LAYER: CHOSEN})
        rise = means(chosen) - means(photo)
        ratio = rise[list(CHOSEN)].mean() / np.delete(rise, CHOSEN).mean()
        measured("channels 12,99,140,301", f"chosen rise {ratio:.1f}x the others'", seconds)
        kept, seconds = dream(original_colors=True)
        kept_ycc, photo_ycc = to_ycbcr(kept), to_ycbcr(photo)
        measured(
            "original_colors",
            f"Cb/Cr PSNR {psnr(kept_ycc[..., 1:], photo_ycc[..., 1:]):.1f} dB, "
            f"Y PSNR {psnr(kept_ycc[..., 0], photo_ycc[..., 0]):.1f} dB "
            f"(plain Cb/Cr {psnr(to_ycbcr(plain)[..., 1:], photo_ycc[..., 1:]):.1f} dB)",
            seconds,
        )
        for name, options in (
            ("channel_mode strongest 8", {"channel_mode": ChannelMode.STRONGEST, "channel_count": 8}),
            ("lap_levels 4", {"lap_levels": 4}),
            ("tv_weight 0.5", {"tv_weight": 0.5}),
            ("octaves_above 1", {"octaves_above": 1}),
            ("repeat 1", {"repeat": 1}),
        ):
            result, seconds = dream(**options)
            measured(name, f"mean abs. difference from plain {np.abs(result - plain).mean():.3f}", seconds)

    args.out.mkdir(parents=True, exist_ok=True)
    table = [
        f"# Dream controls: googlenet-bvlc at {LAYER}, {args.photo.name} at {args.size} px, "
        f"{args.octaves} octaves x {args.steps} steps, seed {args.seed}",
        "",
        "Made by `python -m benchmarks.controls` on this machine's CPU.",
        "",
        "| control | result | time | x plain |",
        "| --- | --- | --- | --- |",
        *(f"| {name} | {result} | {seconds:.2f} s | {seconds / plain_time:.2f} |" for name, result, seconds in rows),
    ]
    (args.out / "controls.md").write_text("\n".join(table) + "\n")
    figures = {
        "dream": f"googlenet-bvlc at `{LAYER}`, {args.photo.name} at {args.size} px, {args.octaves} octaves x "
        f"{args.steps} steps, seed {args.seed}",
        "rows": [{"control": name, "result": result, "seconds": seconds} for name, result, seconds in rows],
    }
    print(f"wrote {args.out / 'controls.md'}, {write_results('controls', provenance, figures, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
