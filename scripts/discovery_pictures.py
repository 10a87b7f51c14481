"""The README's pictures of tiling and the layer sweep, in docs/discovery/, and the classes of the cat.

Through a real server of googlenet-bvlc and the client, as `control_pictures.py`
(whose server it borrows): a dream in tiles, a contact sheet of a sweep over four
layers, and what the network sees in the cat photograph. Run from the repository
root with the dev install and ../shared beside the checkout:

    .venv/bin/python scripts/discovery_pictures.py

A few minutes on two cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

from control_pictures import JPEG_QUALITY, PHOTO, SHARED, WEIGHTS, final_picture, googlenet_client, thumbnail
from PIL import Image

from dreamstream.client.contact_sheet import contact_sheet

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "docs" / "discovery"
CAT = SHARED / "images" / "chelsea.png"
# The photograph at 640 px in tiles of 256: the dream and its seams (there are none to see).
TILED = {"max_size": 640, "tile_size": 256}
SWEEP_LAYERS = ["conv2/3x3", "inception_3b/output", "inception_4c/output", "inception_5b/output"]
SHEET_TILE = 160


def main() -> int:
    for needed in (PHOTO, CAT, WEIGHTS):
        if not needed.exists():
            print(f"{needed} is absent: the shared data folder must sit beside the checkout", file=sys.stderr)
            return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with googlenet_client() as client:
        path = thumbnail(final_picture(client, TILED), "tiled", OUT, width=320)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        pictures = [("original", Image.open(PHOTO))]
        for layer in SWEEP_LAYERS:
            pictures.append((layer, final_picture(client, {"max_size": 256, "layers": {layer: 1.0}})))
        path = OUT / "sweep.jpg"
        contact_sheet(pictures, SHEET_TILE).save(path, quality=JPEG_QUALITY)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        path = thumbnail(Image.open(CAT), "cat", OUT, width=160)
        print(f"{path} ({path.stat().st_size // 1024} KB)")
        for cls in client.classify(CAT, model="googlenet-bvlc"):
            print(f"{cls.probability:7.2%}  {cls.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
