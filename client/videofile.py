"""Video files in and out with PyAV (FFmpeg's libraries, from the `video` extra).

`read_video` gives a file's frames as pictures, with its frame rate and
length; `VideoWriter` writes pictures as an H.264 video at a given frame rate
and carries over the audio of another file (re-encoded as AAC, trimmed to the
frames kept), so a dreamed film keeps its timing and its sound.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image

# Containers `VideoWriter` writes: H.264 video and AAC audio go in each of them.
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mov", ".mkv")
_VIDEO_CODEC = "libx264"
_AUDIO_CODEC = "aac"
_CRF = "18"  # visually lossless: the dream's fine texture survives


class VideoFileError(Exception):
    """A file that cannot be read or written as a video; the message says what to change."""


@dataclass(frozen=True)
class VideoInfo:
    """What a video file holds."""

    fps: Fraction
    frames: int  # as the container counts them (or duration x rate when it does not)
    width: int
    height: int
    has_audio: bool


def probe(path: Path) -> VideoInfo:
    """The frame rate, length, size and whether there is sound, read from the container."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        frames = stream.frames
        if not frames and stream.duration is not None and stream.time_base is not None:
            frames = round(stream.duration * stream.time_base * stream.average_rate)
        return VideoInfo(
            fps=Fraction(stream.average_rate),
            frames=int(frames),
            width=stream.codec_context.width,
            height=stream.codec_context.height,
            has_audio=bool(container.streams.audio),
        )


def read_video(path: Path, start: int = 0, end: int | None = None) -> Iterator[Image.Image]:
    """Frames `start` (from 0) up to but not including `end` of `path`, as RGB pictures."""
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        for index, frame in enumerate(container.decode(stream)):
            if end is not None and index >= end:
                return
            if index >= start:
                yield frame.to_image()


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.FFmpegError, OSError) as error:
        raise VideoFileError(f"cannot read {path} as a video ({error})") from None


def _video_stream(container: av.container.InputContainer, path: Path) -> av.video.stream.VideoStream:
    if not container.streams.video:
        raise VideoFileError(f"{path} has no video stream")
    return container.streams.video[0]


class VideoWriter:
    """Writes pictures as an H.264 video at `fps`; on `close`, adds the audio of `audio_from`
    between `audio_start` and `audio_end` seconds (all of it if None)."""

    def __init__(
        self,
        path: Path,
        fps: Fraction,
        *,
        audio_from: Path | None = None,
        audio_start: float = 0.0,
        audio_end: float | None = None,
    ) -> None:
        if path.suffix.lower() not in VIDEO_SUFFIXES:
            raise VideoFileError(f"cannot write a video to {path}: name it {', '.join(VIDEO_SUFFIXES)}")
        self.path = path
        self._container = av.open(str(path), mode="w")
        self._stream = self._container.add_stream(_VIDEO_CODEC, rate=fps)
        self._stream.pix_fmt = "yuv420p"
        self._stream.options = {"crf": _CRF}
        self._size: tuple[int, int] | None = None
        self._audio_span = (audio_start, audio_end)
        self._audio_source: av.container.InputContainer | None = None
        self._audio_stream = None
        # Every stream is added before the first packet is written (the header names them).
        if audio_from is not None:
            source = _open(audio_from)
            if source.streams.audio:
                original = source.streams.audio[0]
                self._audio_source = source
                self._audio_stream = self._container.add_stream(_AUDIO_CODEC, rate=original.rate)
                self._audio_stream.layout = original.layout
            else:
                source.close()
        self.frames = 0

    def write(self, picture: Image.Image) -> None:
        """Add one frame; the first one sets the video's size (every side even, as 4:2:0 needs)."""
        if self._size is None:
            self._size = (picture.width - picture.width % 2, picture.height - picture.height % 2)
            self._stream.width, self._stream.height = self._size
        if picture.size != self._size:
            picture = picture.crop((0, 0, *self._size))
        frame = av.VideoFrame.from_ndarray(np.asarray(picture.convert("RGB")), format="rgb24")
        self._container.mux(self._stream.encode(frame))
        self.frames += 1

    def close(self) -> None:
        """Flush the encoder, add the audio, and finish the file."""
        try:
            self._container.mux(self._stream.encode(None))
            if self._audio_source is not None:
                self._copy_audio()
        finally:
            self._container.close()
            if self._audio_source is not None:
                self._audio_source.close()

    def _copy_audio(self) -> None:
        start, end = self._audio_span
        for frame in self._audio_source.decode(self._audio_source.streams.audio[0]):
            if frame.time is not None and (frame.time < start or (end is not None and frame.time >= end)):
                continue
            frame.pts = None  # the encoder numbers the kept samples from 0
            self._container.mux(self._audio_stream.encode(frame))
        self._container.mux(self._audio_stream.encode(None))

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
