"""Every octave dreamed at a size the network accepts: padded to it, and cropped back.

The manifest says which sides a model's graphs run on (`min_size`, `size_step`,
`fixed_size`). An octave of another size is reflect-padded up to the nearest
side that runs, dreamed there, and cropped back to its own size, so no dream
fails mid-way on a size the export already knew it could not take:
- a network whose branches line up only every `size_step` px: the next such side;
- a fixed-size network: sides below its size are padded to it (larger ones are
  tiled at that size, see `tiling`), so an ordinary photograph smaller than the
  network's input dreams too.

The padding is a mirror of the picture (no edge the network could see as a
feature), it is dreamed with the picture and thrown away with the crop; an octave
that already fits is stepped untouched.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dreamstream.modeldir import Manifest
from dreamstream.server.engine.octaves import resize
from dreamstream.server.engine.steppers import Stepper

# The smallest side of a picture a fixed-size model dreams by padding: below it the padded
# picture would be mostly mirror images of itself.
SMALLEST_PADDED_SIDE = 16


@dataclass(frozen=True)
class SizeFit:
    """The sides a model's graphs run on: min_size + k * step, or `fixed` alone (0: any)."""

    min_size: int = 1
    step: int = 1
    fixed: int = 0

    @classmethod
    def of(cls, manifest: Manifest) -> SizeFit:
        return cls(manifest.min_size, manifest.size_step, manifest.fixed_size)

    def side(self, length: int) -> int:
        """The side an octave side of `length` px is dreamed at: the smallest that runs and
        holds it (for a fixed-size model, `length` itself above its size: tiles cut it)."""
        if self.fixed:
            return max(length, self.fixed)
        least = max(length, self.min_size)
        return self.min_size + -(-(least - self.min_size) // self.step) * self.step

    def size(self, size: tuple[int, int]) -> tuple[int, int]:
        height, width = size
        return self.side(height), self.side(width)

    def smallest_picture(self) -> int:
        """The smallest picture side a dream may start from: a fixed-size model pads smaller ones."""
        return min(self.fixed, SMALLEST_PADDED_SIDE) if self.fixed else self.min_size

    def octave_floor(self, size: tuple[int, int]) -> int:
        """The smallest side an octave of a picture of `size` gets: a fixed-size model's octaves
        stop at its size, or at the picture's own if that is smaller."""
        return min(self.fixed, *size) if self.fixed else self.min_size

    def resized(self, image: np.ndarray) -> np.ndarray:
        """`image` (3xHxW) scaled to the size it is dreamed at (for what only looks at it whole:
        the ranking of channels, a guide)."""
        return resize(image, *self.size(image.shape[1:]))


class FittedSteps:
    """Runs another stepper on the octave reflect-padded to `fitted` (height, width), and crops
    its result back (see the module)."""

    def __init__(self, inner: Stepper, fitted: tuple[int, int]) -> None:
        self._inner = inner
        self._fitted = fitted
        self._crop: tuple[slice, slice] = (slice(None), slice(None))

    def start(self, image: np.ndarray) -> None:
        height, width = image.shape[1:]
        top, left = (self._fitted[0] - height) // 2, (self._fitted[1] - width) // 2
        pads = ((0, 0), (top, self._fitted[0] - height - top), (left, self._fitted[1] - width - left))
        self._crop = (slice(top, top + height), slice(left, left + width))
        self._inner.start(np.pad(image, pads, mode="reflect"))

    def step(self, shift: np.ndarray, release: bool = False) -> float:
        return self._inner.step(shift, release)

    def result(self) -> np.ndarray:
        rows, columns = self._crop
        return np.ascontiguousarray(self._inner.result()[:, rows, columns])


def fitted_stepper(inner: Stepper, size: tuple[int, int], fit: SizeFit) -> Stepper:
    """`inner` as is for an octave of `size` that fits, or padded to the size that does."""
    fitted = fit.size(size)
    return inner if fitted == tuple(size) else FittedSteps(inner, fitted)
