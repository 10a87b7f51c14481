"""How pictures move from frame to frame (OpenCV): dense optical flow, warping along it, and
the zoom animation's affine move.

The flow carries the previous dreamed frame of a video onto the next frame before
the two are blended, so the dream moves with the scene instead of staying put on
the screen while the scene slides under it.
"""

from __future__ import annotations

import cv2
import numpy as np


def _gray(image: np.ndarray) -> np.ndarray:
    """An HxWx3 float RGB picture in [0, 1] as the 8-bit grey picture the flow reads."""
    return cv2.cvtColor(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_RGB2GRAY)


def dense_flow(previous: np.ndarray, current: np.ndarray) -> np.ndarray:
    """For each pixel of `current`, where it was in `previous`: an HxWx2 (dx, dy) array.

    Both are HxWx3 float RGB pictures in [0, 1] of the same size. Computed by
    OpenCV's DIS (dense inverse search), which is fast and robust to large moves.
    """
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return dis.calc(_gray(current), _gray(previous), None)


def warp(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """`image` (of the previous frame) moved onto the current frame along `flow` (from `dense_flow`).

    Pixels whose origin lies outside the picture take the nearest edge's value.
    """
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(
        np.ascontiguousarray(image, np.float32),
        xs + flow[..., 0],
        ys + flow[..., 1],
        interpolation=cv2.INTER_CUBIC,
        borderMode=cv2.BORDER_REPLICATE,
    )


def inside(flow: np.ndarray) -> np.ndarray:
    """An HxW mask of the pixels whose origin along `flow` lies inside the picture."""
    height, width = flow.shape[:2]
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    x, y = xs + flow[..., 0], ys + flow[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def affine(image: np.ndarray, zoom: float, degrees: float, shift: tuple[float, float]) -> np.ndarray:
    """`image` zoomed by `zoom` and turned `degrees` anticlockwise about its centre, then its view moved
    by `shift` (x, y) pixels: the content moves the other way. The border reflects the picture."""
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D(((width - 1) / 2, (height - 1) / 2), degrees, zoom)
    matrix[:, 2] -= shift
    return cv2.warpAffine(
        np.ascontiguousarray(image, np.float32),
        matrix,
        (width, height),
        flags=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REFLECT,
    )
