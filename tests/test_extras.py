"""The install extras: each combination someone is told to install brings exactly one ONNX
Runtime. Two runtimes install the same `onnxruntime` files over each other, and whichever
landed last decides whether CUDA is there at all (`--device auto` then serves on the CPU).

pip resolves each combination for real (`pip install --dry-run --report`), against the
package index, without installing anything."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Distributions that each ship the `onnxruntime` import package.
RUNTIMES = {
    "onnxruntime",
    "onnxruntime-gpu",
    "onnxruntime-directml",
    "onnxruntime-openvino",
    "onnxruntime-qnn",
    "onnxruntime-rocm",
}


def resolved(extras: str, report: Path) -> set[str]:
    """The distributions pip would install for `.[extras]` into an empty environment."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet"]
        + ["--disable-pip-version-check", "--report", str(report), f"{REPO}[{extras}]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return {item["metadata"]["name"].lower().replace("_", "-") for item in json.loads(report.read_text())["install"]}


@pytest.mark.parametrize(
    ("extras", "runtime"),
    [("gpu,export", "onnxruntime-gpu"), ("server,export", "onnxruntime")],
)
def test_extras_install_exactly_one_onnx_runtime(extras: str, runtime: str, tmp_path: Path) -> None:
    assert resolved(extras, tmp_path / "report.json") & RUNTIMES == {runtime}
