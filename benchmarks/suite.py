"""The benchmark suite: our engine against the PyTorch eager reference, measured side by side.

Every measurement runs in a fresh `benchmarks.worker` process, one side at a
time, the sides taking turns (ours first on even repeats, torch first on odd
ones), so both see the same machine and drift or a neighbour's load biases
neither. `run_suite` returns everything as plain data (what results.json
holds); `benchmarks.report` turns it into the report.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import serving
from benchmarks.provenance import machine, revision
from benchmarks.worker import SIDES, Spec
from dreamstream.export.weights import sha256_of
from dreamstream.modeldir import MANIFEST_FILE, read_manifest
from dreamstream.server.models import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
DEFAULT_IMAGE = SHARED / "images" / "astronaut.png"
BVLC_WEIGHTS = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"
GOOGLENET = "googlenet-bvlc"
LITE0 = "efficientnet-lite0"
# The cost growth layer: the original DeepDream's, or Lite0's when the BVLC weights are absent.
GROWTH_LAYERS = {GOOGLENET: {"inception_4c/output": 1.0}, LITE0: {"block10": 1.0}}
PARTS = ("dreams", "growth", "serving")
MIB = 1 << 20


@dataclass(frozen=True)
class Config:
    image: Path
    size: int  # longer side of the picture for the whole dreams and the serving figures
    octaves: int
    steps: int
    repeats: int
    threads: int
    growth_sizes: tuple[int, ...]
    growth_steps: int  # timed steps per size, after one warm-up step
    growth_steps_largest: int  # timed steps at the largest size
    serving_repeats: int
    parts: tuple[str, ...] = PARTS
    backbones: tuple[str, ...] = (GOOGLENET, LITE0)
    bvlc_weights: Path = BVLC_WEIGHTS
    seed: int = 0


@dataclass(frozen=True)
class Subject:
    """One exported model to measure, and the weights the torch side loads for it."""

    backbone: str
    model_dir: Path
    weights: Path
    default_layers: dict[str, float] = field(default_factory=dict)


Progress = Callable[[str], None]


# ------------------------------------------------------------------ models


def weights_for(backbone: str, bvlc_weights: Path) -> Path | None:
    """The weight file both sides use, or None when it is absent."""
    if backbone == GOOGLENET:
        return bvlc_weights if bvlc_weights.is_file() else None
    from dreamstream.export.backbones import RECIPES

    return RECIPES[backbone].default_weights()


def prepare_models(root: Path, config: Config, say: Progress, note: Progress) -> dict[str, Subject]:
    """The models to measure: exported into `root` unless an export is there already.

    `say` tells progress; `note` what the report must mention (a model left out).
    """
    from dreamstream.export.api import export_model

    subjects = {}
    for backbone in config.backbones:
        weights = weights_for(backbone, config.bvlc_weights)
        if weights is None:
            note(f"{backbone}: skipped, its weights {config.bvlc_weights} are absent")
            continue
        model_dir = root / backbone
        if not (model_dir / MANIFEST_FILE).is_file():
            say(f"{backbone}: exporting into {root}")
            export_model(backbone, root, weights=weights if backbone == GOOGLENET else None)
        manifest = read_manifest(model_dir)
        exported_from = manifest.source.get("weights_file_sha256")
        if exported_from != sha256_of(weights):
            raise SystemExit(
                f"{model_dir} was exported from other weights than {weights} (sha256 {exported_from}): "
                "the torch side would dream with different weights; re-export it or use another --models"
            )
        subjects[backbone] = Subject(backbone, model_dir, weights, dict(manifest.default_layers))
    return subjects


def single_model_root(model_dir: Path, scratch: Path) -> Path:
    """A models directory holding only `model_dir` (a link to it), for a repository of that model alone."""
    root = Path(tempfile.mkdtemp(prefix="models-", dir=scratch))
    (root / model_dir.name).symlink_to(model_dir.resolve(), target_is_directory=True)
    return root


# --------------------------------------------------------------- measuring


def run_worker(spec: Spec, scratch: Path) -> dict[str, Any]:
    """Run one measurement in a fresh process; its `Result` as a dict."""
    handle, spec_path = tempfile.mkstemp(suffix=".json", dir=scratch)
    os.close(handle)
    spec_file = Path(spec_path)
    result_file = spec_file.with_suffix(".result.json")
    spec_file.write_text(json.dumps(asdict(spec)))
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.worker", str(spec_file), str(result_file)],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {spec.side} worker failed on {spec.model_dir}:\n{done.stderr[-4000:]}")
    return json.loads(result_file.read_text())


def side_order(repeat: int) -> tuple[str, ...]:
    """Ours first on even repeats, torch first on odd ones."""
    return SIDES if repeat % 2 == 0 else SIDES[::-1]


def whole_dreams(subject: Subject, config: Config, scratch: Path, say: Progress) -> dict[str, Any]:
    """`config.repeats` rounds of the whole dream, each side twice per process (cold, then warm)."""
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in SIDES}
    pictures: dict[str, list[Path]] = {side: [] for side in SIDES}
    for repeat in range(config.repeats):
        for side in side_order(repeat):
            save = scratch / f"{subject.backbone}-{side}-{repeat}"
            save.mkdir()
            spec = _dream_spec(subject, config, side, dreams=2, save=save)
            result = run_worker(spec, scratch)
            runs[side].append(result)
            pictures[side].append(save)
            cold, warm = (dream["seconds"] for dream in result["dreams"])
            say(
                f"{subject.backbone} {side:5} repeat {repeat + 1}/{config.repeats}: {warm:6.2f} s "
                f"(cold {cold:.2f} s), peak {result['peak_rss'] / MIB:.0f} MiB"
            )
    # How far float32 rounding alone moves a whole dream: torch's float32 dream against its float64 one.
    yardstick = scratch / f"{subject.backbone}-torch-float64"
    yardstick.mkdir()
    run_worker(_dream_spec(subject, config, "torch", dreams=1, save=yardstick, dtype="float64"), scratch)
    say(f"{subject.backbone} torch in float64 (the precision yardstick): done")

    octaves = config.octaves
    return {
        "backbone": subject.backbone,
        "layers": subject.default_layers,
        "octave_sizes": _octave_sizes(runs["ours"][0]),
        "runs": runs,
        "order": [list(side_order(repeat)) for repeat in range(config.repeats)],
        "summary": summarise_dreams(runs),
        "agreement": {
            "ours_vs_torch": _psnrs(pictures["ours"][0], pictures["torch"][0], octaves),
            "torch_float32_vs_float64": _psnrs(pictures["torch"][0], yardstick, octaves),
            "ours_reproducible": _all_equal(pictures["ours"], octaves),
            "torch_reproducible": _all_equal(pictures["torch"], octaves),
        },
    }


def _dream_spec(subject: Subject, config: Config, side: str, dreams: int, save: Path, dtype: str = "float32") -> Spec:
    return Spec(
        side=side,
        model_dir=str(subject.model_dir),
        image=str(config.image),
        size=config.size,
        octaves=config.octaves,
        steps=config.steps,
        threads=config.threads,
        seed=config.seed,
        weights=str(subject.weights),
        torch_dtype=dtype,
        dreams=dreams,
        save_octaves=str(save),
    )


def _octave_sizes(result: dict[str, Any]) -> list[list[int]]:
    """[height, width] of each octave, smallest first, as the worker recorded them."""
    sizes = {step["octave"]: [step["height"], step["width"]] for step in result["dreams"][0]["steps"]}
    return [sizes[octave] for octave in sorted(sizes)]


def summarise_dreams(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Medians and spreads over the repeats; step times from the warm dreams; ratios ours / torch."""
    sides: dict[str, Any] = {}
    for side, results in runs.items():
        warm = [result["dreams"][-1] for result in results]
        per_octave: dict[int, list[float]] = {}
        for dream in warm:
            for step in dream["steps"]:
                per_octave.setdefault(step["octave"], []).append(step["seconds"])
        sides[side] = {
            "dream_seconds": spread([dream["seconds"] for dream in warm]),
            "cold_dream_seconds": spread([result["dreams"][0]["seconds"] for result in results]),
            "step_seconds": [statistics.median(times) for _, times in sorted(per_octave.items())],
            "peak_rss": statistics.median(result["peak_rss"] for result in results),
            "loaded_rss": statistics.median(result["loaded_rss"] for result in results),
            "threads": sorted({result["threads"] for result in results}),
        }
    ours, torch = sides["ours"], sides["torch"]
    paired = [
        o["dreams"][-1]["seconds"] / t["dreams"][-1]["seconds"]
        for o, t in zip(runs["ours"], runs["torch"], strict=True)
    ]
    return {
        **sides,
        "ratio": {
            "dream_seconds": ours["dream_seconds"]["median"] / torch["dream_seconds"]["median"],
            "dream_seconds_per_repeat": spread(paired),
            "cold_dream_seconds": ours["cold_dream_seconds"]["median"] / torch["cold_dream_seconds"]["median"],
            "step_seconds": [o / t for o, t in zip(ours["step_seconds"], torch["step_seconds"], strict=True)],
            "peak_rss": ours["peak_rss"] / torch["peak_rss"],
            "dream_rss": _dream_rss(ours) / _dream_rss(torch),
        },
    }


def _dream_rss(side: dict[str, Any]) -> float:
    """What the dream itself added to the peak, over the libraries and the loaded model."""
    return max(side["peak_rss"] - side["loaded_rss"], 1)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def psnr(a: np.ndarray, b: np.ndarray) -> float | None:
    """Peak signal to noise ratio in dB of two pictures in [0, 1]; None when they are identical."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return None if mse == 0 else 10 * np.log10(1 / mse)


def _psnrs(a: Path, b: Path, octaves: int) -> list[float | None]:
    """PSNR of each octave's picture (the last is the final picture)."""
    name = "octave-{}.npy".format
    return [psnr(np.load(a / name(k)), np.load(b / name(k))) for k in range(1, octaves + 1)]


def _all_equal(folders: list[Path], octaves: int) -> bool:
    final = f"octave-{octaves}.npy"
    first = np.load(folders[0] / final)
    return all(np.array_equal(first, np.load(folder / final)) for folder in folders[1:])


def cost_growth(backbone: str, subject: Subject, config: Config, scratch: Path, say: Progress) -> dict[str, Any]:
    """Step time and peak memory per square picture side, one process per side and size."""
    layers = GROWTH_LAYERS[backbone]
    rows = []
    largest = max(config.growth_sizes)
    for index, size in enumerate(config.growth_sizes):
        timed = config.growth_steps_largest if size == largest else config.growth_steps
        row: dict[str, Any] = {"size": size, "timed_steps": timed}
        for side in side_order(index):
            spec = Spec(
                side=side,
                model_dir=str(subject.model_dir),
                image=str(config.image),
                size=size,
                octaves=1,
                steps=1 + timed,  # the first step is the warm-up, left out of the median
                threads=config.threads,
                seed=config.seed,
                square=True,
                layers=layers,
                weights=str(subject.weights),
            )
            result = run_worker(spec, scratch)
            steps = [step["seconds"] for step in result["dreams"][0]["steps"][1:]]
            row[side] = {
                "step_seconds": spread(steps),
                "warmup_seconds": result["dreams"][0]["steps"][0]["seconds"],
                "peak_rss": result["peak_rss"],
                "loaded_rss": result["loaded_rss"],
            }
            say(
                f"cost growth {backbone} {size:5} px {side:5}: {statistics.median(steps) * 1000:8.0f} ms a step, "
                f"peak {result['peak_rss'] / MIB:.0f} MiB"
            )
        row["ratio"] = {
            "step_seconds": row["ours"]["step_seconds"]["median"] / row["torch"]["step_seconds"]["median"],
            "peak_rss": row["ours"]["peak_rss"] / row["torch"]["peak_rss"],
        }
        rows.append(row)
    return {"backbone": backbone, "layers": layers, "warmup_steps": 1, "rows": rows}


def serving_figures(subject: Subject, config: Config, scratch: Path, say: Progress) -> dict[str, Any]:
    """Time to the first frame and streaming overhead, from `benchmarks.serving`, for the default model."""
    say(f"serving: {subject.backbone} in-process and through `dreamstream serve`, {config.serving_repeats} each")
    root = single_model_root(subject.model_dir, scratch)
    figures = serving.measure(root, "cpu", config.image.read_bytes(), config.size, config.serving_repeats)
    return {"model": subject.backbone, "image": config.image.name, "size": config.size, **asdict(figures)}


# ------------------------------------------------------------------- suite


def run_suite(config: Config, models: Path | None, command: str, say: Progress) -> dict[str, Any]:
    """Measure every part of `config.parts`; the results as plain data."""
    results: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "revision": revision(),
        "machine": machine(),
        "config": {key: str(value) if isinstance(value, Path) else value for key, value in asdict(config).items()},
        "notes": [],
    }

    def note(line: str) -> None:
        results["notes"].append(line)
        say(line)

    with tempfile.TemporaryDirectory(prefix="dreamstream-bench-") as scratch_name:
        scratch = Path(scratch_name)
        root = models if models is not None else scratch / "models"
        subjects = prepare_models(root, config, say, note)
        if not subjects:
            raise SystemExit("nothing to measure: no model could be prepared")
        if "dreams" in config.parts:
            results["dreams"] = [
                whole_dreams(subjects[backbone], config, scratch, say)
                for backbone in config.backbones
                if backbone in subjects
            ]
        if "growth" in config.parts:
            backbone = GOOGLENET if GOOGLENET in subjects else LITE0
            if backbone != GOOGLENET:
                note(f"cost growth on {LITE0} at block10: {GOOGLENET} is not measured")
            results["growth"] = cost_growth(backbone, subjects[backbone], config, scratch, say)
        if "serving" in config.parts:
            if DEFAULT_MODEL in subjects:
                results["serving"] = serving_figures(subjects[DEFAULT_MODEL], config, scratch, say)
            else:
                note(f"serving figures skipped: the default model {DEFAULT_MODEL} is not measured")
    return results
