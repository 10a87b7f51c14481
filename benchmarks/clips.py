"""Clips made from the real photographs: a camera moving over a picture, with a sine tone.

The flicker benchmark and the video tests make the clips they need; nothing
large is kept in the repository.
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
from PIL import Image

AUDIO_RATE = 22050
TONE_HZ = 440.0


def camera_frames(photo: Path, frames: int, size: tuple[int, int], step: tuple[int, int] = (3, 1)) -> list[Image.Image]:
    """`frames` views of `size` (width, height) over `photo`, the camera moving `step` px a frame
    (in the frames' pixels) and zooming in a little."""
    width, height = size
    with Image.open(photo) as picture:
        # The photograph scaled so that the whole move stays inside it.
        scale = max(
            (width + abs(step[0]) * frames) * 1.2 / picture.width,
            (height + abs(step[1]) * frames) * 1.2 / picture.height,
        )
        picture = picture.convert("RGB").resize((round(picture.width * scale), round(picture.height * scale)))
    views = []
    for index in range(frames):
        left, top = 4 + index * step[0], 4 + index * step[1]
        inset = index * 0.3  # a slow zoom
        box = (left + inset, top + inset * height / width, left + width - inset, top + height - inset * height / width)
        views.append(picture.resize((width, height), Image.Resampling.BICUBIC, box=box))
    return views


def camera_clip(
    path: Path, photo: Path, frames: int = 6, size: tuple[int, int] = (64, 48), fps: int = 12, audio: bool = True
) -> Path:
    """An H.264 clip of `camera_frames` at `fps`, with an AAC sine tone as long as the video."""
    with av.open(str(path), mode="w") as container:
        video = container.add_stream("libx264", rate=fps)
        video.width, video.height = size
        video.pix_fmt = "yuv420p"
        video.options = {"crf": "12"}
        tone = None
        if audio:
            tone = container.add_stream("aac", rate=AUDIO_RATE)
            tone.layout = "mono"
        for view in camera_frames(photo, frames, size):
            container.mux(video.encode(av.VideoFrame.from_ndarray(np.asarray(view), format="rgb24")))
        container.mux(video.encode(None))
        if tone is not None:
            samples = np.arange(round(AUDIO_RATE * frames / fps)) / AUDIO_RATE
            wave = (0.3 * np.sin(2 * np.pi * TONE_HZ * samples)).astype(np.float32)[None]
            frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
            frame.sample_rate = AUDIO_RATE
            container.mux(tone.encode(frame))
            container.mux(tone.encode(None))
    return path


def audio_seconds(path: Path) -> float:
    """Seconds of sound in `path` (0 without an audio stream), from its decoded samples."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return 0.0
        stream = container.streams.audio[0]
        return sum(frame.samples for frame in container.decode(stream)) / stream.rate
