"""Memory bounded before the work, measured on a real `dreamstream serve` process (peak RSS from /proc)."""

from __future__ import annotations

import io
import math
import threading
import time
from pathlib import Path

import pytest
from PIL import Image
from serve_process import ServeProcess

from dreamstream.client import DreamClient, InvalidRequest
from dreamstream.server.engine.limits import STEP_BASE_BYTES, STEP_BYTES_PER_PIXEL

BUDGET_MIB = 320
MIB = 2**20


def largest_legal_side(budget_mib: int) -> int:
    """The side of the largest square noise dream whose memory estimate fits the budget."""
    return math.isqrt((budget_mib * MIB - STEP_BASE_BYTES) // STEP_BYTES_PER_PIXEL)


@pytest.fixture(scope="module")
def budgeted(lite0_dir: Path):
    server = ServeProcess(
        lite0_dir.parent, "--max-concurrent", "4", "--max-queue", "8", "--memory-budget", str(BUDGET_MIB)
    )
    yield server
    assert server.stop() == 0


def test_a_10000_px_png_bomb_is_refused_costing_under_200_mb_of_peak_memory(budgeted: ServeProcess) -> None:
    buffer = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buffer, format="PNG")
    budgeted.reset_peak()
    peak_before = budgeted.status("VmHWM")
    began = time.perf_counter()
    with DreamClient(budgeted.target) as client:
        for max_size in (0, 4096):
            with pytest.raises(InvalidRequest, match="10000x10000 px, too many pixels"):
                list(client.dream(buffer.getvalue(), max_size=max_size))
    seconds = time.perf_counter() - began
    grown_mib = (budgeted.status("VmHWM") - peak_before) / 1024
    print(f"bomb: {len(buffer.getvalue()):,} bytes, refused twice in {seconds:.3f} s, peak +{grown_mib:.1f} MiB")
    assert grown_mib < 200, f"the bomb raised the peak by {grown_mib:.0f} MiB"


def test_a_burst_of_the_largest_legal_dreams_stays_under_the_memory_budget(budgeted: ServeProcess) -> None:
    side = largest_legal_side(BUDGET_MIB)
    with DreamClient(budgeted.target) as client, pytest.raises(InvalidRequest, match="memory budget"):
        list(client.dream(None, width=side + 8, height=side + 8, octaves=1, steps_per_octave=1))
    budgeted.reset_peak()
    baseline = budgeted.status("VmRSS")
    errors: list[Exception] = []

    def dream() -> None:
        try:
            with DreamClient(budgeted.target) as client:
                assert list(client.dream(None, width=side, height=side, octaves=1, steps_per_octave=1))[-1].final
        except Exception as error:
            errors.append(error)

    burst = [threading.Thread(target=dream) for _ in range(4)]
    for thread in burst:
        thread.start()
    for thread in burst:
        thread.join(600)
    assert errors == []
    peak_mib = (budgeted.status("VmHWM") - baseline) / 1024
    print(f"burst: 4 dreams of {side} px, peak {peak_mib:.0f} MiB over the RSS after loading, budget {BUDGET_MIB} MiB")
    assert peak_mib <= BUDGET_MIB, f"4 dreams of {side} px took {peak_mib:.0f} MiB over a {BUDGET_MIB} MiB budget"


def test_dreams_on_many_layer_graphs_give_their_memory_back(budgeted: ServeProcess) -> None:
    # Each layer has graphs (sessions) of its own; an arena per session would keep the peak of
    # each, and the server would hold their sum. The shared arena, shrunk at each octave's end,
    # keeps at most what one dream needs, and hands it back.
    side = largest_legal_side(BUDGET_MIB) // 2
    layers = ("block4", "block8", "block12", "head", "block2", "block6")
    with DreamClient(budgeted.target) as client:
        list(client.dream(None, width=side, height=side, octaves=1, steps_per_octave=1, layers={"block10": 1.0}))
        before = budgeted.status("VmRSS")
        for layer in layers:
            list(client.dream(None, width=side, height=side, octaves=2, steps_per_octave=1, layers={layer: 1.0}))
    held_mib = (budgeted.status("VmRSS") - before) / 1024
    one_dream_mib = (STEP_BASE_BYTES + STEP_BYTES_PER_PIXEL * side * side) / MIB
    print(f"{len(layers)} layers at {side} px: {held_mib:.0f} MiB held after them, estimate {one_dream_mib:.0f} MiB")
    assert held_mib < one_dream_mib, f"{held_mib:.0f} MiB held after dreams on {len(layers)} layers"
