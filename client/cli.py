"""`dreamstream dream` and `dreamstream models`: the client's commands, thin over DreamClient.

They need only the light install (grpcio, protobuf, numpy, Pillow). The
`dreamstream` command itself (`dreamstream.cli`) dispatches to them.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc

from dreamstream.client.client import CHANNEL_MODES, DreamClient, DreamOptions
from dreamstream.client.connection import TOKEN_ENV, ConnectionSettingsError
from dreamstream.client.errors import DreamstreamError
from dreamstream.client.events import Frame, Progress
from dreamstream.client.progress import ProgressBar
from dreamstream.cmdline import (
    EXIT_FAILED,
    EXIT_REFUSED,
    EXIT_UNREACHABLE,
    CommandError,
    layer_table,
    non_negative_int,
    positive_int,
)
from dreamstream.wire import DEFAULT_TARGET, UnknownFormat, format_of_suffix

# Statuses that say the request must change (exit EXIT_REFUSED) and those that say
# no answer came (EXIT_UNREACHABLE: retry, maybe elsewhere); others are the server's fault.
_REFUSED_STATUSES = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}
_UNREACHABLE_STATUSES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}
_GIF_FRAME_MS = 600
_GIF_LAST_FRAME_MS = 2000


def main(argv: Sequence[str] | None = None) -> int:
    """The `dreamstream` command (kept here for callers of the client's own entry point)."""
    from dreamstream.cli import main as dispatch

    return dispatch(argv)


def add_client_parsers(subparsers: argparse._SubParsersAction) -> None:
    _add_dream_parser(subparsers)
    _add_models_parser(subparsers)


def reports_server_errors(command: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """A failed call becomes one line with the status and the server's words."""

    @functools.wraps(command)
    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except ConnectionSettingsError as error:
            raise CommandError(str(error)) from None
        except DreamstreamError as error:
            raise CommandError(str(error), exit_code=_exit_code(error.code), prefix="") from None

    return run


def _exit_code(code: grpc.StatusCode) -> int:
    if code in _REFUSED_STATUSES:
        return EXIT_REFUSED
    if code in _UNREACHABLE_STATUSES:
        return EXIT_UNREACHABLE
    return EXIT_FAILED


def server_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("DREAMSTREAM_SERVER", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"the dreamstream server (default: $DREAMSTREAM_SERVER or {DEFAULT_TARGET})",
    )
    parser.add_argument("--tls", action="store_true", help="connect with TLS, trusting the system's CAs")
    parser.add_argument("--ca-file", type=Path, metavar="PEM", help="connect with TLS, trusting this CA")
    parser.add_argument("--cert-file", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    parser.add_argument("--key-file", type=Path, metavar="PEM", help="key of --cert-file")
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        help=f"send the token in FILE (its first line) as a bearer token (default: ${TOKEN_ENV})",
    )
    parser.add_argument(
        "--retries",
        type=non_negative_int,
        default=0,
        metavar="N",
        help="when the server is full or not ready, try again up to N times after the delay it asks for",
    )


def client_for(args: argparse.Namespace) -> DreamClient:
    """The client of the server and credentials `server_argument`'s flags name."""
    return DreamClient(
        args.server,
        tls=args.tls,
        ca_file=args.ca_file,
        cert_file=args.cert_file,
        key_file=args.key_file,
        token_file=args.token_file,
        retries=args.retries,
        on_retry=_say_retrying,
    )


def _say_retrying(error: DreamstreamError, delay: float) -> None:
    print(f"dreamstream: {error.code.name} ({error.reason}): trying again in {delay:.1f} s", file=sys.stderr)


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
    server_argument(parser)
    parser.add_argument("--noise", metavar="WxH", help="dream on seeded noise of this size instead of INPUT")
    add_dream_options(parser)
    _add_control_arguments(parser)
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


def add_dream_options(parser: argparse.ArgumentParser) -> None:
    """The options of a dream (see `dream_options`), shared by every command that dreams."""
    parser.add_argument("--model", help="model to dream with (see `dreamstream models`)")
    parser.add_argument(
        "--layers",
        metavar="NAME:WEIGHT,...",
        help="layers to dream on, with weights (default: the model's default layers)",
    )
    parser.add_argument("--octaves", type=positive_int, metavar="N", help="scales to dream at (default 4)")
    parser.add_argument("--octave-scale", type=float, metavar="S", help="size ratio of octaves (default 1.4)")
    parser.add_argument(
        "--steps", dest="steps_per_octave", type=positive_int, metavar="N", help="ascent steps per octave (default 10)"
    )
    parser.add_argument("--step-size", type=float, metavar="F", help="size of each step (default 0.01)")
    parser.add_argument("--jitter", type=int, metavar="PX", help="random shift per step, 0 for none (default 32)")
    parser.add_argument("--seed", type=int, metavar="N", help="seed for jitter and noise (default 0)")
    parser.add_argument(
        "--max-size",
        type=positive_int,
        metavar="PX",
        help="longer side before dreaming (default 1024; above the model's max untiled size it is tiled)",
    )
    parser.add_argument(
        "--tile-size",
        type=positive_int,
        metavar="PX",
        help="compute the gradient in tiles of PX pixels, so memory follows the tile (default: the server tiles "
        "pictures too large for its memory)",
    )
    parser.add_argument(
        "--tile-overlap",
        type=non_negative_int,
        metavar="PX",
        help="context each tile reads past what it keeps (default: a sixteenth of the tile)",
    )


def _add_control_arguments(parser: argparse.ArgumentParser) -> None:
    """The dream controls: what to amplify (guide, channels) and how the picture changes."""
    controls = parser.add_argument_group("dream controls")
    controls.add_argument("--guide", type=Path, metavar="IMAGE", help="dream towards what the network sees in IMAGE")
    controls.add_argument(
        "--channels",
        action="append",
        metavar="LAYER:C1,C2,...",
        help="dream on these channels of LAYER only (repeatable; the layer is dreamed on if --layers is left out)",
    )
    controls.add_argument(
        "--channel-mode", choices=list(CHANNEL_MODES), help="choose channels of each layer by their mean on the picture"
    )
    controls.add_argument(
        "--channel-count", type=positive_int, metavar="N", help="channels --channel-mode keeps (default 10)"
    )
    controls.add_argument(
        "--rank-channels-per-octave",
        action="store_true",
        help="rank the channels again at every octave (default: once, on the picture)",
    )
    controls.add_argument(
        "--original-colors", action="store_true", help="keep the picture's colours, take the dream's luminance"
    )
    controls.add_argument(
        "--lap-levels", type=non_negative_int, metavar="N", help="Laplacian pyramid gradient normalisation levels"
    )
    controls.add_argument("--tv-weight", type=float, metavar="F", help="total variation regularisation (e.g. 0.5)")
    controls.add_argument("--octaves-above", type=non_negative_int, metavar="N", help="octaves past the picture's size")
    controls.add_argument(
        "--return-largest",
        action="store_true",
        help="with --octaves-above: the result at the largest octave's size, not the picture's",
    )
    controls.add_argument("--repeat", type=non_negative_int, metavar="N", help="dream the result again N times")


def _add_models_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("models", help="list a server's models and their layers")
    server_argument(parser)
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


def parse_channels(items: Sequence[str]) -> dict[str, list[int]]:
    """["a:1,2", "b:7"] -> {"a": [1, 2], "b": [7]}."""
    channels: dict[str, list[int]] = {}
    for item in items:
        layer, colon, numbers = item.rpartition(":")
        try:
            chosen = [int(number) for number in numbers.split(",") if number.strip()]
        except ValueError:
            chosen = []
        if not (colon and layer and chosen):
            raise CommandError(f"--channels {item}: give LAYER:C1,C2,... with channel numbers, e.g. {layer or 'x'}:3,7")
        channels.setdefault(layer, []).extend(chosen)
    return channels


def parse_size(text: str) -> tuple[int, int]:
    """ "640x480" -> (640, 480)."""
    width, x, height = text.lower().partition("x")
    if not (x and width.isdigit() and height.isdigit() and int(width) > 0 and int(height) > 0):
        raise CommandError(f"--noise {text}: give the size as WIDTHxHEIGHT, e.g. 512x512")
    return int(width), int(height)


@reports_server_errors
def run_dream(args: argparse.Namespace) -> int:
    try:
        fmt = format_of_suffix(args.output.suffix).name
    except UnknownFormat:
        raise CommandError(f"cannot tell the format of {args.output}: name it .png, .jpg or .webp") from None
    options = DreamOptions(**dream_options(args, fmt), **control_options(args))
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
    _check_outputs(args)

    bar = ProgressBar() if not args.quiet else None
    frames: list[Frame] = []
    try:
        with client_for(args) as client:
            for event in client.dream(image, timeout=args.timeout, **options):
                if isinstance(event, Progress):
                    if bar:
                        bar.update(event)
                if not isinstance(event, Frame):
                    continue
                frames.append(event)
                saved = None
                if args.save_octaves:
                    # With --repeat every round has its octaves: name them apart.
                    name = f"round-{event.round}-octave-{event.octave}" if args.repeat else f"octave-{event.octave}"
                    saved = event.save(args.save_octaves / f"{name}{event.suffix}")
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


def _check_outputs(args: argparse.Namespace) -> None:
    """Every place the dream will be written to is writable, checked before the dream costs anything."""
    if args.gif is not None and args.gif.suffix.lower() != ".gif":
        raise CommandError(f"--gif {args.gif}: name it .gif")
    for flag, path in (("-o", args.output), ("--gif", args.gif)):
        if path is None:
            continue
        if path.is_dir():
            raise CommandError(f"{flag} {path} is a folder: give a file name")
        folder = path.parent
        if not folder.is_dir():
            raise CommandError(f"{flag} {path}: folder {folder} does not exist: create it first")
        if not os.access(folder, os.W_OK):
            raise CommandError(f"{flag} {path}: folder {folder} is not writable")
    if args.save_octaves:
        try:
            args.save_octaves.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise CommandError(f"--save-octaves {args.save_octaves}: cannot create it ({error.strerror})") from None
        if not os.access(args.save_octaves, os.W_OK):
            raise CommandError(f"--save-octaves {args.save_octaves} is not writable")


def dream_options(args: argparse.Namespace, fmt: str) -> DreamOptions:
    """The DreamOptions of the flags `add_dream_options` added, frames in format `fmt`."""
    options = DreamOptions(format=fmt)
    if args.layers is not None:
        options["layers"] = parse_layers(args.layers)
    for option, value in (
        ("model", args.model),
        ("octaves", args.octaves),
        ("octave_scale", args.octave_scale),
        ("steps_per_octave", args.steps_per_octave),
        ("step_size", args.step_size),
        ("jitter", args.jitter),
        ("seed", args.seed),
        ("max_size", args.max_size),
        ("tile_size", args.tile_size),
        ("tile_overlap", args.tile_overlap),
    ):
        if value is not None:
            options[option] = value
    return options


def control_options(args: argparse.Namespace) -> DreamOptions:
    """The DreamOptions of the flags `_add_control_arguments` added."""
    options = DreamOptions()
    if args.channels:
        options["channels"] = parse_channels(args.channels)
    if args.guide is not None:
        if not args.guide.is_file():
            raise CommandError(f"--guide {args.guide} is not a file")
        options["guide"] = args.guide
    for option, value in (
        ("channel_mode", args.channel_mode),
        ("channel_count", args.channel_count),
        ("lap_levels", args.lap_levels),
        ("tv_weight", args.tv_weight),
        ("octaves_above", args.octaves_above),
        ("repeat", args.repeat),
    ):
        if value is not None:
            options[option] = value
    for flag in ("rank_channels_per_octave", "original_colors", "return_largest"):
        if getattr(args, flag):
            options[flag] = True
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


@reports_server_errors
def run_models(args: argparse.Namespace) -> int:
    with client_for(args) as client:
        listing = client.model_listing()
    for model in listing.models:
        default = " (default)" if model.default else ""
        sides = f"sides {model.min_size} to {model.max_size} px"
        if model.max_untiled_size:
            sides += f" (tiled above {model.max_untiled_size})"
        guide = ", guided dreams" if model.supports_guide else ""
        print(f"{model.name}{default}: {model.backbone}, {sides}{guide}")
        print("\n".join(layer_table(model.layers, model.default_layers, indent="  ")))
    for refused in listing.unavailable:
        print(f"{refused.name}: not served ({refused.problem})")
    return 0
