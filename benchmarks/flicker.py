"""python -m benchmarks.flicker: how much a dreamed video flickers, frames dreamed alone, blended, and
blended along the optical flow.

A clip is made from a photograph (a camera panning and slowly zooming over it),
and dreamed three ways by the server's engine, at the same settings and seed:
every frame alone (`--blend 0`), each frame's start blended half and half with
the previous dreamed frame (`--blend 0.5`), and blended after warping the
previous dream along the flow of the input frames (`--blend 0.5 --flow`).

Flicker is the mean absolute difference (0-255) between each output frame and
the previous output frame warped onto it by the dense optical flow of the
*input* frames, over the pixels that stay in view: what a viewer sees change
that the camera's motion does not explain. The input clip's own figure is the
floor (interpolation and new content at the border).

Writes OUT/flicker.md (the table) and OUT/flicker.jpg (a few consecutive frames
of each, side by side). Needs the bench extra (or dev): pip install -e '.[dev]'.
"""

from __future__ import annotations

import argparse
import io
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.clips import camera_frames
from benchmarks.provenance import stamp, write_results
from benchmarks.serving import models_dir
from dreamstream.server.engine import DreamEngine, DreamSpec
from dreamstream.server.engine.motion import dense_flow, inside, warp
from dreamstream.server.engine.video import VideoDreamer, VideoSpec, plan_video
from dreamstream.server.models import DEFAULT_MODEL, ModelRepository

REPO = Path(__file__).resolve().parents[1]
DEFAULT_IMAGE = REPO.parent / "shared" / "images" / "astronaut.png"
STRIP_FRAMES = 4  # consecutive frames shown side by side
STRIP_WIDTH = 128  # px of each frame in the strip


@dataclass(frozen=True)
class Way:
    """One way of dreaming the clip."""

    name: str
    flags: str  # as `dreamstream video` spells it
    blend: float
    flow: bool


WAYS = (
    Way("every frame alone", "--blend 0", 0.0, False),
    Way("blended", "--blend 0.5", 0.5, False),
    Way("blended along the flow", "--blend 0.5 --flow", 0.5, True),
)


def as_array(picture: Image.Image) -> np.ndarray:
    return np.asarray(picture.convert("RGB"), np.float32) / 255.0


def flicker(inputs: Sequence[np.ndarray], outputs: Sequence[np.ndarray]) -> float:
    """Mean |output_t - output_(t-1) warped by the flow of input_(t-1) -> input_t| over the pixels
    that stay in view, in 0-255 levels, averaged over consecutive pairs.

    Inputs and outputs are HxWx3 float RGB in [0, 1]; inputs are resized to the outputs' size.
    """
    if len(inputs) != len(outputs) or len(outputs) < 2:
        raise ValueError("flicker needs as many inputs as outputs, at least two of each")
    height, width = outputs[0].shape[:2]
    resized = [_resized(frame, width, height) for frame in inputs]
    differences = []
    for previous, current, before, after in zip(resized, resized[1:], outputs, outputs[1:], strict=False):
        flow = dense_flow(previous, current)
        seen = inside(flow)
        differences.append(float(np.abs(after - warp(before, flow))[seen].mean()) * 255.0)
    return float(np.mean(differences))


def _resized(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if frame.shape[:2] == (height, width):
        return frame
    picture = Image.fromarray(np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8))
    return as_array(picture.resize((width, height), Image.Resampling.LANCZOS))


def encoded(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def dream_clip(engine: DreamEngine, frames: Sequence[bytes], way: Way, dream: DreamSpec) -> list[np.ndarray]:
    """The clip's frames dreamed by the engine one way."""
    plan = plan_video(VideoSpec(dream=dream, blend=way.blend, flow=way.flow), engine)
    return [frame.image for frame in VideoDreamer(engine, plan).dream_frames(frames)]


def strip(rows: Sequence[tuple[str, Sequence[np.ndarray]]], path: Path) -> None:
    """A few consecutive frames of each row side by side, small, one row per way (labels in flicker.md)."""
    height, width = rows[0][1][0].shape[:2]
    cell = (STRIP_WIDTH, round(STRIP_WIDTH * height / width))
    sheet = Image.new("RGB", (cell[0] * STRIP_FRAMES, cell[1] * len(rows)), "white")
    for row, (_, frames) in enumerate(rows):
        middle = len(frames) // 2
        for column, frame in enumerate(frames[middle : middle + STRIP_FRAMES]):
            picture = Image.fromarray(np.clip(frame * 255.0 + 0.5, 0, 255).astype(np.uint8)).resize(cell)
            sheet.paste(picture, (column * cell[0], row * cell[1]))
    sheet.save(path, quality=80)


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="photograph the camera moves over")
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--size", type=int, default=256, help="width of the clip (default 256)")
    parser.add_argument("--octaves", type=int, help="default: the server's (4)")
    parser.add_argument("--steps", type=int, help="steps per octave; default: the server's (10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", type=Path, help="a models directory holding the default model")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    provenance = stamp("python -m benchmarks.flicker" + ("" if not argv else " " + shlex.join(argv)))

    size = (args.size, round(args.size * 3 / 4))
    pictures = camera_frames(args.image, args.frames, size)
    frames = [encoded(picture) for picture in pictures]
    inputs = [as_array(picture) for picture in pictures]
    dream = DreamSpec(octaves=args.octaves, steps_per_octave=args.steps, seed=args.seed)
    with models_dir(args.models) as root:
        models = ModelRepository(root, device="cpu")
        models.load()
        engine = DreamEngine(models)
        results = [("the input clip", inputs, flicker(inputs, inputs), 0.0)]
        for way in WAYS:
            began = time.perf_counter()
            outputs = dream_clip(engine, frames, way, dream)
            results.append(
                (f"{way.name} (`{way.flags}`)", outputs, flicker(inputs, outputs), time.perf_counter() - began)
            )
            print(f"{way.name}: flicker {results[-1][2]:.2f}", flush=True)

    alone = results[1][2]
    settings = f"{args.octaves or 4} octaves x {args.steps or 10} steps, seed {args.seed}"
    lines = [
        f"# Flicker of a dreamed video (commit {commit()})",
        "",
        f"{DEFAULT_MODEL} at its default layers, {settings}; a {args.frames}-frame clip of a camera panning "
        f"and zooming over {args.image.name} at {size[0]}x{size[1]}, CPU. Flicker: mean |frame - previous "
        "frame warped by the input's optical flow| in 0-255 levels, over the pixels that stay in view.",
        "",
        "| frames | flicker | / alone | dreaming time |",
        "| --- | ---: | ---: | ---: |",
    ]
    for name, _, figure, seconds in results:
        lines.append(f"| {name} | {figure:.2f} | {figure / alone:.2f} | {seconds:.1f} s |")
    lines += [
        "",
        f"![frames {STRIP_FRAMES} in a row, one row per line of the table](flicker.jpg)",
        "",
        "Rerun: `python -m benchmarks.flicker " + " ".join(argv) + "`",
    ]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "flicker.md").write_text("\n".join(lines) + "\n")
    strip([(name, outputs) for name, outputs, _, _ in results], args.out / "flicker.jpg")
    figures = {
        "clip": f"{args.frames} frames of {args.image.name} at {size[0]}x{size[1]}, {settings}",
        "rows": [{"frames": name, "flicker": figure, "seconds": seconds} for name, _, figure, seconds in results],
    }
    write_results("flicker", provenance, figures, args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
