"""The octave schedule and the resizing between octaves: plain numpy and Pillow.

Kept apart from the ONNX Runtime parts of the engine so that anything else that
follows the same algorithm, the PyTorch reference of the benchmarks say, uses the
very same schedule and resampling.
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def octave_sizes(
    height: int, width: int, octaves: int, scale: float, min_size: int, above: int = 0
) -> tuple[tuple[int, int], ...]:
    """(height, width) of each octave, smallest first: `octaves` of them ending at (height, width),
    then `above` more above the picture's size (the TensorFlow tutorial's octave range).

    Each octave is `scale` times smaller than the next; none has a side below
    `min_size` (those octaves stay at the smallest size the model accepts).
    """
    sizes = []
    for k in range(octaves - 1, -above - 1, -1):
        factor = max(scale**-k, min_size / min(height, width))
        sizes.append((max(min_size, round(height * factor)), max(min_size, round(width * factor))))
    return tuple(sizes)


def resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """A 3xHxW float picture (or detail, which may be negative) resized to height x width."""
    if image.shape[1:] == (height, width):
        return image
    # Pillow's float ("F") mode resamples with antialiasing when shrinking.
    return np.stack(
        [np.asarray(Image.fromarray(channel).resize((width, height), Image.Resampling.BICUBIC)) for channel in image]
    )
