"""Original colours: the dream's luminance with the input picture's chroma.

neural-dream's `-original_colors`: the picture is taken to YCbCr (the JPEG
convention, ITU-R BT.601 full range), the dream's Y is kept and the input's Cb
and Cr put back, so the dream changes shapes and brightness but not colours.
"""

from __future__ import annotations

import numpy as np

_TO_YCBCR = np.array(
    [[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]],
    np.float32,
)
_TO_RGB = np.linalg.inv(_TO_YCBCR).astype(np.float32)


def to_ycbcr(image: np.ndarray) -> np.ndarray:
    """HxWx3 RGB in [0, 1] -> HxWx3 Y, Cb, Cr (Y in [0, 1], Cb and Cr centred on 0)."""
    return image @ _TO_YCBCR.T


def to_rgb(ycbcr: np.ndarray) -> np.ndarray:
    return ycbcr @ _TO_RGB.T


def keep_original_colours(dream: np.ndarray, original: np.ndarray) -> np.ndarray:
    """The dream's luminance with `original`'s chroma; both HxWx3 RGB in [0, 1], same size."""
    mixed = to_ycbcr(original)
    mixed[..., 0] = to_ycbcr(dream)[..., 0]
    return np.clip(to_rgb(mixed), 0.0, 1.0).astype(np.float32)
