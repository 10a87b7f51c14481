"""Sizes that fit: the export finds the sides a network runs on by probing it, the manifest records
them, and the server dreams every octave at such a side (padded, cropped back), so no dream fails
mid-way on a size the export knew of; fixed-size models dream pictures smaller than their input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_image
from PIL import Image
from torch import nn

from dreamstream.export.api import OnnxOptions, export_model
from dreamstream.export.sizes import SizeProbeError, WorkingSizes, find_working_sizes
from dreamstream.modeldir import Manifest, Preprocessing, read_manifest
from dreamstream.server.engine.fitting import FittedSteps, SizeFit, fitted_stepper


def test_a_network_that_runs_at_every_side_from_its_smallest():
    assert find_working_sizes(lambda h, w: min(h, w) >= 37, None) == WorkingSizes(smallest=37)


def test_a_network_whose_branches_line_up_every_8_px_from_its_smallest():
    """Two residues of 8 run (as Caffe2's grid reductions give); the step keeps one of them."""

    def runs(height: int, width: int) -> bool:
        return all(side >= 16 and side % 8 in (0, 7) for side in (height, width))

    sizes = find_working_sizes(runs, None)
    assert (sizes.smallest, sizes.step, sizes.fixed) == (16, 8, 0)
    assert sizes.lifted_to(17) == 24 and sizes.lifted_to(600) == 600


def test_a_grid_through_the_declared_size_that_misses_the_large_probe():
    """AlexNet-like 227 + 32k: 512 does not run, the declared size does, and so do others."""

    def runs(height: int, width: int) -> bool:
        return all(side >= 67 and (side - 227) % 32 == 0 for side in (height, width))

    sizes = find_working_sizes(runs, 227)
    assert (sizes.smallest, sizes.step, sizes.fixed) == (67, 32, 0)


def test_a_network_with_frozen_shapes_is_fixed_at_its_declared_size():
    assert find_working_sizes(lambda h, w: h == w == 224, 224) == WorkingSizes(smallest=224, fixed=224)


def test_sizes_with_no_regular_step_are_refused_with_the_sides_that_ran():
    with pytest.raises(SizeProbeError, match="no regular step"):
        find_working_sizes(lambda h, w: min(h, w) >= 40 and h == w and h not in (41, 43, 47, 53, 59, 61), None)


def test_square_sides_that_run_but_not_as_a_rectangle_are_refused():
    with pytest.raises(SizeProbeError, match="not on"):
        find_working_sizes(lambda h, w: h == w and h >= 8, None)


def test_manifests_written_before_size_step_still_load():
    preprocessing = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), bgr=False, scale=1.0)
    written = Manifest(
        name="m", backbone="b", layers=(), default_layers={}, min_size=32, max_size=1024, weights_file="w",
        weights_sha256="0", preprocessing=preprocessing, opset=17,
    )  # fmt: skip
    older = json.loads(written.to_json())
    del older["size_step"]
    manifest = Manifest.from_json(json.dumps(older))
    assert manifest.size_step == 1 and SizeFit.of(manifest).side(45) == 45


def test_each_side_is_dreamed_at_the_nearest_side_that_runs():
    stepped = SizeFit(min_size=16, step=8)
    assert [stepped.side(side) for side in (3, 16, 17, 24, 170)] == [16, 16, 24, 24, 176]
    fixed = SizeFit(min_size=224, fixed=224)
    assert fixed.size((170, 256)) == (224, 256)  # the short side padded, the long one tiled
    assert fixed.smallest_picture() == 16 and fixed.octave_floor((170, 256)) == 170


class _Recorder:
    """A stepper that adds 1 to whatever it is given, recording the shape."""

    def start(self, image: np.ndarray) -> None:
        self.seen = image.copy()
        self.image = image + 1

    def step(self, shift: np.ndarray) -> float:
        return 0.0

    def result(self) -> np.ndarray:
        return self.image


def test_an_octave_is_padded_with_its_mirror_image_and_cropped_back():
    image = np.random.default_rng(0).uniform(0, 1, (3, 17, 30)).astype(np.float32)
    inner = _Recorder()
    stepper = fitted_stepper(inner, (17, 30), SizeFit(min_size=16, step=8))
    assert isinstance(stepper, FittedSteps)
    stepper.start(image)
    assert inner.seen.shape == (3, 24, 32)
    np.testing.assert_array_equal(inner.seen[:, 3:20, 1:31], image)
    np.testing.assert_array_equal(inner.seen[:, 2, 1:31], image[:, 1])  # a mirror: no edge for the network to see
    np.testing.assert_array_equal(stepper.result(), image + 1)
    assert fitted_stepper(inner, (24, 32), SizeFit(min_size=16, step=8)) is inner


class FixedShapeNet(nn.Module):
    """A channel shuffle whose reshape a static export freezes at the traced size."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, 2, 1)
        self.deep = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        n, c, h, w = y.shape
        return torch.relu(self.deep(y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)))


@pytest.fixture(scope="module")
def fixed_224(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fixed")
    path = folder / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            FixedShapeNet().eval(), torch.zeros(1, 3, 224, 224), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["deep"],
        )  # fmt: skip
    return export_model("onnx", folder / "models", name="fixed224", onnx_options=OnnxOptions(path, ["deep"]))


def test_a_fixed_size_model_dreams_a_photograph_smaller_than_its_input(fixed_224: Path, start_server):
    """The issue's case: shapes frozen at 224 px, the cat photograph at 256x170 px (its short side
    padded, its long one in tiles); and a larger photograph in tiles, as before."""
    from dreamstream.client import DreamClient, Frame, Started
    from dreamstream.server.models import ModelRepository

    assert read_manifest(fixed_224).fixed_size == 224
    repository = ModelRepository(fixed_224.parent, device="cpu")
    repository.load()
    server = start_server(repository)
    with DreamClient(server.target) as client:
        for photo, side, size in (("chelsea.png", 256, (256, 170)), ("coffee.png", 600, (600, 400))):
            picture = shared_image(photo)
            events = list(client.dream(picture, model="fixed224", max_size=side, octaves=3, steps_per_octave=2))
            started = next(event for event in events if isinstance(event, Started))
            frames = [event for event in events if isinstance(event, Frame)]
            assert frames[-1].final and (frames[-1].width, frames[-1].height) == size
            original = np.asarray(Image.open(picture).convert("RGB").resize(size), np.float32)
            assert np.abs(np.asarray(frames[-1].image().convert("RGB"), np.float32) - original).mean() > 2.0
    assert started.octave_sizes[0] == (336, 224)  # the ladder stops at the model's size


@pytest.fixture(scope="module")
def aligned_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Caffe2-style Inception whose branches line up every 8 px only, exported now, and the same
    export with the manifest an older version wrote (no size_step)."""
    from corpus_models import build

    folder = tmp_path_factory.mktemp("aligned")
    path = folder / "aligned.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            build("aligned_inception"), torch.zeros(1, 3, 64, 64), str(path), opset_version=13, dynamo=False,
            input_names=["input"], output_names=["mid", "deep", "logits"],
            dynamic_axes={"input": {0: "N", 2: "H", 3: "W"}},
        )  # fmt: skip
    models = folder / "models"
    dreamstream = [sys.executable, "-c", "import sys; from dreamstream.cli import main; sys.exit(main(sys.argv[1:]))"]
    command = [*dreamstream, "export", "onnx", "--onnx", str(path), "--layers", "mid,deep", "--out", str(models)]
    exported = subprocess.run([*command, "--name", "aligned"], capture_output=True, text=True, timeout=300)
    assert exported.returncode == 0, exported.stderr
    assert "runs only on sides of" in exported.stdout and "size_step=8" in exported.stdout
    model_dir = models / "aligned"
    older = shutil.copytree(model_dir, models / "aligned-older")
    manifest = json.loads((older / "manifest.json").read_text())
    del manifest["size_step"]
    manifest["name"] = "aligned-older"
    (older / "manifest.json").write_text(json.dumps(manifest))
    return models


def test_a_network_that_runs_every_8_px_dreams_every_octave_and_an_older_export_is_refused_by_name(
    aligned_models: Path, start_server
):
    """The issue's INTERNAL from ONNX Runtime's Concat mid-dream: the export now records size_step and
    every octave is padded to a side that runs; a model exported before that is refused as
    FAILED_PRECONDITION (MODEL_CANNOT_RUN) with the size and what to do, never INTERNAL."""
    from dreamstream.client import DreamClient, Frame, ModelUnavailable
    from dreamstream.server.models import ModelRepository

    manifest = read_manifest(aligned_models / "aligned")
    assert manifest.size_step == 8
    repository = ModelRepository(aligned_models, device="cpu")
    repository.load()
    server = start_server(repository)
    photo = shared_image("coffee.png")
    with DreamClient(server.target) as client:
        events = client.dream(photo, model="aligned", max_size=100, octaves=3, steps_per_octave=1)
        final = [event for event in events if isinstance(event, Frame)][-1]
        assert final.final and (final.width, final.height) == (100, 67)
        with pytest.raises(ModelUnavailable) as refused:
            list(client.dream(photo, model="aligned-older", max_size=100, octaves=3, steps_per_octave=1))
    assert refused.value.reason == "MODEL_CANNOT_RUN"
    assert "aligned-older" in str(refused.value) and "re-export" in str(refused.value)


def test_a_few_sides_about_the_declared_one_make_a_fixed_size_network():
    """A reshape frozen at the traced 64 px that ceil-mode pools forgive from 63 to 66 px."""
    assert find_working_sizes(lambda h, w: 63 <= h <= 66 and 63 <= w <= 66, 64) == WorkingSizes(64, fixed=64)
