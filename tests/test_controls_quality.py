"""The dream controls' quality bar, on the original DeepDream network and a photograph.

googlenet-bvlc (real weights from ../shared) dreams on inception_4c/output at 256 px
through a real server, with the clients and the CLI; each control is measured
against the plain dream at the same seed.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import shared_image
from PIL import Image

from benchmarks.controls import channel_means_of
from dreamstream.cli import main
from dreamstream.client import AsyncDreamClient, DreamClient, Frame
from dreamstream.server.engine.colours import to_ycbcr
from dreamstream.server.models import ModelRepository

LAYER = "inception_4c/output"
CHOSEN = [12, 99, 140, 301]
# Few steps and two octaves: enough for every control to show, quick on two cores.
DREAM = {"model": "googlenet-bvlc", "layers": {LAYER: 1.0}, "max_size": 256, "octaves": 2, "steps_per_octave": 6}
SEED = 3
CLI_DREAM = ["--model", "googlenet-bvlc", "--layers", f"{LAYER}:1", "--max-size", "256", "--octaves", "2"]
CLI_DREAM += ["--steps", "6", "--seed", str(SEED), "-q"]


@pytest.fixture(scope="session")
def photo() -> Path:
    return shared_image("coffee.png")


def pixels(data: bytes | Path) -> np.ndarray:
    """HxWx3 float RGB in [0, 1]."""
    source = io.BytesIO(data) if isinstance(data, bytes) else data
    with Image.open(source) as picture:
        return np.asarray(picture.convert("RGB"), np.float32) / 255.0


def fit(path: Path, size: int = 256) -> np.ndarray:
    """The photograph as the server sees it with max_size `size`."""
    with Image.open(path) as picture:
        picture = picture.convert("RGB")
        scale = size / max(picture.size)
        picture = picture.resize((round(picture.width * scale), round(picture.height * scale)), Image.LANCZOS)
        return np.asarray(picture, np.float32) / 255.0


def dream(server: Any, image: Path, **options: Any) -> np.ndarray:
    """The final frame of a dream through DreamClient, as pixels."""
    with DreamClient(server.target) as client:
        frames = [
            event for event in client.dream(image, **{**DREAM, "seed": SEED, **options}) if isinstance(event, Frame)
        ]
    assert frames[-1].final
    return pixels(frames[-1].data)


@pytest.fixture(scope="session")
def plain(bvlc_server: Any, photo: Path) -> np.ndarray:
    """The dream without any control, at the seed every test uses."""
    return dream(bvlc_server, photo)


@pytest.fixture(scope="session")
def layer_means(bvlc_repository: ModelRepository) -> Callable[[np.ndarray], np.ndarray]:
    """Channel means of inception_4c/output for an HxWx3 picture, from the model's own gradient graph."""
    return channel_means_of(bvlc_repository.get("googlenet-bvlc"))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean(np.square(a - b))))


def test_a_guided_dream_moves_towards_the_guides_features(
    bvlc_server: Any, photo: Path, plain: np.ndarray, layer_means: Callable[[np.ndarray], np.ndarray]
) -> None:
    brick = shared_image("brick.png")
    guided = dream(bvlc_server, photo, guide=brick)
    target = layer_means(fit(brick))
    assert cosine(layer_means(guided), target) > cosine(layer_means(plain), target) + 0.05


def test_chosen_channels_rise_far_more_than_the_others(
    bvlc_server: Any, photo: Path, tmp_path: Path, layer_means: Callable[[np.ndarray], np.ndarray]
) -> None:
    out = tmp_path / "channels.png"
    channels = ",".join(map(str, CHOSEN))
    argv = ["dream", str(photo), "-o", str(out), "--server", bvlc_server.target, *CLI_DREAM]
    assert main([*argv, "--channels", f"{LAYER}:{channels}"]) == 0
    rise = layer_means(pixels(out)) - layer_means(fit(photo))
    others = np.delete(rise, CHOSEN)
    assert rise[CHOSEN].mean() >= 1.5 * others.mean() > 0


def test_the_strongest_channel_mode_grows_the_pictures_strongest_channels(
    bvlc_server: Any, photo: Path, layer_means: Callable[[np.ndarray], np.ndarray]
) -> None:
    start = layer_means(fit(photo))
    strongest = np.argsort(start)[-4:]
    result = dream(bvlc_server, photo, channel_mode="strongest", channel_count=4)
    rise = layer_means(result) - start
    assert rise[strongest].mean() >= 1.5 * np.delete(rise, strongest).mean()


def test_original_colors_keep_the_chroma_and_change_the_luminance(
    bvlc_server: Any, photo: Path, plain: np.ndarray
) -> None:
    async def kept() -> np.ndarray:
        async with AsyncDreamClient(bvlc_server.target) as client:
            events = [event async for event in client.dream(photo, original_colors=True, seed=SEED, **DREAM)]
        return pixels(events[-1].data)

    result = to_ycbcr(asyncio.run(kept()))
    start = to_ycbcr(fit(photo))
    assert psnr(result[..., 1:], start[..., 1:]) >= 35.0
    assert psnr(result[..., 0], start[..., 0]) < 30.0
    assert psnr(to_ycbcr(plain)[..., 1:], start[..., 1:]) < 35.0  # the plain dream does change the colours


@pytest.mark.parametrize("flags", [["--lap-levels", "4"], ["--tv-weight", "0.5"], ["--octaves-above", "1"]])
def test_each_gradient_and_octave_control_changes_the_picture(
    bvlc_server: Any, photo: Path, plain: np.ndarray, tmp_path: Path, flags: list[str]
) -> None:
    out = tmp_path / "dream.png"
    assert main(["dream", str(photo), "-o", str(out), "--server", bvlc_server.target, *CLI_DREAM, *flags]) == 0
    result = pixels(out)
    assert result.shape == plain.shape  # octaves above come back at the picture's size
    assert np.abs(result - plain).mean() > 0.01
