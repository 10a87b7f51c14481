"""The API from outside Python: a Node.js client (@grpc/grpc-js, the .proto loaded as it is,
examples/node/dreamstream.mjs) calls a real server on loopback. scripts/test installs the npm
packages (package-lock.json)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import wait_until_still
from PIL import Image

from dreamstream.client import DreamClient

REPO = Path(__file__).resolve().parents[1]
SCENARIOS = REPO / "tests" / "node" / "scenarios.mjs"
EXAMPLE = REPO / "examples" / "node" / "dream.mjs"
PICTURE = REPO / "samples" / "coffee.jpg"


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None or not (REPO / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("Node.js or the npm packages are absent: scripts/test installs them (npm ci)")
    return node


def run_node(node: str, script: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([node, str(script), *args], capture_output=True, text=True, timeout=120)


def run_scenario(node: str, *args: str) -> Any:
    """What tests/node/scenarios.mjs prints for one scenario, parsed."""
    done = run_node(node, SCENARIOS, *args)
    assert done.returncode == 0, f"node {' '.join(args)} failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_node_receives_started_then_each_octaves_steps_then_its_frame(node: str, server, tmp_path: Path) -> None:
    final = tmp_path / "final.png"

    events = run_scenario(node, "dream", server.target, "node-dream-1", str(PICTURE), str(final))["events"]

    assert [event["event"] for event in events] == ["started"] + ["progress", "progress", "frame"] * 3
    started = events[0]
    assert started["request_id"] == "node-dream-1"
    assert started["seed"] == "5" and started["steps_per_octave"] == 2  # int64 travels as a string in JS
    assert started["layers"] and started["model"]
    assert [(e["octave"], e["step"]) for e in events if e["event"] == "progress"] == [
        (octave, step) for octave in (1, 2, 3) for step in (1, 2)
    ]
    frames = [event for event in events if event["event"] == "frame"]
    assert [frame["octave"] for frame in frames] == [1, 2, 3]
    assert [frame["final"] for frame in frames] == [False, False, True]
    assert all(frame["format"] == "IMAGE_FORMAT_PNG" for frame in frames)
    assert started["octave_sizes"] == [{"width": f["width"], "height": f["height"]} for f in frames]
    assert max(frames[-1]["width"], frames[-1]["height"]) == 64  # the request's max_size
    with Image.open(final) as picture:  # the bytes Node received are the picture the frame describes
        assert picture.format == "PNG"
        assert picture.size == (frames[-1]["width"], frames[-1]["height"])


def test_node_reads_the_reason_field_and_request_id_of_a_refusal(node: str, server) -> None:
    request = {"width": 64, "height": 64, "layers": {"no-such-layer": 1}}

    refusal = run_scenario(node, "refuse", server.target, "node-refused-1", json.dumps(request))

    assert refusal["code"] == "INVALID_ARGUMENT"
    assert "no-such-layer" in refusal["message"]
    details = refusal["details"]
    assert details["google.rpc.ErrorInfo"]["reason"] == "UNKNOWN_LAYER"
    assert details["google.rpc.ErrorInfo"]["domain"] == "dreamstream.v1"
    [violation] = details["google.rpc.BadRequest"]["field_violations"]
    assert violation["field"] == "layers" and violation["description"] == refusal["message"]
    assert details["google.rpc.RequestInfo"]["request_id"] == "node-refused-1"
    assert refusal["retry_delay_seconds"] is None


def test_node_reads_the_retry_delay_of_a_full_server(node: str, start_server, repository) -> None:
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    request = {"width": 64, "height": 64, "octaves": 1, "steps_per_octave": 1}
    with DreamClient(tight.target) as python_client:
        running = python_client.dream(PICTURE, max_size=64, octaves=1, steps_per_octave=1000)
        next(running)  # holds the one slot
        refusal = run_scenario(node, "refuse", tight.target, "node-busy-1", json.dumps(request))
        running.close()
        wait_until_still(lambda: tight.server.engine.steps_run)

    assert refusal["code"] == "RESOURCE_EXHAUSTED"
    assert refusal["details"]["google.rpc.ErrorInfo"]["reason"] == "QUEUE_FULL"
    assert refusal["retry_delay_seconds"] > 0


def test_a_cancel_from_node_stops_the_ascent(node: str, server) -> None:
    engine = server.server.engine
    before = engine.steps_run

    cancelled = run_scenario(node, "cancel", server.target, "node-cancel-1", str(PICTURE))

    assert cancelled["code"] == "CANCELLED"
    stopped_at = wait_until_still(lambda: engine.steps_run)
    assert cancelled["steps_seen"] >= 3
    assert stopped_at - before < 100  # of the 1000 steps asked for


def test_the_readme_node_example_writes_one_png_per_octave(node: str, server, tmp_path: Path) -> None:
    small = tmp_path / "small.png"
    with Image.open(PICTURE) as picture:
        picture.resize((80, 60)).save(small)

    done = run_node(node, EXAMPLE, server.target, str(small), str(tmp_path / "out"))

    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("dream ")
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == [f"octave-{n}.png" for n in (1, 2, 3)]


def test_the_readme_node_example_prints_a_refusal_with_its_reason(node: str, server, tmp_path: Path) -> None:
    garbage = tmp_path / "not-a-picture.png"
    garbage.write_bytes(b"not a picture")

    done = run_node(node, EXAMPLE, server.target, str(garbage), str(tmp_path / "out"))

    assert done.returncode == 1
    assert done.stderr.startswith("INVALID_ARGUMENT (BAD_IMAGE): cannot decode the image")
