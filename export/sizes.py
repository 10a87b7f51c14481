"""The picture sizes an exported network runs at, found by running it, not by reading it.

Most networks run at any side from a minimum up. Some run only at some sides:
branches whose pools round differently (ceil_mode in one, not in the other) give
maps that line up for a concatenation only when the side is right modulo the
network's stride, and a network exported with frozen shapes runs at its declared
side alone. The export probes the deepest gradient graph (the one with every
op of every other) on grey squares and records what it finds in the manifest:
the smallest side, the step between sides that run (`min_size + k * size_step`),
or the one fixed side. The server then dreams every octave at such a size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from dreamstream.modeldir import CHANNEL_WEIGHTS, IMAGE, LAYER_WEIGHTS

# The export checks that a graph runs on pictures about this large; one that runs only at its
# declared size is a fixed-size model.
PROBE_LARGE = 512
# Sides probed from the smallest on to find the step between sides that run: twice the
# longest step looked for, the largest stride of common networks (32).
STEP_WINDOW = 64
# Sides past the declared one tried before a network is called fixed-size: one of them runs
# unless its shapes are frozen.
_NEAR_DECLARED = (1, 2, 4, 8, 16, 32, 64)


class SizeProbeError(ValueError):
    """The exported graph runs at no size the probes found, or at sizes with no regular step."""


@dataclass(frozen=True)
class WorkingSizes:
    smallest: int  # the smallest square side the graphs run on
    fixed: int = 0  # > 0: the only side they run on (a network exported with fixed shapes)
    step: int = 1  # the sides that run are smallest + k * step

    def lifted_to(self, side: int) -> int:
        """The smallest side that runs and is at least `side`."""
        if self.fixed:
            return self.fixed
        if side <= self.smallest:
            return self.smallest
        return self.smallest + -(-(side - self.smallest) // self.step) * self.step


Runs = Callable[[int, int], bool]


def working_sizes(graph_path: Path, layer_count: int, channel_total: int, declared: int | None) -> WorkingSizes:
    """The sizes the gradient graph at `graph_path` runs on (see the module)."""
    return find_working_sizes(_graph_runs(graph_path, layer_count, channel_total), declared)


def find_working_sizes(runs: Runs, declared: int | None) -> WorkingSizes:
    """The sizes at which `runs(height, width)` is true, from probes (each is memoised)."""
    runs = cache(runs)

    def square(side: int) -> bool:
        return runs(side, side)

    large = PROBE_LARGE if square(PROBE_LARGE) else None
    if large is None and declared and square(declared):
        if not any(square(declared + extra) for extra in _NEAR_DECLARED):
            return WorkingSizes(smallest=declared, fixed=declared)
        large = declared
    if large is None:
        large = next((side for side in range(PROBE_LARGE + 1, PROBE_LARGE + STEP_WINDOW) if square(side)), None)
    if large is None:
        at_declared = f" nor at its declared {declared}x{declared}" if declared else ""
        raise SizeProbeError(
            f"the exported graph runs on no picture of {PROBE_LARGE} to {PROBE_LARGE + STEP_WINDOW - 1} px a side"
            f"{at_declared}"
        )
    low = _smallest_below(square, large)
    try:
        step = _step_from(square, low)
        while low - step >= 1 and square(low - step):  # a bisection over sides that run only on a grid may overshoot
            low -= step
        sizes = WorkingSizes(smallest=low, step=step)
        _confirm(runs, sizes, large)
    except SizeProbeError:
        # A few sides about the declared one and no others (a reshape frozen at the traced size
        # that rounding pools forgive by a pixel or two): a fixed-size network after all.
        if declared and square(declared):
            return WorkingSizes(smallest=declared, fixed=declared)
        raise
    return sizes


def _smallest_below(square: Callable[[int], bool], high: int) -> int:
    """The smallest side at which the graph runs, by bisection below `high` (where it runs)."""
    low = 1
    while low < high:
        middle = (low + high) // 2
        if square(middle):
            high = middle
        else:
            low = middle + 1
    return low


def _step_from(square: Callable[[int], bool], low: int) -> int:
    """The period of the sides that run, from `low` (which runs) on: 1 when every side does.

    A period of at most half the window shows a failing side within any half of it, so
    a network that runs at every side costs half the window's probes.
    """
    half = STEP_WINDOW // 2
    pattern = [square(low + offset) for offset in range(half)]
    if all(pattern):
        return 1
    pattern += [square(low + offset) for offset in range(half, STEP_WINDOW)]
    for step in range(2, half + 1):
        if all(pattern[i] == pattern[i + step] for i in range(STEP_WINDOW - step)):
            return step
    raise SizeProbeError(
        f"the exported graph runs at sides {[low + i for i, ok in enumerate(pattern) if ok]} px but with no "
        f"regular step up to {half} px: export it with fixed shapes (one input size)"
    )


def _confirm(runs: Runs, sizes: WorkingSizes, large: int) -> None:
    """The sizes found hold far from where they were found, and for pictures that are not square."""
    far = sizes.lifted_to(max(large, PROBE_LARGE) - sizes.step)
    wide = (sizes.smallest, sizes.lifted_to(sizes.smallest + 1) + sizes.step)
    for height, width in ((far, far), wide, wide[::-1]):
        if not runs(height, width):
            raise SizeProbeError(
                f"the exported graph runs on squares of {sizes.smallest} + k * {sizes.step} px but not on "
                f"{width}x{height} px: export it with fixed shapes (one input size)"
            )


def _graph_runs(graph_path: Path, layer_count: int, channel_total: int) -> Runs:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4  # the failing probes are expected; keep them out of the log
    try:
        session = ort.InferenceSession(str(graph_path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # ORT's own error types: an op or attribute it cannot run
        raise SizeProbeError(f"ONNX Runtime cannot load the exported graph: {error}") from error
    feeds = {
        LAYER_WEIGHTS: np.ones(layer_count, np.float32),
        CHANNEL_WEIGHTS: np.ones(channel_total, np.float32),
    }

    def runs(height: int, width: int) -> bool:
        try:
            picture = np.full((1, 3, height, width), 0.5, np.float32)
            loss = session.run(["loss"], {IMAGE: picture, **feeds})[0]
        except Exception:  # ORT raises its own error types for shapes a network cannot take
            return False
        return bool(np.isfinite(loss).all())

    return runs
