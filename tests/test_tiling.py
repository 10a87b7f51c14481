"""Tiled gradients: memory follows the tile, the seams do not show, and tiled dreams agree with whole ones.

Real efficientnet-lite0 sessions, real photographs, and (for memory) a real
`dreamstream serve` process whose peak resident memory is read from /proc.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from dreamstream.cli import main
from dreamstream.client import DreamClient, InvalidRequest, Progress
from dreamstream.modeldir import CHANNEL_WEIGHTS, LAYER_WEIGHTS
from dreamstream.server import imaging
from dreamstream.server.engine import DreamEngine, DreamSpec, Octave, Step
from dreamstream.server.engine.limits import STEP_BASE_BYTES, STEP_BYTES_PER_PIXEL, Limits
from dreamstream.server.engine.steppers import HostSteps, step_constants
from dreamstream.server.engine.tiling import MAX_TILED_SIDE, TiledSteps, Tiling, tiled_memory
from dreamstream.server.refusals import InvalidRequest as Refused

REPO = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-c", "import sys; from dreamstream.cli import main; sys.exit(main())"]
# The 8192 px measurement takes minutes and several GB: the long mode runs it (see the README).
HUGE = os.environ.get("DREAMSTREAM_LONG_TESTS") == "1" or os.environ.get("DREAMSTREAM_TILING_8192") == "1"
# The huge dreams' measurements, written by the long mode, shown in the README's tiling table.
TILING_RESULTS = REPO / "benchmarks" / "results" / "tiling.json"
MIB = 2**20


def picture(path: Path, max_size: int) -> np.ndarray:
    return imaging.decode(path.read_bytes(), max_size)


def final_image(engine: DreamEngine, image: np.ndarray, **options) -> np.ndarray:
    events = list(engine.run(engine.plan(DreamSpec(pixels=image, **options))))
    return [event for event in events if isinstance(event, Octave)][-1].image


def psnr(first: np.ndarray, second: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((first - second) ** 2)))


def one_step(engine: DreamEngine, image: np.ndarray, tiling: Tiling, shift: tuple[int, int]) -> np.ndarray:
    """The change one tiled step makes to `image` (HxWx3), as 3xHxW."""
    plan = engine.plan(DreamSpec(pixels=image))
    feeds = {LAYER_WEIGHTS: plan.layer_weights, CHANNEL_WEIGHTS: plan.channel_weights}
    session = plan.model.session(plan.model.graph_for(plan.params.layers))
    stepper = TiledSteps(session, feeds, plan.params.step_size, tiling)
    start = np.ascontiguousarray(image.transpose(2, 0, 1))
    stepper.start(start.copy())
    stepper.step(np.array(shift, np.int64))
    return stepper.result() - start


@pytest.mark.parametrize(
    ("length", "tiling"),
    [
        (300, Tiling(128, 16)),
        (1000, Tiling(512, 32, align=16)),
        (129, Tiling(128, 0)),
        (100, Tiling(128, 8)),
        (100, Tiling(128, 8, fixed=True)),  # a fixed-size model: tiles larger than the side wrap around
        (500, Tiling(224, 16, fixed=True)),
    ],
)
def test_every_pixel_of_a_side_is_written_by_exactly_one_tile_at_any_roll(length: int, tiling: Tiling) -> None:
    tiles = tiling.axis(length)
    for shift in (0, 1, 37, length - 1):
        spans = tiles.spans(shift, length)
        written = np.concatenate([span.write for span in spans])
        assert sorted(written) == list(range(length))
        for span in spans:
            assert len(span.read) == (tiling.size if tiling.fixed or length > tiling.size else length)
            np.testing.assert_array_equal(span.read[span.keep], span.write)
    assert all(start % tiling.align == 0 for start in tiles.starts)  # on the layer's grid


def test_the_tiles_cover_every_side_once_for_any_size_overlap_and_alignment() -> None:
    for size, overlap, align in [(96, 0, 24), (192, 8, 32), (192, 48, 1), (512, 32, 16), (64, 16, 16)]:
        tiling = Tiling(size, overlap, align=align)
        for length in range(33, 1100, 13):
            for shift in (0, 7, length - 1):
                spans = tiling.axis(length).spans(shift, length)
                assert sorted(np.concatenate([span.write for span in spans])) == list(range(length))
                assert all(span.keep.stop <= len(span.read) for span in spans)


def test_a_tile_as_large_as_the_picture_steps_exactly_as_the_fused_step_graph(
    engine: DreamEngine, coffee: Path
) -> None:
    image = picture(coffee, 96)
    shift = (17, 40)
    tiled = one_step(engine, image, Tiling(128, 8), shift)
    np.testing.assert_allclose(tiled, whole_step(engine, image, shift), atol=1e-5)


def test_tiled_and_whole_dreams_of_the_same_seed_agree_better_than_two_seeds_do(bvlc_repository, coffee: Path) -> None:
    # googlenet-bvlc at inception_4c/output on a 256 px photograph, in 128 px tiles. The
    # yardstick is the jitter itself: tiling must change the dream less than another seed does.
    engine = DreamEngine(bvlc_repository)
    image = picture(coffee, 256)
    options = {"model": "googlenet-bvlc", "layers": {"inception_4c/output": 1.0}, "octaves": 2, "steps_per_octave": 5}
    whole = final_image(engine, image, seed=3, **options)
    tiled = final_image(engine, image, seed=3, tile_size=128, tile_overlap=16, **options)
    other_seed = final_image(engine, image, seed=4, **options)

    def agreement(first: np.ndarray, second: np.ndarray) -> float:
        """How alike two dreams' changes to the picture are (correlation)."""
        return float(np.corrcoef((first - image).ravel(), (second - image).ravel())[0, 1])

    print(
        f"tiled against whole: PSNR {psnr(whole, tiled):.1f} dB, correlation {agreement(whole, tiled):.2f}; "
        f"two seeds: PSNR {psnr(whole, other_seed):.1f} dB, correlation {agreement(whole, other_seed):.2f}"
    )
    assert agreement(whole, tiled) > agreement(whole, other_seed)
    assert psnr(whole, tiled) > psnr(whole, other_seed)


def test_the_seams_do_not_show(engine: DreamEngine, coffee: Path) -> None:
    # One step without jitter, so that the borders stay where they are, against the same
    # step on the whole picture: the tiled step is as strong along the tile borders as
    # the whole one is there, and every tile is as strong as the whole step there (a
    # gradient normalised tile by tile is not: each tile as strong as the next).
    image = picture(coffee, 512)[:320, :480]
    tiling = Tiling(192, 12, align=32)
    tiled = (one_step(engine, image, tiling, (0, 0)) ** 2).mean(axis=0)
    whole = (whole_step(engine, image) ** 2).mean(axis=0)
    height, width = tiled.shape
    near = np.zeros(tiled.shape, bool)
    for offset in range(-3, 3):
        near[(border_positions(tiling, height) + offset) % height, :] = True
        near[:, (border_positions(tiling, width) + offset) % width] = True
    along = (tiled[near].mean() / tiled[~near].mean()) / (whole[near].mean() / whole[~near].mean())
    strength = [np.log(tiled[core].mean() / whole[core].mean()) for core in cores(tiling, height, width)]
    print(f"along the borders, tiled / whole: {along:.2f}; tile strength against whole, spread {np.std(strength):.2f}")
    assert 0.67 < along < 1.5
    assert np.std(strength) < 0.25


def whole_step(engine: DreamEngine, image: np.ndarray, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The change one step of the fused step graph makes to `image`, as 3xHxW."""
    plan = engine.plan(DreamSpec(pixels=image))
    fused = HostSteps(
        plan.model.session(plan.step_graph), step_constants(plan.layer_weights, plan.channel_weights, 0.01)
    )
    start = np.ascontiguousarray(image.transpose(2, 0, 1))
    fused.start(start)
    fused.step(np.array(shift, np.int64))
    return fused.result() - start


def border_positions(tiling: Tiling, length: int) -> np.ndarray:
    """Where each tile's core begins along a side, without roll."""
    tiles = tiling.axis(length)
    return np.array([(start + offset) % length for start, (offset, _) in zip(tiles.starts, tiles.cores, strict=True)])


def cores(tiling: Tiling, height: int, width: int) -> list[tuple[slice, slice]]:
    """The picture's part each tile's core covers, without roll (none wraps: the first begins at 0)."""
    rows = [span.write for span in tiling.axis(height).spans(0, height)]
    columns = [span.write for span in tiling.axis(width).spans(0, width)]
    return [(slice(r[0], r[-1] + 1), slice(c[0], c[-1] + 1)) for r in rows for c in columns]


def test_a_picture_too_large_for_the_memory_budget_is_tiled_by_the_server(repository, coffee: Path) -> None:
    # A budget for 200 px squares: a 256 px picture is tiled, in tiles the budget allows.
    budget = STEP_BASE_BYTES + STEP_BYTES_PER_PIXEL * 200 * 200
    engine = DreamEngine(repository, limits=Limits(memory_budget=budget))
    model = repository.get("")
    assert engine.untiled_limit(model) == 200
    whole = engine.plan(DreamSpec(pixels=picture(coffee, 180)))
    assert whole.tiling is None
    plan = engine.plan(DreamSpec(pixels=picture(coffee, 256), octaves=1, steps_per_octave=1))
    assert plan.tiling is not None and plan.tiling.size <= 200
    assert plan.memory <= budget
    steps = [event for event in engine.run(plan) if isinstance(event, Step)]
    assert steps[0].tiles == plan.tiling.count(*plan.size) > 1


def test_a_tiled_dream_plans_memory_by_the_tile(engine: DreamEngine) -> None:
    whole = engine.plan(DreamSpec(noise_size=(1024, 1024), tile_size=1024))
    tiled = engine.plan(DreamSpec(noise_size=(1024, 1024), tile_size=256))
    assert whole.tiling is None  # one tile is the whole picture: the fused step graph runs
    assert tiled.tiling == Tiling(256, 16, align=tiled.model.serving_layer(tiled.params.layers)[0].stride)
    assert tiled.memory < whole.memory / 4


def test_max_size_may_pass_the_models_max_size_up_to_the_tiled_limit(engine: DreamEngine) -> None:
    big = engine.plan(DreamSpec(noise_size=(64, MAX_TILED_SIDE)))
    assert big.tiling is not None  # above the model's max_size: tiled by itself
    with pytest.raises(Refused, match=f"at most {MAX_TILED_SIDE}"):
        engine.plan(DreamSpec(image=b"x", max_size=MAX_TILED_SIDE + 1))


@pytest.mark.parametrize(
    ("options", "field", "message"),
    [
        ({"tile_size": 8}, "tile_size", r"tile_size 8 is out of range for model .*: use 32 to 4096 px"),
        ({"tile_size": -1}, "tile_size", "tile_size -1 is negative"),
        ({"tile_size": 128, "tile_overlap": 40}, "tile_overlap", "tile_overlap 40 is too large .* use 0 to 32"),
        ({"tile_overlap": -3}, "tile_overlap", "tile_overlap -3 is negative"),
    ],
)
def test_bad_tiles_are_refused_with_what_to_change(
    engine: DreamEngine, options: dict, field: str, message: str
) -> None:
    with pytest.raises(Refused, match=message) as refused:
        engine.plan(DreamSpec(noise_size=(300, 300), **options))
    assert refused.value.field == field


def test_the_client_asks_for_tiles_and_progress_says_how_many(client: DreamClient, coffee: Path) -> None:
    events = list(client.dream(coffee, max_size=200, octaves=1, steps_per_octave=1, tile_size=96, tile_overlap=0))
    progress = [event for event in events if isinstance(event, Progress)]
    assert progress[0].tiles > 1
    whole = [event for event in client.dream(coffee, max_size=200, octaves=1, steps_per_octave=1)]
    assert [event.tiles for event in whole if isinstance(event, Progress)] == [1]
    with pytest.raises(InvalidRequest, match="tile_size 4 is out of range"):
        list(client.dream(coffee, max_size=200, tile_size=4))


def test_models_say_above_which_size_they_are_tiled(client: DreamClient) -> None:
    (lite0,) = [model for model in client.models() if model.name == "efficientnet-lite0"]
    assert lite0.max_size == MAX_TILED_SIDE
    assert lite0.min_size < lite0.max_untiled_size < MAX_TILED_SIDE


class FixedSizeNet(torch.nn.Module):
    """A channel shuffle whose reshape a static export freezes at the traced size (48 px)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.conv(x))
        n, c, h, w = y.shape
        return y.reshape(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)


def test_a_model_of_one_input_size_dreams_any_picture_in_tiles_of_that_size(tmp_path: Path, coffee: Path) -> None:
    from dreamstream.export.api import OnnxOptions, export_model
    from dreamstream.server.models import ModelRepository

    path = tmp_path / "fixed.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            FixedSizeNet().eval(), torch.zeros(1, 3, 48, 48), str(path), opset_version=17, dynamo=False,
            input_names=["input"], output_names=["shuffled"],
        )  # fmt: skip
    export_model("onnx", tmp_path / "models", name="fixed", onnx_options=OnnxOptions(path, ["shuffled"]))
    repository = ModelRepository(tmp_path / "models", device="cpu")
    repository.load()
    engine = DreamEngine(repository)
    assert engine.untiled_limit(repository.get("fixed")) == 0
    image = picture(coffee, 100)  # 100x66: wider than one tile, and taller
    plan = engine.plan(DreamSpec(pixels=image, model="fixed", octaves=2, steps_per_octave=2, octave_scale=1.2))
    assert plan.tiling == Tiling(48, 3, fixed=True, align=2)
    events = list(engine.run(plan))
    final = [event for event in events if isinstance(event, Octave)][-1].image
    assert final.shape == image.shape
    assert np.abs(final - image).mean() > 1e-3
    assert [event.tiles for event in events if isinstance(event, Step)][-1] == plan.tiling.count(*image.shape[:2])
    with pytest.raises(Refused, match="runs on 48 px squares only: set tile_size to 48 or 0"):
        engine.plan(DreamSpec(pixels=image, model="fixed", tile_size=64))


@pytest.mark.parametrize(
    "side",
    [
        4096,
        pytest.param(
            8192,
            marks=[
                pytest.mark.skipif(not HUGE, reason="the long mode: DREAMSTREAM_LONG_TESTS=1"),
                pytest.mark.timeout(3600),
            ],
        ),
    ],
)
def test_a_huge_dream_comes_back_whole_and_the_servers_memory_follows_the_tile(
    lite0_dir: Path, tmp_path: Path, side: int
) -> None:
    huge = tmp_path / f"huge-{side}.jpg"
    Image.open(REPO / "samples" / "coffee.jpg").convert("RGB").resize((side, side), Image.Resampling.BICUBIC).save(
        huge, quality=90
    )
    models = tmp_path / "models"
    models.mkdir()
    (models / lite0_dir.name).symlink_to(lite0_dir)  # this model only
    log = tmp_path / "server.log"
    with open(log, "w") as log_file:
        server = subprocess.Popen(
            [*CLI, "serve", "--models", str(models), "--host", "127.0.0.1",
             "--port", "0", "--device", "cpu", "--max-input-pixels", str(side * side), "--max-dream-seconds", "3600",
             "--max-connection-age-grace", "3600"],
            stderr=log_file,
        )  # fmt: skip
    try:
        port = wait_for_port(log, server)
        loaded = resident_memory(server.pid)
        out = tmp_path / "dream.jpg"
        began = time.perf_counter()
        code = main(["dream", str(huge), "-o", str(out), "--server", f"127.0.0.1:{port}", "--quiet",
                     "--tile-size", "512", "--max-size", str(side), "--octaves", "1", "--steps", "1"])  # fmt: skip
        seconds = time.perf_counter() - began
        peak = peak_memory(server.pid)
    finally:
        server.terminate()
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:  # a dream still running past the drain
            server.kill()
            server.wait()
    assert code == 0, log.read_text()[-2000:]
    assert Image.open(out).size == (side, side)
    # The server's own estimate of the dream (what its memory budget admits it by) bounds what it took.
    estimate = tiled_memory(Tiling(512, 512 // 16), side * side, Limits())
    print(f"{side}x{side} in 512 px tiles, 1 octave x 1 step: {seconds:.0f} s, server peak {peak / MIB:.0f} MiB "
          f"({loaded / MIB:.0f} MiB loaded, estimate {estimate / MIB:.0f} MiB)")  # fmt: skip
    assert peak <= loaded + estimate
    if side == 4096:
        assert peak < 2 * 1024**3
    if HUGE:  # the long mode's numbers are the README's
        record_tiling_result(side, seconds, peak)


def record_tiling_result(side: int, seconds: float, peak: int) -> None:
    rows = (
        {row["side"]: row for row in json.loads(TILING_RESULTS.read_text())["rows"]} if TILING_RESULTS.exists() else {}
    )
    rows[side] = {
        "side": side,
        "tile": 512,
        "seconds": round(seconds),
        "peak_mib": round(peak / MIB),
        "cores": os.cpu_count(),
        "load_average": round(os.getloadavg()[0], 1),
    }
    command = "DREAMSTREAM_LONG_TESTS=1 pytest tests/test_tiling.py -k huge -s"
    TILING_RESULTS.write_text(
        json.dumps({"command": command, "rows": sorted(rows.values(), key=lambda row: row["side"])}, indent=2) + "\n"
    )


def test_the_readmes_tiling_table_is_the_long_modes_results_file() -> None:
    """Each row of the README's huge-picture table: the side, seconds and peak of benchmarks/results/tiling.json."""
    readme = (REPO / "README.md").read_text()
    table = re.findall(r"^\| (\d+) x \d+ JPEG \| (\d+) px \| (\d+) s \| (\d+) MiB \|$", readme, re.MULTILINE)
    rows = json.loads(TILING_RESULTS.read_text())["rows"]
    assert table == [(str(r["side"]), str(r["tile"]), str(r["seconds"]), str(r["peak_mib"])) for r in rows]
    assert {row["side"] for row in rows} >= {4096, 8192}


def resident_memory(pid: int) -> int:
    """The process's resident memory now (VmRSS), bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+) kB", status).group(1)) * 1024


def wait_for_port(log: Path, server: subprocess.Popen, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and server.poll() is None:
        text = log.read_text()
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", text)
        if port and "serving" in text:
            return port.group(1)
        time.sleep(0.2)
    raise AssertionError(f"the server never became ready (exit status {server.poll()}): {log.read_text()[-2000:]}")


def peak_memory(pid: int) -> int:
    """The process's peak resident memory (VmHWM), bytes."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", status).group(1)) * 1024
