"""Tiled gradients: a picture larger than memory allows is dreamed tile by tile.

The gradient of a step is computed on square tiles of the picture, one Run of the
model's gradient graph each (the TensorFlow tutorial's tiled gradients,
neural-dream's tile size and overlap), so the network's activations, by far the
largest part of a step's memory, follow the tile and not the picture. Each tile
reads `overlap` pixels of context past the part of the gradient it keeps (its
core), so a core's gradient is nearly what the whole picture's would be; the
cores cover the picture exactly once. The step's random roll (jitter) moves the
tile borders to new places in the picture at every step, hiding whatever seam
is left. The tiles sit on the rolled picture seen as a torus: a tile that runs
past an edge wraps around, as the untiled step graph's roll does, so every tile
has the same size (and a model with a fixed input size is served by tiles of
exactly that size, even on a smaller picture).

Normalising the gradient by its mean absolute value, the step and the clipping
are done here in numpy, over the whole picture: normalising per tile would give
every tile the same strength and show the tile grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dreamstream.modeldir import GRAD, IMAGE, LOSS, Manifest
from dreamstream.server.engine.fitting import SizeFit
from dreamstream.server.engine.limits import STEP_BASE_BYTES, Limits, step_memory
from dreamstream.server.engine.normalise import NORMALISE_EPSILON
from dreamstream.server.engine.steppers import SessionSource, session_of
from dreamstream.server.providers import releasing_run
from dreamstream.server.refusals import InvalidRequest

# The longest side a dream may have, in tiles. The whole picture's own arrays (the
# original, the picture, its gradient, the next octave's start: 12 bytes per pixel
# each) are the memory tiling cannot cut, about 3 GB at this side.
MAX_TILED_SIDE = 8192
# Memory of those whole-picture arrays per pixel, beside the tile's step.
WHOLE_PICTURE_BYTES_PER_PIXEL = 60
# Without a memory budget, a dream whose untiled step would take more than this is tiled.
DEFAULT_UNTILED_MEMORY = 2 * 1024**3
# The tile side when the server decides to tile by itself.
AUTO_TILE_SIZE = 512
# The overlap and the alignment are at most a quarter of the tile: a tile must keep
# most of what it computes.
MAX_MARGIN_FRACTION = 4


@dataclass(frozen=True)
class Tiling:
    """How a dream's gradient is cut: square tiles of `size` px reading `overlap` px of context each side.

    Tiles start at multiples of `align` on the rolled picture: with the layer's stride
    there, a tile's activations sit on the same grid as the whole picture's would, and
    its gradient matches theirs far better (a network is shift-equivariant only by
    multiples of its stride).

    `fixed` (a model whose graphs take one input size only): every tile is exactly
    `size`, even where the picture is smaller; otherwise a side that fits in one tile
    is not cut, and a picture that fits whole is stepped exactly as untiled.
    """

    size: int
    overlap: int
    fixed: bool = False
    align: int = 1

    def count(self, height: int, width: int) -> int:
        """Tiles per step on a picture of height x width."""
        return len(self.axis(height).starts) * len(self.axis(width).starts)

    def axis(self, length: int) -> AxisTiles:
        """The tiles along one side of `length` pixels."""
        if length == self.size or (length < self.size and not self.fixed):
            return AxisTiles(length, (0,), ((0, length),))
        keep = self.size - 2 * self.overlap - (self.align - 1)  # the most of a tile's gradient that is kept
        count = math.ceil(length / keep)
        bounds = [round(index * length / count) for index in range(count + 1)]
        starts, cores = [], []
        for begin, end in zip(bounds, bounds[1:], strict=False):
            # The core in the middle of its tile, then the tile moved back onto the grid: by
            # less than `align`, which `keep` leaves room for.
            start = begin - (self.size - (end - begin) - (self.align - 1)) // 2
            start -= start % self.align
            starts.append(start)
            cores.append((begin - start, end - begin))
        return AxisTiles(self.size, tuple(starts), tuple(cores))


@dataclass(frozen=True)
class AxisTiles:
    """Tiles along one side of the rolled picture: each starts at `starts[i]` (wrapping around the
    edges) and is `length` long; of its gradient, `cores[i]` = (offset, length) is kept."""

    length: int
    starts: tuple[int, ...]
    cores: tuple[tuple[int, int], ...]

    def spans(self, shift: int, size: int) -> list[Span]:
        """What each tile reads from the picture and where its core goes, for a roll by `shift`.

        The rolled picture's position p holds the picture's (p - shift) mod size: the
        roll and the roll back are this one index map.
        """
        spans = []
        for start, (offset, length) in zip(self.starts, self.cores, strict=True):
            read = (np.arange(start, start + self.length) - shift) % size
            spans.append(Span(read, slice(offset, offset + length), read[offset : offset + length]))
        return spans


@dataclass(frozen=True)
class Span:
    """One tile along one side: the picture's rows (or columns) it `read`s, the part of its
    gradient it keeps (`keep`, in tile positions) and the picture's rows that part `write`s."""

    read: np.ndarray
    keep: slice
    write: np.ndarray


class TiledSteps:
    """Runs the steps of one octave tile by tile with a gradient graph (see the module).

    `feeds` are the graph's inputs other than the picture. `direction(grad, image)`,
    when given, turns the whole picture's gradient into what a step adds before
    `step_size` (the controls that reshape the gradient); without it the gradient is
    normalised by its mean absolute value in place, so a step holds no more than the
    picture and its gradient.
    """

    def __init__(
        self,
        session: SessionSource,
        feeds: dict[str, np.ndarray],
        step_size: float,
        tiling: Tiling,
        direction: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
    ) -> None:
        self._session = session_of(session)
        self._feeds = dict(feeds)
        self._step_size = step_size
        self.tiling = tiling
        self._direction = direction
        self._image: np.ndarray | None = None
        self._grad: np.ndarray | None = None

    def start(self, image: np.ndarray) -> None:
        """Take `image` (3xHxW float32) over: the steps update it in place, so pass an array
        nobody else reads (a copy costs 12 bytes per pixel, 800 MB at 8192 px)."""
        self._image = np.ascontiguousarray(image, np.float32)
        self._grad = np.empty_like(self._image)

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        """One step, tile by tile; the last tile's Run releases the arena's free memory whatever
        `release` says (the tiles' sizes change with the shift at every step)."""
        image, grad = self._image, self._grad
        channels, height, width = image.shape
        every_channel = np.arange(channels)
        rows = self.tiling.axis(height).spans(int(shift[0]), height)
        columns = self.tiling.axis(width).spans(int(shift[1]), width)
        losses = []
        absolute_sum = 0.0
        tiles = [(row, column) for row in rows for column in columns]
        session = self._session()
        for number, (row, column) in enumerate(tiles, start=1):
            tile = image[np.ix_(every_channel, row.read, column.read)]
            options = releasing_run() if number == len(tiles) else None
            loss, tile_grad = session.run([LOSS, GRAD], {**self._feeds, IMAGE: tile[None]}, options)
            core = tile_grad[0, :, row.keep, column.keep]
            grad[np.ix_(every_channel, row.write, column.write)] = core
            absolute_sum += float(np.abs(core).sum(dtype=np.float64))
            losses.append(float(loss[0]))
        if self._direction is not None:
            image += self._step_size * self._direction(grad, image)
        else:
            # The cores cover the picture once: this is the whole gradient's mean absolute value.
            grad *= self._step_size / (absolute_sum / grad.size + NORMALISE_EPSILON)
            image += grad
        np.clip(image, 0.0, 1.0, out=image)
        return float(np.mean(losses))

    def result(self) -> np.ndarray:
        return self._image


def default_overlap(tile_size: int) -> int:
    """The overlap when a request names none: a sixteenth of the tile (32 px of a 512 px tile)."""
    return tile_size // 16


def untiled_limit(manifest: Manifest, limits: Limits) -> int:
    """The longest side of a square picture dreamed in one piece: above it, the server tiles.

    The model's max_size (the largest side it is recommended to run in one piece), or
    less where the memory budget (DEFAULT_UNTILED_MEMORY without one) says so; 0 for a
    model with a fixed input size, which is always tiled.
    """
    if manifest.fixed_size:
        return 0
    budget = limits.memory_budget or DEFAULT_UNTILED_MEMORY
    budget_side = math.isqrt(max(0, budget - STEP_BASE_BYTES) // limits.step_bytes_per_pixel)
    return max(manifest.min_size, min(manifest.max_size, budget_side))


def tiled_memory(tiling: Tiling, pixels: int, limits: Limits) -> int:
    """Bytes a tiled step on a picture of `pixels` pixels is expected to take at most: the
    tile's step and the whole picture's own arrays."""
    return step_memory(tiling.size * tiling.size, limits.step_bytes_per_pixel) + WHOLE_PICTURE_BYTES_PER_PIXEL * pixels


def plan_tiling(
    manifest: Manifest,
    size: tuple[int, int],
    tile_size: int | None,
    tile_overlap: int | None,
    limits: Limits,
    stride: int,
) -> Tiling | None:
    """How a dream of `size` (height, width) is tiled, or None when it runs in one piece.

    `tile_size` None (or 0) lets the server decide: a picture above the model's
    untiled limit (`untiled_limit`) is cut into tiles of AUTO_TILE_SIZE, or of what
    the budget allows. A model with a fixed input size is always tiled at that size.
    `stride` is the serving layer's: the tiles are aligned to it.
    """
    height, width = size
    if tile_overlap is not None and tile_overlap < 0:
        raise InvalidRequest(
            f"tile_overlap {tile_overlap} is negative: use 0 or more", reason="OUT_OF_RANGE", field="tile_overlap"
        )
    if tile_size is not None and tile_size < 0:
        raise InvalidRequest(
            f"tile_size {tile_size} is negative: use 0 to let the server decide",
            reason="OUT_OF_RANGE",
            field="tile_size",
        )
    if manifest.fixed_size:
        if tile_size and tile_size != manifest.fixed_size:
            raise InvalidRequest(
                f"model {manifest.name} runs on {manifest.fixed_size} px squares only: set tile_size to "
                f"{manifest.fixed_size} or 0",
                reason="OUT_OF_RANGE",
                field="tile_size",
            )
        return Tiling(
            manifest.fixed_size,
            _overlap(manifest.fixed_size, tile_overlap),
            fixed=True,
            align=min(stride, manifest.fixed_size // MAX_MARGIN_FRACTION),
        )
    fit = SizeFit.of(manifest)
    if tile_size:
        if not manifest.min_size <= tile_size <= manifest.max_size:
            raise InvalidRequest(
                f"tile_size {tile_size} is out of range for model {manifest.name}: use {manifest.min_size} to "
                f"{manifest.max_size} px, or 0 to let the server decide",
                reason="OUT_OF_RANGE",
                field="tile_size",
            )
        if fit.side(tile_size) != tile_size:
            raise InvalidRequest(
                f"tile_size {tile_size} is a side model {manifest.name} cannot run on: it runs on "
                f"{manifest.min_size} + k * {manifest.size_step} px, so use {fit.side(tile_size)}, or 0 to let "
                "the server decide",
                reason="OUT_OF_RANGE",
                field="tile_size",
            )
    else:
        limit = untiled_limit(manifest, limits)
        if height * width <= limit * limit and max(height, width) <= manifest.max_size:
            return None
        # A tile's step fits the budget as a whole picture's would at the untiled limit (on a
        # side the model runs on).
        tile_size = fit.side(max(manifest.min_size, min(AUTO_TILE_SIZE, limit - limit % 64 or limit)))
    overlap = _overlap(tile_size, tile_overlap)
    if max(height, width) <= tile_size:
        return None  # one tile: the untiled step graph does exactly that, faster
    return Tiling(tile_size, overlap, align=min(stride, tile_size // MAX_MARGIN_FRACTION))


def _overlap(tile_size: int, tile_overlap: int | None) -> int:
    """The overlap asked for (checked against the tile), or the default."""
    overlap = default_overlap(tile_size) if tile_overlap is None else tile_overlap
    most = tile_size // MAX_MARGIN_FRACTION
    if overlap > most:
        raise InvalidRequest(
            f"tile_overlap {overlap} is too large for tiles of {tile_size} px: use 0 to {most}",
            reason="OUT_OF_RANGE",
            field="tile_overlap",
        )
    return overlap
