"""The `dreamstream` command: a thin dispatcher over the commands of each part.

The client's commands (`dream`, `models`) need only the light install. `serve`
(server extra) and `export` / `layers` (export extra) are imported only when
one of them runs, so the command starts fast and a missing extra is named
instead of failing with a traceback. Each part registers its own subcommands;
this module knows their names and one-line help, nothing more.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from dataclasses import dataclass

from dreamstream import __version__
from dreamstream.cmdline import EXIT_USAGE, CommandError


@dataclass(frozen=True)
class Part:
    """Commands registered by one part of dreamstream."""

    module: str
    hook: str  # module function taking the subparsers action
    install: str | None  # what to install when the module's imports are missing; None: the base install
    commands: dict[str, str]  # command -> one-line help, for `dreamstream --help`

    def register(self, subparsers: argparse._SubParsersAction, command: str) -> None:
        try:
            module = importlib.import_module(self.module)
        except ImportError as error:
            raise self.missing(command, error) from error
        getattr(module, self.hook)(subparsers)

    def missing(self, command: str, error: ImportError) -> Exception:
        """The error to report when `command` hit `error` importing its dependencies."""
        if self.install is None or not error.name or error.name.startswith("dreamstream"):
            return error  # our own module is broken: a bug, not a missing extra
        return CommandError(f"`dreamstream {command}` needs {self.install} (no module {error.name})")


PARTS = (
    Part(
        module="dreamstream.client.cli",
        hook="add_client_parsers",
        install=None,
        commands={
            "dream": "dream on a picture with a dreamstream server",
            "models": "list a server's models and their layers",
        },
    ),
    Part(
        module="dreamstream.client.discovery_cli",
        hook="add_discovery_parsers",
        install=None,
        commands={
            "classify": "what a model's network sees in a picture: its top ImageNet classes",
            "sweep": "dream a picture once per layer, with a labelled contact sheet",
        },
    ),
    Part(
        module="dreamstream.client.animation_cli",
        hook="add_animation_parsers",
        # The commands themselves need the light install; reading and writing video needs PyAV.
        install="the video extra: pip install 'dreamstream[video]'",
        commands={
            "video": "dream a video, frame by frame, with a dreamstream server",
            "zoom": "a zoom animation: dream, zoom into the dream, dream again",
        },
    ),
    Part(
        module="dreamstream.export.cli",
        hook="add_export_parsers",
        # The export extra names no ONNX Runtime: it takes the server's or the GPU's.
        install="the export extra and a runtime: pip install 'dreamstream[server,export]' ('[gpu,export]' for CUDA)",
        commands={
            "export": "export a backbone into a model directory",
            "layers": "list the layers of an exported model",
        },
    ),
    Part(
        module="dreamstream.server.cli",
        hook="add_serve_parser",
        install="the server extra: pip install 'dreamstream[server]' ('dreamstream[gpu]' for CUDA)",
        commands={"serve": "run the dreamstream gRPC server"},
    ),
)


def build_parser(command: str | None) -> argparse.ArgumentParser:
    """The parser for `command`: only the part that owns it is imported."""
    parser = argparse.ArgumentParser(
        prog="dreamstream", description="DeepDream over gRPC: dream with a server, or run one."
    )
    parser.add_argument("--version", action="version", version=f"dreamstream {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for part in PARTS:
        if command in part.commands:
            part.register(subparsers, command)
        else:
            # Listed in --help without importing anything.
            for name, help_text in part.commands.items():
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
            return EXIT_USAGE
        return _run(args, command)
    except CommandError as error:
        print(f"dreamstream: {error.prefix}{error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print("dreamstream: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace, command: str) -> int:
    try:
        return args.func(args)
    except ImportError as error:
        # A part's command may import its heavy dependencies only once it runs.
        part = next((part for part in PARTS if command in part.commands), None)
        if part is None:
            raise
        raise part.missing(command, error) from error
