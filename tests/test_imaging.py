"""Decoding what users send and encoding what the server streams back."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dreamstream.server import imaging
from dreamstream.wire import format_named


def encoded(picture: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def test_the_exif_orientation_is_applied() -> None:
    # A camera's portrait shot: stored landscape, tagged "rotate 90 degrees clockwise".
    stored = Image.new("RGB", (60, 40), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 60, 10))  # a blue band at the top of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 CW to display
    decoded = imaging.decode(encoded(stored, "JPEG", exif=exif, quality=95), max_size=1024)
    assert decoded.shape == (60, 40, 3)
    # After the rotation the blue band is the right-hand column.
    assert decoded[:, -5:, 2].mean() > 0.6 and decoded[:, :5, 2].mean() < 0.3


def test_greyscale_and_palette_pictures_become_rgb() -> None:
    for mode in ("L", "P", "I;16", "CMYK"):
        picture = Image.new(mode, (20, 10))
        fmt = "JPEG" if mode == "CMYK" else "PNG"
        assert imaging.decode(encoded(picture, fmt), 1024).shape == (10, 20, 3)


def test_transparent_pixels_come_out_white() -> None:
    picture = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert imaging.decode(encoded(picture), 1024).min() == pytest.approx(1.0)


def test_the_longer_side_is_brought_down_to_max_size_keeping_the_aspect() -> None:
    decoded = imaging.decode(encoded(Image.new("RGB", (600, 400))), max_size=150)
    assert decoded.shape == (100, 150, 3)
    small = imaging.decode(encoded(Image.new("RGB", (60, 40))), max_size=150)
    assert small.shape == (40, 60, 3)  # never enlarged


def test_bytes_that_are_not_a_picture_are_refused_with_what_to_send() -> None:
    with pytest.raises(imaging.ImageError, match="send PNG, JPEG or WebP"):
        imaging.decode(b"\x89PNG but not really", 1024)


def test_a_picture_announcing_too_many_pixels_is_refused_before_decoding() -> None:
    # 1-bit and blank: a few kB on the wire, 108 Mpx once decoded.
    huge = encoded(Image.new("1", (12_000, 9_000)))
    assert len(huge) < 1_000_000
    with pytest.raises(imaging.ImageError, match="too many pixels"):
        imaging.decode(huge, 1024)


def test_the_header_gives_the_size_after_the_exif_rotation_without_decoding() -> None:
    # 1-bit and blank: a few kB on the wire; probe must not decode its 108 Mpx to say so.
    huge = encoded(Image.new("1", (12_000, 9_000)))
    with pytest.raises(imaging.ImageError, match="12000x9000 px, too many pixels") as refused:
        imaging.probe(huge)
    assert refused.value.reason == "IMAGE_TOO_LARGE" and refused.value.field == "image"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    header = imaging.probe(encoded(Image.new("RGB", (60, 40)), "JPEG", exif=exif))
    assert (header.width, header.height) == (40, 60)


def test_an_undecodable_picture_names_no_python_object() -> None:
    with pytest.raises(imaging.ImageError) as refused:
        imaging.probe(b"not a picture at all")
    assert "object at 0x" not in str(refused.value)
    assert "cannot decode the image" in str(refused.value)


@pytest.mark.parametrize(("fmt", "pillow_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_encoding_round_trips_in_each_format(fmt: str, pillow_format: str) -> None:
    image = np.random.default_rng(0).random((24, 32, 3)).astype(np.float32)
    with Image.open(io.BytesIO(imaging.encode(image, format_named(fmt)))) as picture:
        assert picture.format == pillow_format and picture.size == (32, 24)
        if fmt == "png":  # lossless: the same 8-bit values
            np.testing.assert_allclose(np.asarray(picture) / 255.0, image, atol=0.5 / 255 + 1e-6)


def test_a_rotated_picture_scaled_down_keeps_its_rotation_and_aspect() -> None:
    # Scaled down before it is turned, so that only one full-size copy is ever held.
    stored = Image.new("RGB", (600, 400), (200, 30, 30))
    stored.paste((30, 30, 200), (0, 0, 600, 100))  # a blue band at the top of the stored image
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = imaging.decode(encoded(stored, "JPEG", exif=exif, quality=95), max_size=150)
    assert decoded.shape == (150, 100, 3)
    assert decoded[:, -10:, 2].mean() > 0.6 and decoded[:, :10, 2].mean() < 0.3


def test_other_formats_are_named_and_never_opened() -> None:
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    with pytest.raises(imaging.ImageError, match="EPS pictures are not accepted") as refused:
        imaging.probe(eps)
    assert refused.value.reason == "FORMAT_NOT_ALLOWED"
    with pytest.raises(imaging.ImageError, match="GIF pictures are not accepted"):
        imaging.decode(encoded(Image.new("RGB", (8, 8)), "GIF"), 64)
