"""Pictures in and out: read a header, decode PNG, JPEG or WebP, encode the same three.

The engine works on HxWx3 float32 RGB arrays in [0, 1]; this module converts
between those and encoded bytes. `probe` reads a picture's format and size from
its header alone, so a request is checked before its pixels cost anything. Only
the formats of `dreamstream.wire` are ever opened: Pillow reads dozens more, some
through outside programs (EPS through Ghostscript), which a server must not run
on what strangers send.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dreamstream.server.refusals import InvalidRequest
from dreamstream.wire import ImageFormat

# Refuse pictures above this many pixels before decoding them: a small file can
# announce a huge picture, and decoding it would take the server's memory.
# `serve --max-input-pixels` sets it (see engine.limits).
MAX_INPUT_PIXELS = 40_000_000

# The Pillow plugins allowed to open a picture (MPO is the JPEG of many phone cameras).
_PILLOW_FORMATS = ("PNG", "JPEG", "WEBP")
_ACCEPTED = "send PNG, JPEG or WebP bytes"

_SAVE_OPTIONS = {
    "png": {"format": "PNG", "compress_level": 1},  # fast: frames are streamed, not archived
    "jpeg": {"format": "JPEG", "quality": 92},
    "webp": {"format": "WEBP", "quality": 90},
}


# What each EXIF orientation asks for to show the picture upright (as Pillow's ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
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


def probe(data: bytes, max_pixels: int = MAX_INPUT_PIXELS) -> PictureHeader:
    """Read the size of an encoded picture from its header alone (no pixel is decoded).

    Raises ImageError for bytes that are no PNG, JPEG or WebP picture and for
    pictures of more than `max_pixels`.
    """
    try:
        with _opened(data) as picture:
            width, height = picture.size
            orientation = _orientation(picture)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise _undecodable(data, error) from error
    if width * height > max_pixels:
        raise ImageError(
            f"the picture is {width}x{height} px, too many pixels to decode "
            f"(at most {_megapixels(max_pixels)}): send a smaller picture",
            reason="IMAGE_TOO_LARGE",
        )
    if orientation in _QUARTER_TURNS:
        width, height = height, width
    return PictureHeader(width, height)


def _orientation(picture: Image.Image) -> int:
    """The EXIF orientation found in the header, without decoding a pixel.

    Not `picture.getexif()`: on a PNG without EXIF before its pixels, that decodes
    the whole picture to look for EXIF after them (100 MB for a 10000x10000 bomb).
    """
    raw = picture.info.get("exif")
    if not raw:
        return 1
    exif = Image.Exif()
    exif.load(raw)
    return exif.get(_EXIF_ORIENTATION, 1)


def _opened(data: bytes) -> Image.Image:
    """`data` opened by one of the allowed plugins (header read, no pixel decoded)."""
    with warnings.catch_warnings():
        # The server's own pixel limit replaces Pillow's decompression bomb warning.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data), formats=_PILLOW_FORMATS)


def _undecodable(data: bytes, error: Exception) -> ImageError:
    """The refusal for bytes no allowed plugin opens: another format is named as such."""
    other = _other_format(data)
    if other is not None:
        return ImageError(f"{other} pictures are not accepted: {_ACCEPTED}", reason="FORMAT_NOT_ALLOWED")
    return ImageError(f"cannot decode the image ({_plain(error)}): {_ACCEPTED}")


def _other_format(data: bytes) -> str | None:
    """The format `data` is in, when another Pillow plugin knows it by its first bytes (nothing is opened)."""
    Image.init()
    prefix = data[:16]
    for name in Image.ID:
        accept = Image.OPEN[name][1]
        if name in _PILLOW_FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return name
        except Exception:  # a plugin's prefix test that trips over short data says nothing
            continue
    return None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1_000_000:g} Mpx"


def _plain(error: Exception) -> str:
    """An exception's message without the object reprs Pillow puts in some of them."""
    text = str(error)
    if "<_io.BytesIO object" in text or not text:
        return type(error).__name__
    return text


def decode(data: bytes, max_size: int, max_pixels: int = MAX_INPUT_PIXELS) -> np.ndarray:
    """Decode `data` into RGB in [0, 1], EXIF orientation applied, longer side at most `max_size`.

    Transparent pictures are put on white. Raises ImageError for anything that is no
    PNG, JPEG or WebP picture and for pictures of more than `max_pixels`.
    """
    probe(data, max_pixels)  # refuses what is not a picture, or too large, before decoding a pixel
    try:
        with _opened(data) as opened:
            orientation = _orientation(opened)  # read before decoding, as probe reads it: the planned size holds
            size = fit(opened.width, opened.height, max_size)
            # A JPEG decodes straight at 1/2 to 1/8 of its size when that still gives
            # max_size: less memory and time for a large photograph.
            opened.draft("RGB", size)
            opened.load()
            # Brought down to size before anything else, so that at most one full-size
            # copy (the decoded one) is ever held.
            picture = _with_alpha_or_rgb(opened)
            if picture.size != size:
                picture = picture.resize(size, Image.Resampling.LANCZOS)
            if orientation in _UPRIGHT:
                picture = picture.transpose(_UPRIGHT[orientation])
            picture = _on_white(picture)
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as error:
        raise _undecodable(data, error) from error
    return np.asarray(picture, np.float32) / 255.0


def fit(width: int, height: int, max_size: int) -> tuple[int, int]:
    """(width, height) scaled so that the longer side is at most `max_size`."""
    scale = min(1.0, max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def _with_alpha_or_rgb(picture: Image.Image) -> Image.Image:
    """RGBA for pictures with transparency, RGB for the others (resampling needs either)."""
    transparent = picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info
    mode = "RGBA" if transparent else "RGB"
    return picture if picture.mode == mode else picture.convert(mode)


def _on_white(picture: Image.Image) -> Image.Image:
    if picture.mode != "RGBA":
        return picture
    white = Image.new("RGBA", picture.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, picture).convert("RGB")


def to_pil(image: np.ndarray) -> Image.Image:
    """An HxWx3 float picture in [0, 1] as an 8-bit RGB Pillow image."""
    return Image.fromarray(np.clip(image * 255.0 + 0.5, 0, 255).astype(np.uint8))


def encode(image: np.ndarray, fmt: ImageFormat) -> bytes:
    """Encode an HxWx3 float picture in [0, 1] in one of the wire's image formats."""
    buffer = io.BytesIO()
    to_pil(image).save(buffer, **_SAVE_OPTIONS[fmt.name])
    return buffer.getvalue()
