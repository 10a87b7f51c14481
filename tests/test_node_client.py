"""The API from outside Python: a Node.js client (@grpc/grpc-js, the .proto loaded as it is)
calls a real server on loopback. scripts/test installs the npm packages (package-lock.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until_still
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "tests" / "node" / "scenarios.mjs"
PICTURE = REPO / "samples" / "coffee.jpg"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("Node.js or the npm packages are absent: scripts/test installs them (npm ci)")
    return node


def run_scenario(node: str, *args: str) -> Any:
    """What tests/node/scenarios.mjs prints for one scenario, parsed."""
    done = subprocess.run([node, str(SCENARIOS), *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"node {' '.join(args)} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_node_receives_each_octaves_steps_then_its_frame(node: str, server, tmp_path: Path) -> None:
    final = tmp_path / "final.png"

    events = run_scenario(node, "dream", server.target, str(PICTURE), str(final))["events"]

    assert [event["event"] for event in events] == ["progress", "progress", "frame"] * 3
    assert [(e["octave"], e["step"]) for e in events if e["event"] == "progress"] == [
        (octave, step) for octave in (1, 2, 3) for step in (1, 2)
    ]
    frames = [event for event in events if event["event"] == "frame"]
    assert [frame["octave"] for frame in frames] == [1, 2, 3]
    assert [frame["final"] for frame in frames] == [False, False, True]
    assert all(frame["format"] == "IMAGE_FORMAT_PNG" for frame in frames)
    assert frames[0]["width"] <= frames[1]["width"] < frames[2]["width"]  # no octave below the model's min_size
    assert max(frames[-1]["width"], frames[-1]["height"]) == 64  # the request's max_size
    with Image.open(final) as picture:  # the bytes Node received are the picture the frame describes
        assert picture.format == "PNG"
        assert picture.size == (frames[-1]["width"], frames[-1]["height"])


def test_node_sees_a_refusal_with_its_status_and_message(node: str, server) -> None:
    refusal = run_scenario(node, "error", server.target)

    assert refusal["code"] == "INVALID_ARGUMENT"
    assert "no-such-layer" in refusal["message"]


def test_a_cancel_from_node_stops_the_ascent(node: str, server) -> None:
    engine = server.server.engine
    before = engine.steps_run

    cancelled = run_scenario(node, "cancel", server.target, str(PICTURE))

    assert cancelled["code"] == "CANCELLED"
    stopped_at = wait_until_still(lambda: engine.steps_run)
    assert cancelled["steps_seen"] >= 3
    assert stopped_at - before < 100  # of the 1000 steps asked for
