"""`dreamstream classify` and `dreamstream sweep`: finding what to dream on, thin over DreamClient.

`classify` prints what a model's network sees in a picture (its classifier's
top classes); `sweep` dreams the picture once per layer over the ordinary Dream
call, names each result with its parameters, and puts them on a labelled
contact sheet. Both need only the light install.
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

from PIL import Image

from dreamstream.client.cli import add_dream_options, client_for, dream_options, reports_server_errors, server_argument
from dreamstream.client.client import DreamClient, DreamOptions
from dreamstream.client.contact_sheet import contact_sheet
from dreamstream.client.errors import DreamstreamError
from dreamstream.client.events import Frame, Started
from dreamstream.cmdline import CommandError, positive_int

CONTACT_SHEET = "contact-sheet.png"


def add_discovery_parsers(subparsers: argparse._SubParsersAction) -> None:
    _add_classify_parser(subparsers)
    _add_sweep_parser(subparsers)


def _add_classify_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "classify",
        help="what a model's network sees in a picture: its top ImageNet classes",
        description="Print the most probable ImageNet classes of IMAGE, as a model's classifier head sees them.",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="picture to classify")
    parser.add_argument("--model", default="", help="model to classify with (default: the server's default)")
    parser.add_argument("--top", type=positive_int, default=5, metavar="N", help="classes to print (default 5)")
    server_argument(parser)
    parser.set_defaults(func=run_classify)


def _add_sweep_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="dream a picture once per layer, with a labelled contact sheet",
        description="Dream IMAGE once on each layer of --layers (default: every layer of the model) and write "
        f"each result into DIR, named with its parameters, and {CONTACT_SHEET} with every result labelled.",
    )
    parser.add_argument("image", type=Path, metavar="IMAGE", help="picture to dream on")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="folder for the results")
    parser.add_argument("--tile", type=positive_int, default=256, metavar="PX", help="contact sheet tile (default 256)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    server_argument(parser)
    add_dream_options(parser)
    parser.set_defaults(func=run_sweep)


@reports_server_errors
def run_classify(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise CommandError(f"{args.image} is not a file")
    with client_for(args) as client:
        classes = client.classify(args.image, model=args.model, top=args.top)
    for cls in classes:
        print(f"{cls.probability:7.2%}  {cls.label}")
    return 0


@reports_server_errors
def run_sweep(args: argparse.Namespace) -> int:
    if not args.image.is_file():
        raise CommandError(f"{args.image} is not a file")
    options = dream_options(args, "png")
    asked = options.pop("layers", None)
    try:
        args.output.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise CommandError(f"-o {args.output}: cannot create it ({error.strerror})") from None
    with client_for(args) as client:
        layers = list(asked) if asked else _every_layer(client, options.get("model", ""))
        pictures = [("original", Image.open(args.image))]
        for layer in layers:
            began = time.perf_counter()
            path, picture = _dream_layer(client, args.image, layer, options, args.output)
            pictures.append((layer, picture))
            if not args.quiet:
                print(f"{layer}: wrote {path} ({time.perf_counter() - began:.1f} s)", file=sys.stderr)
    sheet = args.output / CONTACT_SHEET
    contact_sheet(pictures, args.tile).save(sheet)
    if not args.quiet:
        print(f"wrote {sheet} ({len(layers)} layers)", file=sys.stderr)
    return 0


def _every_layer(client: DreamClient, model: str) -> list[str]:
    models = client.models()
    chosen = [info for info in models if info.name == model or (not model and info.default)]
    if not chosen:
        raise CommandError(f"the server has no model {model!r}: it has {', '.join(info.name for info in models)}")
    return [layer.name for layer in chosen[0].layers]


def _dream_layer(
    client: DreamClient, image: Path, layer: str, options: DreamOptions, folder: Path
) -> tuple[Path, Image.Image]:
    """Dream `image` on `layer` alone; the result is saved under a name that holds its parameters."""
    started: Started | None = None
    final: Frame | None = None
    for event in client.dream(image, **{**options, "layers": {layer: 1.0}}):
        if isinstance(event, Started):
            started = event
        elif isinstance(event, Frame) and event.final:
            final = event
    if started is None or final is None:
        raise DreamstreamError(f"the server ended the dream on {layer} before its final frame")
    path = folder / f"{image.stem}_{_parameters(started, layer)}{final.suffix}"
    final.save(path)
    return path, final.image()


def _parameters(started: Started, layer: str) -> str:
    """The dream's parameters as a file name part, e.g. 'googlenet-bvlc_inception_4c-output_o4x10_s0.01_seed0'."""
    safe_layer = re.sub(r"[^A-Za-z0-9._-]+", "-", layer)
    octaves = f"o{len(started.octave_sizes)}x{started.steps_per_octave}"
    return f"{started.model}_{safe_layer}_{octaves}_s{started.step_size:g}_j{started.jitter}_seed{started.seed}"
