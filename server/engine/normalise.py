"""The direction of an ascent step, for the controls that reshape the gradient.

The fused step graph normalises the gradient by its mean absolute value; with
`lap_levels` the gradient is first normalised band by band in a Laplacian
pyramid (the original DeepDream notebook's `lap_normalize`: every scale of
detail gets the same strength, so coarse structure grows as fast as fine
texture), and with `tv_weight` the step also descends the picture's total
variation (neural-dream's TV regularisation: it smooths away high-frequency
noise). Plain numpy on 3xHxW arrays.
"""

from __future__ import annotations

import numpy as np

# As the step graphs: added to the gradient's mean absolute value before dividing by it.
NORMALISE_EPSILON = 1e-8
# The notebook's 5-tap binomial kernel, applied along each axis.
_KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0], np.float32) / 16.0
# A band this small (or smaller) is not split further: its blur would be mostly padding.
_SMALLEST_SPLIT = 4


def ascent_direction(grad: np.ndarray, image: np.ndarray, lap_levels: int, tv_weight: float) -> np.ndarray:
    """What one step adds to `image`, before `step_size`: the gradient shaped and normalised."""
    if lap_levels:
        grad = lap_normalise(grad, lap_levels)
    direction = grad / (np.abs(grad).mean() + NORMALISE_EPSILON)
    if tv_weight:
        direction = direction - tv_weight * tv_gradient(image)
    return direction


def lap_normalise(grad: np.ndarray, levels: int) -> np.ndarray:
    """`grad` split into a Laplacian pyramid of `levels` splits, each band divided by its
    root mean square, and merged back."""
    bands = []
    low = grad
    for _ in range(levels):
        if min(low.shape[1:]) <= _SMALLEST_SPLIT:
            break
        smaller = _blur(low)[:, ::2, ::2]
        bands.append(low - _expand(smaller, low.shape))
        low = smaller
    merged = _unit_rms(low)
    for band in reversed(bands):
        merged = _expand(merged, band.shape) + _unit_rms(band)
    return merged


def tv_gradient(image: np.ndarray) -> np.ndarray:
    """The gradient of the picture's total variation, sum |x[i+1] - x[i]| along both axes."""
    grad = np.zeros_like(image)
    for axis in (1, 2):
        step = np.sign(np.diff(image, axis=axis))
        after = [slice(None)] * 3
        before = [slice(None)] * 3
        after[axis], before[axis] = slice(1, None), slice(None, -1)
        grad[tuple(after)] += step
        grad[tuple(before)] -= step
    return grad


def _unit_rms(band: np.ndarray) -> np.ndarray:
    return band / max(float(np.sqrt(np.mean(np.square(band)))), NORMALISE_EPSILON)


def _blur(x: np.ndarray) -> np.ndarray:
    """The binomial blur along both spatial axes of a 3xHxW array, edges reflected."""
    for axis in (1, 2):
        padding = [(0, 0)] * 3
        padding[axis] = (2, 2)
        padded = np.pad(x, padding, mode="reflect")
        size = x.shape[axis]
        x = sum(weight * np.take(padded, range(tap, tap + size), axis=axis) for tap, weight in enumerate(_KERNEL))
    return x


def _expand(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Twice the size (cropped to `shape`): zeros between the samples, then the blur, times 4."""
    up = np.zeros(shape, x.dtype)
    up[:, ::2, ::2] = x
    return 4.0 * _blur(up)
