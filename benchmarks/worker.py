"""One measurement, in a process of its own: one dream by one side, timed step by step.

    python -m benchmarks.worker SPEC.json RESULT.json

`python -m benchmarks` starts one of these per measurement, so that the peak
resident memory (`peak_rss` when the dream ends) is that side's alone and
neither side's caches, thread pools or allocator help or hinder the other.
"ours" is the server's `DreamEngine` on ONNX Runtime's CPU provider; "torch"
is `benchmarks.torch_reference`. This module imports torch only for the torch
side, and the torch side opens no ONNX Runtime session.

Model loading (and opening the step graph's session) is not timed; everything
from the start of the dream to its last octave is, including each octave's
resizing and the first step at each new size.
"""

from __future__ import annotations

import json
import re
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from dreamstream.modeldir import read_manifest
from dreamstream.server import imaging
from dreamstream.server.engine import DreamParams, DreamPlan, DreamSpec, Octave, Step
from dreamstream.server.engine.octaves import octave_sizes

SIDES = ("ours", "torch")

Dream = Callable[[np.ndarray, DreamParams], Iterator[Step | Octave]]


@dataclass(frozen=True)
class Spec:
    """What to measure. `size` is the picture's longer side, or its exact side when `square`."""

    side: str  # "ours" or "torch"
    model_dir: str  # an exported model (manifest.json and graphs)
    image: str
    size: int
    octaves: int
    steps: int
    threads: int
    seed: int = 0
    square: bool = False  # resize the picture to size x size (cost growth) instead of fitting it
    layers: dict[str, float] | None = None  # None: the model's default layers
    weights: str | None = None  # the weight file the model was exported from (torch side)
    torch_dtype: str = "float32"  # "float64" for the torch side's precision yardstick
    dreams: int = 1  # dreams in a row in this process, on the same picture with the same seed
    save_octaves: str | None = None  # a directory for each octave's picture (last dream), octave-<k>.npy


@dataclass
class StepTime:
    octave: int
    height: int
    width: int
    seconds: float  # since the previous step or octave ended, or since the dream began


@dataclass
class DreamTime:
    seconds: float  # the whole dream
    steps: list[StepTime]
    losses: list[float]  # the loss before each step


@dataclass
class Result:
    side: str
    dreams: list[DreamTime]  # in the order they ran: the first one is cold
    peak_rss: int  # bytes, at the end of the last dream
    loaded_rss: int  # bytes, peak before the first dream began (libraries, model, session)
    threads: int  # as the side's runtime reports it


def peak_rss() -> int:
    """This process's peak resident set size so far, in bytes.

    On Linux, the high-water mark of this process's own memory (VmHWM). Not
    `ru_maxrss`: a process started by fork (or vfork) and exec keeps its parent's
    ru_maxrss as a floor, so every worker would report at least the suite's own peak.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        status = ""
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    if match:
        return int(match.group(1)) * 1024
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def picture(spec: Spec) -> np.ndarray:
    """The HxWx3 float32 picture both sides dream on, decoded as the server decodes it."""
    data = Path(spec.image).read_bytes()
    if not spec.square:
        return imaging.decode(data, spec.size)
    decoded = imaging.decode(data, spec.size)
    # Cost growth needs exact sides, larger than the photograph too.
    pixels = Image.fromarray(np.round(decoded * 255).astype(np.uint8))
    return np.asarray(pixels.resize((spec.size, spec.size), Image.Resampling.LANCZOS), np.float32) / 255.0


def measure(spec: Spec) -> Result:
    """Load the side's model, then dream `spec.dreams` times on the same picture, timing every step."""
    if spec.side not in SIDES:
        raise ValueError(f"unknown side {spec.side!r}: choose one of {', '.join(SIDES)}")
    image = picture(spec)
    manifest = read_manifest(Path(spec.model_dir))
    params = DreamParams(
        layers=spec.layers or manifest.default_layers,
        octaves=spec.octaves,
        steps_per_octave=spec.steps,
        seed=spec.seed,
    )
    # Both sides dream on this schedule (the torch reference calls octave_sizes too).
    sizes = octave_sizes(*image.shape[:2], params.octaves, params.octave_scale, manifest.min_size)
    with tempfile.TemporaryDirectory(prefix="dreamstream-bench-") as scratch:
        if spec.side == "ours":
            dream, threads = _load_ours(spec, image, params, Path(scratch))
        else:
            dream, threads = _load_torch(spec)
        loaded = peak_rss()
        dreams = []
        for number in range(1, spec.dreams + 1):
            save = spec.save_octaves if number == spec.dreams else None
            dreams.append(_timed(dream(image, params), sizes, save))
    return Result(spec.side, dreams, peak_rss(), loaded, threads)


def _timed(events: Iterator[Step | Octave], sizes: tuple[tuple[int, int], ...], save: str | None) -> DreamTime:
    steps: list[StepTime] = []
    losses: list[float] = []
    previous = 0.0
    started = time.perf_counter()
    for event in events:
        if isinstance(event, Step):
            steps.append(StepTime(event.octave, *sizes[event.octave - 1], event.elapsed - previous))
            losses.append(event.loss)
        elif save is not None:
            np.save(Path(save) / f"octave-{event.octave}.npy", event.image)
        previous = event.elapsed
    return DreamTime(time.perf_counter() - started, steps, losses)


def _load_ours(spec: Spec, image: np.ndarray, params: DreamParams, scratch: Path) -> tuple[Dream, int]:
    from dreamstream.server.engine import DreamEngine
    from dreamstream.server.models import ModelRepository

    # A repository of this one model (ModelRepository.load opens every model it finds).
    model_dir = Path(spec.model_dir).resolve()
    (scratch / model_dir.name).symlink_to(model_dir, target_is_directory=True)
    repository = ModelRepository(scratch, "cpu", threads=spec.threads)
    repository.load()
    engine = DreamEngine(repository)
    name = repository.names()[0]

    def plan(image: np.ndarray, params: DreamParams) -> DreamPlan:
        return engine.plan(
            DreamSpec(
                pixels=image,
                model=name,
                layers=params.layers,
                octaves=params.octaves,
                steps_per_octave=params.steps_per_octave,
                seed=params.seed,
            )
        )

    first = plan(image, params)
    session = first.model.session(first.step_graph)  # opened here, not in the timed dream

    def dream(image: np.ndarray, params: DreamParams) -> Iterator[Step | Octave]:
        return engine.run(plan(image, params))

    return dream, session.get_session_options().intra_op_num_threads


def _load_torch(spec: Spec) -> tuple[Dream, int]:
    import torch

    from benchmarks.torch_reference import TorchDream
    from dreamstream.export.weights import read_weights

    if spec.weights is None:
        raise ValueError("the torch side needs the weight file the model was exported from")
    torch.set_num_threads(spec.threads)
    manifest = read_manifest(Path(spec.model_dir))
    layers = spec.layers or manifest.default_layers
    reference = TorchDream(
        manifest.backbone, read_weights(spec.weights), layers, manifest.min_size, getattr(torch, spec.torch_dtype)
    )
    return reference.run, torch.get_num_threads()


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    spec = Spec(**json.loads(Path(argv[0]).read_text()))
    result = measure(spec)
    Path(argv[1]).write_text(json.dumps(asdict(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
