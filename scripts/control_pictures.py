"""The README's pictures of the dream controls: one small JPEG per control, in docs/controls/.

Each is the same photograph dreamed with the original DeepDream network
(googlenet-bvlc at inception_4c/output, seed 1) with one control on, through a
real server and the client, so the pictures show what a caller gets. Run from
the repository root with the dev install and the shared data beside the
checkout (../shared: the BVLC GoogLeNet weights and the photographs):

    .venv/bin/python scripts/control_pictures.py

It exports googlenet-bvlc into a temporary folder (a few seconds) and takes a
few minutes on two cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from dreamstream.client import DreamClient, Frame
from dreamstream.export.api import export_model
from dreamstream.server.app import DreamServer
from dreamstream.server.models import ModelRepository

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
OUT = REPO / "docs" / "controls"
PHOTO = SHARED / "images" / "coffee.png"
GUIDE = SHARED / "images" / "brick.png"
WEIGHTS = SHARED / "weights" / "bvlc_googlenet" / "bvlc_googlenet.npz"
LAYER = "inception_4c/output"
DREAM = {"model": "googlenet-bvlc", "layers": {LAYER: 1.0}, "max_size": 320, "octaves": 4, "seed": 1}
THUMBNAIL_WIDTH = 240
JPEG_QUALITY = 82

# file name -> the options of its dream (on top of DREAM); "input" is the photograph itself.
PICTURES: dict[str, dict[str, Any]] = {
    "plain": {},
    "guide": {"guide": GUIDE},
    "channels": {"channels": {LAYER: [12, 99, 140, 301]}},
    "channel-mode": {"channel_mode": "strongest", "channel_count": 8},
    "original-colors": {"original_colors": True},
    "lap-levels": {"lap_levels": 4},
    "tv-weight": {"tv_weight": 0.5},
    "octaves-above": {"octaves_above": 1},
    "repeat": {"repeat": 2},
}


def thumbnail(picture: Image.Image, name: str, folder: Path = OUT, width: int = THUMBNAIL_WIDTH) -> Path:
    """`picture` `width` px wide as folder/name.jpg."""
    picture = picture.convert("RGB")
    height = round(picture.height * width / picture.width)
    path = folder / f"{name}.jpg"
    picture.resize((width, height), Image.Resampling.LANCZOS).save(path, quality=JPEG_QUALITY)
    return path


def final_picture(client: DreamClient, options: dict[str, Any]) -> Image.Image:
    frames = [event for event in client.dream(PHOTO, **{**DREAM, **options}) if isinstance(event, Frame)]
    return Image.open(io.BytesIO(frames[-1].data))


def main() -> int:
    for needed in (PHOTO, GUIDE, WEIGHTS):
        if not needed.exists():
            print(f"{needed} is absent: the shared data folder must sit beside the checkout", file=sys.stderr)
            return 1
    OUT.mkdir(parents=True, exist_ok=True)
    with Image.open(PHOTO) as photo:
        photo.thumbnail((DREAM["max_size"],) * 2)
        print(thumbnail(photo, "input"))
    with Image.open(GUIDE) as guide:
        print(thumbnail(guide, "guide-picture"))
    with googlenet_client() as client:
        for name, options in PICTURES.items():
            path = thumbnail(final_picture(client, options), name)
            print(f"{path} ({path.stat().st_size // 1024} KB)")
    return 0


@contextlib.contextmanager
def googlenet_client() -> Iterator[DreamClient]:
    """A client of a real server of googlenet-bvlc, exported into a temporary folder."""
    # The server's event loop runs in a thread of its own; the client calls it from here.
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, loop).result()

    with tempfile.TemporaryDirectory() as models:
        export_model("googlenet-bvlc", Path(models), weights=WEIGHTS)
        server = DreamServer(ModelRepository(Path(models), device="cpu"))
        port = on_loop(server.start("127.0.0.1", 0))
        try:
            on_loop(server.load())
            with DreamClient(f"127.0.0.1:{port}") as client:
                yield client
        finally:
            on_loop(server.stop(grace=None))
            loop.call_soon_threadsafe(loop.stop)
            thread.join(10)


if __name__ == "__main__":
    sys.exit(main())
