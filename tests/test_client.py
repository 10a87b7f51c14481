"""The client library: what a picture may be, and how requests carry the options."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamstream.client import DreamClient, Frame, Progress
from dreamstream.client.client import build_request
from dreamstream.v1 import dream_pb2


def final_frame(client: DreamClient, image) -> Frame:
    frames = [e for e in client.dream(image, max_size=64, octaves=1, steps_per_octave=2) if isinstance(e, Frame)]
    return frames[-1]


def test_a_path_bytes_pillow_image_or_array_dream_the_same(client: DreamClient, coffee: Path) -> None:
    picture = Image.open(coffee).convert("RGB")
    array = np.asarray(picture)
    inputs = [
        coffee, str(coffee), coffee.read_bytes(), picture, array, array.astype(np.float32) / 255.0,
    ]  # fmt: skip
    results = [final_frame(client, image).image() for image in inputs]
    reference = np.asarray(results[0], np.float32)
    for result in results[1:]:
        assert np.abs(np.asarray(result, np.float32) - reference).max() <= 1.0


def test_a_frame_decodes_to_pillow_on_demand_and_saves_its_bytes(
    client: DreamClient, coffee: Path, tmp_path: Path
) -> None:
    frame = final_frame(client, coffee)
    assert frame.image().size == (frame.width, frame.height)
    assert frame.save(tmp_path / f"out{frame.suffix}").read_bytes() == frame.data


def test_options_left_out_are_zero_so_the_server_picks_its_defaults() -> None:
    request = build_request(None, {"width": 64, "height": 48})
    assert (request.octaves, request.steps_per_octave, request.step_size) == (0, 0, 0.0)
    assert not request.HasField("jitter")
    assert request.format == dream_pb2.IMAGE_FORMAT_PNG


def test_an_explicit_zero_jitter_is_sent_to_turn_jitter_off() -> None:
    request = build_request(None, {"width": 64, "height": 48, "jitter": 0})
    assert request.HasField("jitter") and request.jitter == 0


def test_misspelt_options_and_unknown_types_fail_before_any_call() -> None:
    with pytest.raises(TypeError, match="unknown dream option.*octave\\b.*the options are model, layers"):
        build_request(None, {"octave": 3})
    with pytest.raises(TypeError, match="steps_per_octave"):
        build_request(None, {"steps": 3})  # the .proto's names, not the command line's
    with pytest.raises(TypeError, match="cannot send a dict"):
        build_request({"not": "a picture"}, {})
    with pytest.raises(ValueError, match="unknown image format 'gif'"):
        build_request(None, {"format": "gif"})


def test_the_short_import_works_without_the_server_or_export_dependencies() -> None:
    # What a new user types first; the light install has no onnx, onnxruntime or torch.
    code = (
        "import sys; sys.modules.update(onnxruntime=None, onnx=None, torch=None); "
        "from dreamstream import DreamClient, AsyncDreamClient, Frame, __version__; "
        "import importlib.metadata as m; assert __version__ == m.version('dreamstream'), __version__; "
        "print(DreamClient.__name__, AsyncDreamClient.__name__, __version__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:2] == ["DreamClient", "AsyncDreamClient"]


def test_a_real_server_takes_the_protos_option_names(server, coffee: Path) -> None:
    from dreamstream import DreamClient as ShortImport

    with ShortImport(server.target) as short:
        events = list(short.dream(coffee, max_size=64, octaves=2, steps_per_octave=2))
    steps = [event for event in events if isinstance(event, Progress)]
    assert [(step.octave, step.step, step.steps) for step in steps] == [(1, 1, 2), (1, 2, 2), (2, 1, 2), (2, 2, 2)]
