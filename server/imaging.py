"""Pictures in and out: read a header, decode what Pillow reads, encode PNG, JPEG or WebP.

The engine works on HxWx3 float32 RGB arrays in [0, 1]; this module converts
between those and encoded bytes. `probe` reads a picture's size from its header
alone, so a request is checked before its pixels cost anything.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from dreamstream.server.refusals import InvalidRequest
from dreamstream.wire import ImageFormat

# Refuse pictures above this many pixels before decoding them: a small file can
# announce a huge picture, and decoding it would take the server's memory.
MAX_INPUT_PIXELS = 100_000_000

_SAVE_OPTIONS = {
    "png": {"format": "PNG", "compress_level": 1},  # fast: frames are streamed, not archived
    "jpeg": {"format": "JPEG", "quality": 92},
    "webp": {"format": "WEBP", "quality": 90},
}


# EXIF orientations that turn the picture a quarter turn, swapping width and height.
_QUARTER_TURNS = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112


class ImageError(InvalidRequest):
    """Bytes that are not a picture this server can dream on."""

    reason = "BAD_IMAGE"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message, reason=reason, field="image")


@dataclass(frozen=True)
class PictureHeader:
    """What a picture's header says, before any pixel is decoded."""

    width: int  # after the EXIF orientation is applied
    height: int


def probe(data: bytes) -> PictureHeader:
    """Read the size of an encoded picture from its header alone (no pixel is decoded).

    Raises ImageError for bytes Pillow cannot identify and for pictures of more than
    MAX_INPUT_PIXELS.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as picture:
                width, height = picture.size
                orientation = picture.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise ImageError(f"cannot decode the image ({_plain(error)}): send PNG, JPEG or WebP bytes") from error
    if width * height > MAX_INPUT_PIXELS:
        raise ImageError(
            f"the picture is {width}x{height} px, too many pixels to decode "
            f"(at most {MAX_INPUT_PIXELS // 1_000_000} Mpx): send a smaller picture",
            reason="IMAGE_TOO_LARGE",
        )
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return PictureHeader(width, height)


def _plain(error: Exception) -> str:
    """An exception's message without the object reprs Pillow puts in some of them."""
    text = str(error)
    if "<_io.BytesIO object" in text or not text:
        return type(error).__name__
    return text


def decode(data: bytes, max_size: int) -> np.ndarray:
    """Decode `data` into RGB in [0, 1], EXIF orientation applied, longer side at most `max_size`.

    Transparent pictures are put on white. Raises ImageError for anything Pillow
    cannot read and for pictures of more than MAX_INPUT_PIXELS.
    """
    probe(data)  # refuses what is not a picture, or too large, before decoding a pixel
    try:
        with warnings.catch_warnings():
            # probe's own limit replaces Pillow's decompression bomb warning.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            picture = Image.open(io.BytesIO(data))
            picture = ImageOps.exif_transpose(picture)
            picture = _to_rgb(picture)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise ImageError(f"cannot decode the image ({_plain(error)}): send PNG, JPEG or WebP bytes") from error
    if max(picture.size) > max_size:
        picture = picture.resize(fit(picture.width, picture.height, max_size), Image.Resampling.LANCZOS)
    return np.asarray(picture, np.float32) / 255.0


def fit(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most `max_size`."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _to_rgb(picture: Image.Image) -> Image.Image:
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return picture.convert("RGB")


def to_pil(image: np.ndarray) -> Image.Image:
    """An HxWx3 float picture in [0, 1] as an 8-bit RGB Pillow image."""
    return Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))


def encode(image: np.ndarray, fmt: ImageFormat) -> bytes:
    """Encode an HxWx3 float picture in [0, 1] in one of the wire's image formats."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, **_SAVE_OPTIONS[fmt.name])
    return buffer.getvalue()
