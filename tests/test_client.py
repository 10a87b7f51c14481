"""The client library: what a picture may be, and how requests carry the options."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dreamstream.client import DreamClient, Frame
from dreamstream.client.client import build_request
from dreamstream.v1 import dream_pb2


def final_frame(client: DreamClient, image) -> Frame:
    frames = [e for e in client.dream(image, max_size=64, octaves=1, steps=2) if isinstance(e, Frame)]
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
    with pytest.raises(TypeError, match="unknown dream option.*octave\\b"):
        build_request(None, {"octave": 3})
    with pytest.raises(TypeError, match="cannot send a dict"):
        build_request({"not": "a picture"}, {})
    with pytest.raises(ValueError, match="unknown format 'gif'"):
        build_request(None, {"format": "gif"})
