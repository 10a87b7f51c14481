"""A contact sheet: pictures side by side on a grid, each with its label underneath.

For a layer sweep (`dreamstream sweep`): one tile per layer, so that a person finds
the layer they want at a glance. Pillow only, with its default font.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)
MARGIN = 6  # pixels around and between tiles
LABEL_HEIGHT = 16  # the strip under each tile for its label (Pillow's default font is 11 px)


def contact_sheet(pictures: Sequence[tuple[str, Image.Image]], tile: int = 256) -> Image.Image:
    """`pictures` (label, picture) on a grid of tiles whose longer side is `tile`, labelled underneath,
    in order, left to right then top to bottom; the grid is about square."""
    if not pictures:
        raise ValueError("a contact sheet needs at least one picture")
    thumbnails = [(label, _thumbnail(picture, tile)) for label, picture in pictures]
    width = max(thumbnail.width for _, thumbnail in thumbnails)
    height = max(thumbnail.height for _, thumbnail in thumbnails)
    columns = math.ceil(math.sqrt(len(thumbnails)))
    rows = math.ceil(len(thumbnails) / columns)
    cell_width, cell_height = width + MARGIN, height + LABEL_HEIGHT + MARGIN
    sheet = Image.new("RGB", (columns * cell_width + MARGIN, rows * cell_height + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for number, (label, thumbnail) in enumerate(thumbnails):
        left = MARGIN + (number % columns) * cell_width
        top = MARGIN + (number // columns) * cell_height
        sheet.paste(thumbnail, (left + (width - thumbnail.width) // 2, top + (height - thumbnail.height) // 2))
        draw.text((left, top + height + 2), _fitted(draw, label, font, width), fill=INK, font=font)
    return sheet


def _thumbnail(picture: Image.Image, tile: int) -> Image.Image:
    copy = picture.convert("RGB")
    copy.thumbnail((tile, tile), Image.Resampling.LANCZOS)
    return copy


def _fitted(draw: ImageDraw.ImageDraw, label: str, font: ImageFont.ImageFont, width: int) -> str:
    """`label`, cut short with an ellipsis where it is wider than the tile."""
    if draw.textlength(label, font=font) <= width:
        return label
    while label and draw.textlength(label + "...", font=font) > width:
        label = label[:-1]
    return label + "..."
