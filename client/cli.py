"""The `dreamstream` command: dream, models, and the commands of the other extras.

`dream` and `models` need only the light client install. `serve` (server extra)
and `export` / `layers` (export extra) live in their own packages and are
imported only when one of them runs, so the client starts fast and a missing
extra is named instead of failing with a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from dreamstream.client.client import DreamClient, DreamOptions
from dreamstream.client.errors import DreamstreamError
from dreamstream.client.events import Frame, Progress
from dreamstream.client.progress import ProgressBar
from dreamstream.client.tables import layer_table

DEFAULT_SERVER = "localhost:50051"
_FORMAT_BY_SUFFIX = {".png": "png", ".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}
# Statuses that say the user has something to change; others are the server's fault.
_USER_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
}
_GIF_FRAME_MS = 600
_GIF_LAST_FRAME_MS = 2000


class CommandError(Exception):
    """A mistake the user can fix: printed as one line, exit status 2."""


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


@dataclass(frozen=True)
class _Extra:
    """Commands registered by a module that needs an optional extra."""

    module: str
    hook: str  # module function taking the subparsers action
    install: str  # what to install when the module's imports are missing
    commands: dict[str, str]  # command -> one-line help, for `dreamstream --help`

    def register(self, subparsers: argparse._SubParsersAction, command: str) -> None:
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise self.missing(command, error) from error
        getattr(module, self.hook)(subparsers)

    def missing(self, command: str, error: ImportError) -> Exception:
        """The error to report when `command` hit `error` importing its dependencies."""
        if not error.name or error.name.startswith("dreamstream"):
            return error  # our own module is broken: a bug, not a missing extra
        return CommandError(f"`dreamstream {command}` needs {self.install} (no module {error.name})")


_EXTRAS = (
    _Extra(
        module="dreamstream.export.cli",
        hook="add_export_parsers",
        install="the export extra: pip install 'dreamstream[export]'",
        commands={
            "export": "export a backbone into a model directory",
            "layers": "list the layers of an exported model",
        },
    ),
    _Extra(
        module="dreamstream.server.cli",
        hook="add_serve_parser",
        install="the server extra: pip install 'dreamstream[server]' ('dreamstream[gpu]' for CUDA)",
        commands={"serve": "run the dreamstream gRPC server"},
    ),
)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The full parser for `command`: only that command's extra is imported."""
    parser = argparse.ArgumentParser(
        prog="dreamstream", description="DeepDream over gRPC: dream with a server, or run one."
    )
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    _add_dream_parser(subparsers)
    _add_models_parser(subparsers)
    for extra in _EXTRAS:
        if command in extra.commands:
            extra.register(subparsers, command)
        else:
            # Listed in --help without importing anything heavy.
            for name, help_text in extra.commands.items():
                subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((arg for arg in argv if not arg.startswith("-")), None)
    try:
        parser = build_parser(command)
        args = parser.parse_args(argv)
        if not hasattr(args, "func"):
            parser.print_help(sys.stderr)
            return 2
        return _run(args, command)
    except CommandError as error:
        print(f"dreamstream: error: {error}", file=sys.stderr)
        return 2
    except DreamstreamError as error:
        print(f"dreamstream: {error}", file=sys.stderr)
        return 2 if error.code in _USER_STATUSES else 1
    except KeyboardInterrupt:
        print("dreamstream: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, command: str) -> int:
    try:
        return args.func(args)
    except ImportError as error:
        # An extra's command may import its heavy dependencies only once it runs.
        extra = next((extra for extra in _EXTRAS if command in extra.commands), None)
        if extra is None:
            raise
        raise extra.missing(command, error) from error


def _server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("DREAMSTREAM_SERVER", DEFAULT_SERVER),
        metavar="HOST:PORT",
        help=f"the dreamstream server (default: $DREAMSTREAM_SERVER or {DEFAULT_SERVER})",
    )


def _add_dream_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dream",
        help="dream on a picture with a dreamstream server",
        description="Dream on INPUT and write the result to OUT. Options left out take the server's defaults.",
    )
    parser.add_argument("input", nargs="?", type=Path, metavar="INPUT", help="picture to dream on")
    parser.add_argument(
        "-o",
        "--output",
        type=Path,
        required=True,
        metavar="OUT",
        help="result (.png, .jpg or .webp)",
    )
    _server_argument(parser)
    parser.add_argument("--noise", metavar="WxH", help="dream on seeded noise of this size instead of INPUT")
    parser.add_argument("--model", help="model to dream with (see `dreamstream models`)")
    parser.add_argument(
        "--layers",
        metavar="NAME:WEIGHT,...",
        help="layers to dream on, with weights (default: the model's default layers)",
    )
    parser.add_argument("--octaves", type=positive_int, metavar="N", help="scales to dream at (default 4)")
    parser.add_argument("--octave-scale", type=float, metavar="S", help="size ratio of octaves (default 1.4)")
    parser.add_argument("--steps", type=positive_int, metavar="N", help="ascent steps per octave (default 10)")
    parser.add_argument("--step-size", type=float, metavar="F", help="size of each step (default 0.01)")
    parser.add_argument("--jitter", type=int, metavar="PX", help="random shift per step, 0 for none (default 32)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed for jitter and noise (default 0)")
    parser.add_argument(
        "--max-size",
        type=positive_int,
        metavar="PX",
        help="longer side before dreaming (default 1024)",
    )
    parser.add_argument(
        "--save-octaves",
        type=Path,
        metavar="DIR",
        help="save each octave's frame here as it arrives",
    )
    parser.add_argument("--gif", type=Path, metavar="FILE", help="write an animated GIF of the octaves")
    parser.add_argument("--timeout", type=float, metavar="SECONDS", help="give up after this long")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    parser.set_defaults(func=run_dream)


def _add_models_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list a server's models and their layers")
    _server_argument(parser)
    parser.set_defaults(func=run_models)


def parse_layers(text: str) -> dict[str, float]:
    """ "a:1,b:0.5" -> {"a": 1.0, "b": 0.5}; a name without a weight gets 1."""
    layers = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, colon, weight = item.rpartition(":")
        if not colon:
            name, weight = item, "1"
        try:
            layers[name] = float(weight)
        except ValueError:
            raise CommandError(f"--layers: {item!r} is not NAME:WEIGHT (e.g. {name}:1.0)") from None
    if not layers:
        raise CommandError("--layers is empty: give NAME:WEIGHT,... or leave it out")
    return layers


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480)."""
    width, x, height = text.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise CommandError(f"--noise {text}: give the size as WIDTHxHEIGHT, e.g. 512x512")
    return int(width), int(height)


def run_dream(args: argparse.Namespace) -> int:
    fmt = _FORMAT_BY_SUFFIX.get(args.output.suffix.lower())
    if fmt is None:
        raise CommandError(f"cannot tell the format of {args.output}: name it .png, .jpg or .webp")
    options = _dream_options(args, fmt)
    image = None
    if args.noise:
        if args.input is not None:
            raise CommandError("give INPUT or --noise, not both")
        options["width"], options["height"] = parse_size(args.noise)
    elif args.input is None:
        raise CommandError("give a picture to dream on (INPUT), or --noise WxH")
    elif not args.input.is_file():
        raise CommandError(f"{args.input} is not a file")
    else:
        image = args.input
    if args.save_octaves:
        args.save_octaves.mkdir(parents=True, exist_ok=True)

    bar = ProgressBar() if not args.quiet else None
    frames: list[Frame] = []
    try:
        with DreamClient(args.server) as client:
            for event in client.dream(image, timeout=args.timeout, **options):
                if isinstance(event, Progress):
                    if bar:
                        bar.update(event)
                    continue
                frames.append(event)
                saved = None
                if args.save_octaves:
                    saved = event.save(args.save_octaves / f"octave-{event.octave}{event.suffix}")
                if bar:
                    bar.frame(event, saved)
    finally:
        if bar:
            bar.close()
    if not frames or not frames[-1].final:
        raise DreamstreamError("the server ended the dream before its final frame")
    final = frames[-1]
    final.save(args.output)
    if args.gif:
        write_gif(frames, args.gif)
    if not args.quiet:
        print(f"wrote {args.output} ({final.width}x{final.height})", file=sys.stderr)
    return 0


def _dream_options(args: argparse.Namespace, fmt: str) -> DreamOptions:
    options = DreamOptions(format=fmt)
    if args.layers is not None:
        options["layers"] = parse_layers(args.layers)
    for option, value in (
        ("model", args.model),
        ("octaves", args.octaves),
        ("octave_scale", args.octave_scale),
        ("steps", args.steps),
        ("step_size", args.step_size),
        ("jitter", args.jitter),
        ("seed", args.seed),
        ("max_size", args.max_size),
    ):
        if value is not None:
            options[option] = value
    return options


def write_gif(frames: list[Frame], path: Path) -> None:
    """An animated GIF of the octaves, each scaled to the final size, the result held longest."""
    size = (frames[-1].width, frames[-1].height)
    pictures = [frame.image().convert("RGB").resize(size) for frame in frames]
    pictures[0].save(
        path,
        format="GIF",
        save_all=True,
        append_images=pictures[1:],
        duration=[_GIF_FRAME_MS] * (len(pictures) - 1) + [_GIF_LAST_FRAME_MS],
        loop=0,
    )


def run_models(args: argparse.Namespace) -> int:
    with DreamClient(args.server) as client:
        models = client.models()
    for model in models:
        default = " (default)" if model.default else ""
        sides = f"sides {model.min_size} to {model.max_size} px"
        print(f"{model.name}{default}: {model.backbone}, {sides}")
        print("\n".join(layer_table(model.layers, model.default_layers, indent="  ")))
    return 0
