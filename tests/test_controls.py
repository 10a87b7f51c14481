"""The dream controls: their parts alone, their refusals, and each through a real server.

The quality bar on the original DeepDream network is in test_controls_quality.py;
these run on the small default model (efficientnet-lite0) and tiny pictures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from dreamstream.cli import main
from dreamstream.client import AsyncDreamClient, DreamClient, Frame, InvalidRequest, Progress
from dreamstream.client.cli import parse_channels
from dreamstream.client.client import DREAM_OPTIONS, build_request
from dreamstream.cmdline import CommandError
from dreamstream.modeldir import MANIFEST_FILE
from dreamstream.server.engine import DreamSpec, Octave
from dreamstream.server.engine.colours import keep_original_colours, to_ycbcr
from dreamstream.server.engine.normalise import lap_normalise, tv_gradient
from dreamstream.server.engine.objectives import Guide, ranked_channels, ranking_picture
from dreamstream.server.engine.octaves import octave_sizes
from dreamstream.server.engine.request import ChannelMode
from dreamstream.server.engine.tiling import Tiling
from dreamstream.server.models import ModelRepository
from dreamstream.server.refusals import InvalidRequest as Refused
from dreamstream.v1 import dream_pb2

TINY = {"max_size": 64, "octaves": 2, "steps_per_octave": 2, "seed": 5}


def final_of(events: list) -> Frame:
    frames = [event for event in events if isinstance(event, Frame)]
    assert frames[-1].final
    return frames[-1]


def pixels(frame: Frame) -> np.ndarray:
    return np.asarray(frame.image().convert("RGB"), np.float32) / 255.0


# --- The parts alone ---


def test_lap_normalise_strengthens_fine_detail_against_coarse() -> None:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:64, 0:64] / 64.0
    coarse = np.broadcast_to(np.sin(2 * np.pi * ys) * np.cos(2 * np.pi * xs), (3, 64, 64))
    fine = rng.normal(size=(3, 64, 64))
    grad = (100.0 * coarse + fine).astype(np.float32)

    def share_of_fine(x: np.ndarray) -> float:  # cosine similarity with the fine component
        return float((x * fine).sum() / (np.linalg.norm(x) * np.linalg.norm(fine)))

    normalised = lap_normalise(grad, 4)
    assert normalised.shape == grad.shape
    assert share_of_fine(normalised) > 5 * share_of_fine(grad)


def test_tv_gradient_is_the_gradient_of_total_variation() -> None:
    rng = np.random.default_rng(1)
    image = rng.uniform(size=(3, 6, 7)).astype(np.float64)

    def total_variation(x: np.ndarray) -> float:
        return float(np.abs(np.diff(x, axis=1)).sum() + np.abs(np.diff(x, axis=2)).sum())

    direction = rng.normal(size=image.shape)
    eps = 1e-6
    numeric = (total_variation(image + eps * direction) - total_variation(image - eps * direction)) / (2 * eps)
    assert np.isclose((tv_gradient(image) * direction).sum(), numeric, rtol=1e-5)


def test_original_colours_take_the_dreams_luminance_and_the_originals_chroma() -> None:
    rng = np.random.default_rng(2)
    original = rng.uniform(0.3, 0.7, size=(8, 8, 3)).astype(np.float32)
    dream = np.clip(original + rng.uniform(-0.1, 0.1, size=original.shape), 0, 1).astype(np.float32)
    mixed = to_ycbcr(keep_original_colours(dream, original))
    np.testing.assert_allclose(mixed[..., 0], to_ycbcr(dream)[..., 0], atol=1e-5)
    np.testing.assert_allclose(mixed[..., 1:], to_ycbcr(original)[..., 1:], atol=1e-5)


def test_channel_modes_take_the_strongest_weakest_or_middle_channels() -> None:
    means = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert set(ranked_channels(means, ChannelMode.STRONGEST, 2)) == {0, 4}
    assert set(ranked_channels(means, ChannelMode.WEAKEST, 2)) == {1, 3}
    assert set(ranked_channels(means, ChannelMode.AVERAGE, 1)) == {2}
    assert len(ranked_channels(means, ChannelMode.STRONGEST, 99)) == 5


def test_a_guide_for_a_fixed_size_model_is_resized_to_that_size(coffee: Path) -> None:
    guide = Guide(coffee.read_bytes(), max_size=96, graph="g.onnx", fixed_size=64)
    assert guide.pixels().shape == (1, 3, 64, 64)
    assert Guide(coffee.read_bytes(), max_size=96, graph="g.onnx").pixels().shape == (1, 3, 64, 96)


def test_a_tiled_dream_ranks_its_channels_on_the_picture_scaled_into_one_tile() -> None:
    image = np.zeros((3, 300, 1200), np.float32)
    assert ranking_picture(image, None, 32).shape == (3, 300, 1200)
    assert ranking_picture(image, Tiling(size=600, overlap=32), 32).shape == (3, 150, 600)
    assert ranking_picture(image, Tiling(size=224, overlap=0, fixed=True), 32).shape == (3, 224, 224)
    assert ranking_picture(image, Tiling(size=64, overlap=8), 32).shape == (3, 32, 64)


def test_octaves_above_go_past_the_pictures_size() -> None:
    sizes = octave_sizes(100, 200, 3, 2.0, 10, above=2)
    assert sizes == ((25, 50), (50, 100), (100, 200), (200, 400), (400, 800))


# --- Planning: what is refused, with the field at fault ---


@pytest.mark.parametrize(
    ("spec", "field", "words"),
    [
        ({"channels": {"head": [0]}, "layers": {"block10": 1.0}}, "channels", "add it to layers"),
        ({"channels": {"block10": [100000]}}, "channels", "out of range"),
        ({"channel_count": 3}, "channel_count", "needs a channel_mode"),
        ({"rank_channels_per_octave": True}, "rank_channels_per_octave", "needs a channel_mode"),
        ({"return_largest": True}, "return_largest", "needs octaves_above"),
        ({"octaves_above": 4, "octave_scale": 4.0, "max_size": 1024}, "octaves_above", "lower octaves_above"),
        ({"lap_levels": 9}, "lap_levels", "out of range"),
        ({"tv_weight": -1.0}, "tv_weight", "out of range"),
        ({"repeat": 21}, "repeat", "out of range"),
        ({"guide": b"not a picture", "layers": {"block10": 1.0}}, "guide", "cannot decode"),
        ({"guide": b"x", "layers": {"block3": 1.0, "block10": 1.0}}, "layers", "in one group"),
    ],
)
def test_bad_controls_are_refused_naming_the_field(
    engine: Any, coffee: Path, spec: dict, field: str, words: str
) -> None:
    with pytest.raises(Refused) as refused:
        engine.plan(DreamSpec(image=coffee.read_bytes(), **spec))
    assert refused.value.field == field
    assert words in str(refused.value)


def test_channels_alone_name_the_layers_to_dream_on(engine: Any, coffee: Path) -> None:
    plan = engine.plan(DreamSpec(image=coffee.read_bytes(), channels={"block10": [3, 1]}))
    assert dict(plan.params.layers) == {"block10": 1.0}
    layer = plan.model.manifest.layer("block10")
    block = plan.channel_weights[layer.channel_offset : layer.channel_offset + layer.channels]
    assert np.flatnonzero(block).tolist() == [1, 3]
    assert plan.channel_weights.sum() == plan.model.manifest.channel_total - layer.channels + 2


def test_the_gradient_path_steps_as_the_fused_step_graph_does(engine: Any, coffee: Path) -> None:
    plan = engine.plan(DreamSpec(image=coffee.read_bytes(), **TINY))
    fused = [event for event in engine.run(plan) if isinstance(event, Octave)][-1].image
    on_host = dataclasses.replace(plan, gradient_graph=plan.model.graph_for(plan.params.layers))
    host = [event for event in engine.run(on_host) if isinstance(event, Octave)][-1].image
    assert np.abs(host - fused).max() < 1e-3


# --- Through the server, the clients and the CLI ---


def test_every_dream_option_is_a_field_of_the_request() -> None:
    fields = set(dream_pb2.DreamRequest.DESCRIPTOR.fields_by_name)
    assert set(DREAM_OPTIONS) - {"format"} <= fields


def test_the_controls_reach_the_request(coffee: Path) -> None:
    request = build_request(
        None,
        {
            "guide": coffee,
            "channels": {"block10": [1, 2]},
            "channel_mode": "weakest",
            "channel_count": 3,
            "rank_channels_per_octave": True,
            "original_colors": True,
            "lap_levels": 4,
            "tv_weight": 0.5,
            "octaves_above": 1,
            "return_largest": True,
            "repeat": 2,
        },
    )
    assert request.guide == coffee.read_bytes()
    assert list(request.channels["block10"].channels) == [1, 2]
    assert request.channel_mode == dream_pb2.CHANNEL_MODE_WEAKEST
    assert (request.channel_count, request.lap_levels, request.octaves_above, request.repeat) == (3, 4, 1, 2)
    assert request.rank_channels_per_octave and request.original_colors and request.return_largest
    assert request.tv_weight == pytest.approx(0.5)
    with pytest.raises(ValueError, match="use strongest, weakest, average"):
        build_request(None, {"channel_mode": "loudest"})


def test_repeat_dreams_the_result_again_round_by_round(client: DreamClient, coffee: Path) -> None:
    once = final_of(list(client.dream(coffee, **TINY)))
    events = list(client.dream(coffee, repeat=1, **TINY))
    frames = [event for event in events if isinstance(event, Frame)]
    assert [(frame.round, frame.octave, frame.final) for frame in frames] == [
        (1, 1, False), (1, 2, False), (2, 1, False), (2, 2, True),
    ]  # fmt: skip
    assert frames[1].data == once.data  # the first round is the plain dream
    assert [event.round for event in events if isinstance(event, Progress)] == [1] * 4 + [2] * 4
    assert np.abs(pixels(frames[-1]) - pixels(once)).mean() > 0.005


def test_octaves_above_return_at_the_pictures_size_or_the_largest(client: DreamClient, coffee: Path) -> None:
    plain = final_of(list(client.dream(coffee, **TINY)))
    above = final_of(list(client.dream(coffee, octaves_above=1, **TINY)))
    largest = final_of(list(client.dream(coffee, octaves_above=1, return_largest=True, **TINY)))
    assert above.octaves == 3 and (above.width, above.height) == (plain.width, plain.height)
    assert (largest.width, largest.height) == (round(plain.width * 1.4), round(plain.height * 1.4))
    assert np.abs(pixels(above) - pixels(plain)).mean() > 0.005


def test_channel_modes_choose_different_channels(server: Any, coffee: Path) -> None:
    async def final(**options: Any) -> np.ndarray:
        async with AsyncDreamClient(server.target) as client:
            events = [event async for event in client.dream(coffee, layers={"block10": 1.0}, **TINY, **options)]
        return pixels(final_of(events))

    async def dreams() -> list[np.ndarray]:
        return [
            await final(),
            await final(channel_mode="strongest", channel_count=4),
            await final(channel_mode="weakest", channel_count=4),
            await final(channel_mode="weakest", channel_count=4, rank_channels_per_octave=True),
        ]

    every, strongest, weakest, per_octave = asyncio.run(dreams())
    for chosen in (strongest, weakest, per_octave):
        assert np.abs(chosen - every).mean() > 0.002
    assert np.abs(strongest - weakest).mean() > 0.002
    assert np.abs(per_octave - weakest).mean() > 0.0005


def test_the_cli_passes_every_control(server: Any, coffee: Path, tmp_path: Path) -> None:
    octaves = tmp_path / "octaves"
    argv = ["dream", str(coffee), "-o", str(tmp_path / "out.png"), "--server", server.target, "-q"]
    argv += ["--max-size", "64", "--octaves", "2", "--steps", "1", "--save-octaves", str(octaves)]
    argv += ["--guide", str(coffee), "--layers", "block10:1", "--channels", "block10:1,2", "--channels", "block10:7"]
    argv += ["--original-colors", "--lap-levels", "2", "--tv-weight", "0.1", "--octaves-above", "1"]
    argv += ["--return-largest", "--repeat", "1"]
    assert main(argv) == 0
    with Image.open(tmp_path / "out.png") as result:
        assert result.size == (90, 60)
    assert sorted(path.name for path in octaves.iterdir()) == [
        f"round-{r}-octave-{o}.png" for r in (1, 2) for o in (1, 2, 3)
    ]


def test_channels_flags_parse_into_layers_and_channels() -> None:
    assert parse_channels(["inception_4c/output:12,99", "a:1", "a:2"]) == {"inception_4c/output": [12, 99], "a": [1, 2]}
    for bad in ("block3", "block3:", "block3:x"):
        with pytest.raises(CommandError, match="LAYER:C1,C2"):
            parse_channels([bad])


def test_models_say_which_take_a_guide(client: DreamClient, server: Any, capsys) -> None:
    assert all(model.supports_guide for model in client.models())
    assert main(["models", "--server", server.target]) == 0
    assert "guided dreams" in capsys.readouterr().out


def test_a_guide_on_a_model_exported_before_guides_is_refused_saying_to_re_export(
    start_server: Any, lite0_dir: Path, coffee: Path, tmp_path: Path
) -> None:
    older = tmp_path / "models" / "old-lite0"
    older.mkdir(parents=True)
    for path in lite0_dir.iterdir():
        if path.name != MANIFEST_FILE:
            os.link(path, older / path.name)
    manifest = json.loads((lite0_dir / MANIFEST_FILE).read_text())
    manifest["name"] = "old-lite0"
    for layer in manifest["layers"]:
        del layer["guide_graph"]
    (older / MANIFEST_FILE).write_text(json.dumps(manifest))
    server = start_server(ModelRepository(older.parent, device="cpu"))

    with DreamClient(server.target) as client:
        assert not client.models()[0].supports_guide
        with pytest.raises(InvalidRequest, match="exported without guide graphs: re-export it"):
            list(client.dream(coffee, guide=coffee, **TINY))
