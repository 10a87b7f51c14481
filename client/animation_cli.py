"""`dreamstream video` and `dreamstream zoom`: animations, thin over the client's `dream_video` and `zoom`.

Video files are read and written with PyAV (the `video` extra), loaded only when
a command needs them: a zoom written as a GIF needs the light install alone.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

from PIL import Image

from dreamstream.client.animation import AnimationFrame
from dreamstream.client.cli import (
    add_dream_options,
    client_for,
    dream_options,
    reports_server_errors,
    server_argument,
)
from dreamstream.client.errors import DreamstreamError
from dreamstream.client.progress import clock
from dreamstream.cmdline import CommandError, non_negative_int, positive_int

_BAR_WIDTH = 24
_DEFAULT_ZOOM_FPS = 12.0
_FRAMES_DIR_NAME = "frame-{index:06d}.png"


def add_animation_parsers(subparsers: argparse._SubParsersAction) -> None:
    _add_video_parser(subparsers)
    _add_zoom_parser(subparsers)


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    server_argument(parser)
    add_dream_options(parser)
    parser.add_argument("--frames-dir", type=Path, metavar="DIR", help="also save each dreamed frame here (PNG)")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def _add_video_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "video",
        help="dream a video, frame by frame, with a dreamstream server",
        description=(
            "Dream every frame of INPUT and write OUT with the same frame rate and sound. Each frame starts "
            "from the input frame blended with the previous dreamed frame, so the dream stays put."
        ),
    )
    parser.add_argument("input", type=Path, metavar="INPUT", help="video to dream on")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="result (.mp4, .mov, .mkv)")
    parser.add_argument(
        "--blend",
        default="0",
        metavar="F|loop|random",
        help="share of the previous dreamed frame in each frame's start, 0 to 0.95 (0: every frame "
        "alone, the default); 'loop' moves it between 0 and 0.5 and back, 'random' draws it in [0, 0.5]",
    )
    parser.add_argument(
        "--flow", action="store_true", help="move the previous dream with the scene (optical flow) before blending"
    )
    parser.add_argument(
        "--layers-loop", metavar="A,B,C", help="dream frame i on the i-th of these layers alone, round and round"
    )
    parser.add_argument("--start-frame", type=non_negative_int, default=0, metavar="N", help="first frame, from 0")
    parser.add_argument("--end-frame", type=positive_int, metavar="N", help="stop before this frame")
    parser.add_argument("--window", type=positive_int, metavar="N", help="frames in flight (default 4)")
    _common_arguments(parser)
    parser.set_defaults(func=run_video)


def _add_zoom_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "zoom",
        help="a zoom animation: dream, zoom into the dream, dream again",
        description="Dream on IMAGE, then again and again on the last dream zoomed, turned and moved.",
    )
    parser.add_argument("input", type=Path, metavar="IMAGE", help="picture to start from")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT", help="result (.gif, .mp4, ...)")
    parser.add_argument("--frames", type=positive_int, required=True, metavar="N", help="frames to make")
    parser.add_argument("--zoom", type=float, default=1.05, metavar="S", help="scale per frame (default 1.05)")
    parser.add_argument("--rotate", type=float, default=0.0, metavar="DEG", help="degrees per frame, anticlockwise")
    parser.add_argument("--shift", default="0,0", metavar="X,Y", help="pixels the view moves per frame")
    parser.add_argument("--fps", type=float, default=_DEFAULT_ZOOM_FPS, metavar="N", help="frames per second")
    _common_arguments(parser)
    parser.set_defaults(func=run_zoom)


def _check_output(path: Path) -> None:
    """The output can be written: checked before the animation costs anything."""
    if path.is_dir():
        raise CommandError(f"-o {path} is a folder: give a file name")
    if not path.parent.is_dir():
        raise CommandError(f"-o {path}: folder {path.parent} does not exist: create it first")


def parse_blend(text: str) -> float | str:
    """ "0.5" -> 0.5; "loop" and "random" as they are."""
    if text in ("loop", "random"):
        return text
    try:
        return float(text)
    except ValueError:
        raise CommandError(f"--blend {text}: give a number from 0 to 0.95, loop or random") from None


def parse_shift(text: str) -> tuple[float, float]:
    """ "4,-2" -> (4.0, -2.0)."""
    try:
        x, y = (float(part) for part in text.split(","))
    except ValueError:
        raise CommandError(f"--shift {text}: give X,Y in pixels, e.g. 4,0") from None
    return x, y


class FramesBar:
    """Follows the frames of an animation on `stream` (stderr): a bar, frames done and time left.

    Redrawn in place on a terminal; elsewhere one line per frame.
    """

    def __init__(self, total: int | None, stream: TextIO | None = None) -> None:
        self._stream = stream or sys.stderr
        self._live = self._stream.isatty()
        self._total = total
        self._began = time.monotonic()

    def frame(self, done: int) -> None:
        elapsed = time.monotonic() - self._began
        line = f"frame {done}"
        if self._total:
            filled = round(done / self._total * _BAR_WIDTH)
            left = elapsed * (self._total - done) / done
            line = (
                f"frame {done}/{self._total} [{'#' * filled}{'-' * (_BAR_WIDTH - filled)}] "
                f"{done / self._total:4.0%}  {clock(elapsed)} elapsed, {clock(left)} left"
            )
        if self._live:
            self._stream.write(f"\r{line}\x1b[K")
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def close(self) -> None:
        if self._live:
            self._stream.write("\n")


def _follow(frames: Iterator[AnimationFrame], total: int | None, args: argparse.Namespace) -> Iterator[AnimationFrame]:
    """`frames`, each saved in --frames-dir and counted on the progress bar as it arrives."""
    if args.frames_dir:
        args.frames_dir.mkdir(parents=True, exist_ok=True)
    bar = None if args.quiet else FramesBar(total)
    try:
        for done, frame in enumerate(frames, start=1):
            if args.frames_dir:
                frame.image().save(args.frames_dir / _FRAMES_DIR_NAME.format(index=frame.index))
            if bar:
                bar.frame(done)
            yield frame
    finally:
        if bar:
            bar.close()


@reports_server_errors
def run_video(args: argparse.Namespace) -> int:
    from dreamstream.client import videofile  # PyAV: the video extra

    if not args.input.is_file():
        raise CommandError(f"{args.input} is not a file")
    if args.output.suffix.lower() not in videofile.VIDEO_SUFFIXES:
        raise CommandError(f"cannot write a video to {args.output}: name it {', '.join(videofile.VIDEO_SUFFIXES)}")
    _check_output(args.output)
    if args.end_frame is not None and args.end_frame <= args.start_frame:
        raise CommandError(f"--end-frame {args.end_frame} is not after --start-frame {args.start_frame}")
    blend = parse_blend(args.blend)
    schedule = [name.strip() for name in args.layers_loop.split(",") if name.strip()] if args.layers_loop else []
    try:
        info = videofile.probe(args.input)
    except videofile.VideoFileError as error:
        raise CommandError(str(error)) from None
    end = info.frames if args.end_frame is None else min(args.end_frame, info.frames)
    options = dream_options(args, "png")
    extra = {"window": args.window} if args.window else {}
    inputs = videofile.read_video(args.input, args.start_frame, args.end_frame)
    writer = videofile.VideoWriter(
        args.output,
        info.fps,
        audio_from=args.input,
        audio_start=float(args.start_frame / info.fps),
        audio_end=float(args.end_frame / info.fps) if args.end_frame is not None else None,
    )
    with writer, client_for(args) as client:
        dreamed = client.dream_video(
            inputs, blend=blend, flow=args.flow, layer_schedule=schedule, timeout=args.timeout, **extra, **options
        )
        for frame in _follow(dreamed, max(0, end - args.start_frame), args):
            writer.write(frame.image())
    if writer.frames == 0:
        raise DreamstreamError("the video has no frame in the range asked for")
    if not args.quiet:
        print(f"wrote {args.output} ({writer.frames} frames at {float(info.fps):g} fps)", file=sys.stderr)
    return 0


@reports_server_errors
def run_zoom(args: argparse.Namespace) -> int:
    if not args.input.is_file():
        raise CommandError(f"{args.input} is not a file")
    gif = args.output.suffix.lower() == ".gif"
    if not gif:
        from dreamstream.client import videofile  # PyAV: the video extra

        if args.output.suffix.lower() not in videofile.VIDEO_SUFFIXES:
            raise CommandError(
                f"cannot write an animation to {args.output}: name it .gif or {', '.join(videofile.VIDEO_SUFFIXES)}"
            )
    if args.fps <= 0:
        raise CommandError(f"--fps {args.fps}: give a number of frames per second above 0")
    _check_output(args.output)
    shift = parse_shift(args.shift)
    options = dream_options(args, "png")
    pictures: list[Image.Image] = []
    with client_for(args) as client:
        made = client.zoom(
            args.input,
            frames=args.frames,
            zoom=args.zoom,
            rotate=args.rotate,
            shift=shift,
            timeout=args.timeout,
            **options,
        )
        pictures = [frame.image().convert("RGB") for frame in _follow(made, args.frames, args)]
    if gif:
        pictures[0].save(
            args.output,
            format="GIF",
            save_all=True,
            append_images=pictures[1:],
            duration=round(1000 / args.fps),
            loop=0,
        )
    else:
        from fractions import Fraction

        with videofile.VideoWriter(args.output, Fraction(args.fps).limit_denominator(1001)) as writer:
            for picture in pictures:
                writer.write(picture)
    if not args.quiet:
        print(f"wrote {args.output} ({len(pictures)} frames)", file=sys.stderr)
    return 0
