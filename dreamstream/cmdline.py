"""Command-line helpers every part of the `dreamstream` command shares.

The client (`dream`, `models`), the server (`serve`) and the export tool
(`export`, `layers`) each define their own subcommands; what they have in
common lives here, so that none of them imports another.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Mapping
from typing import Protocol

# Exit statuses, the same for every subcommand (documented in the README).
EXIT_OK = 0
EXIT_FAILED = 1  # the server or the tool failed: not the user's doing
EXIT_USAGE = 2  # the command line itself is wrong: fix the flags
EXIT_REFUSED = 3  # the server refused the request: change it (the message says how)
EXIT_UNREACHABLE = 4  # no answer: the server is unreachable, draining, or the timeout passed; retry


class CommandError(Exception):
    """What stops a command, printed as one line: `dreamstream: <prefix><message>`.

    The default is a mistake on the command line (exit status 2, "error: " before the
    message); a command that reports a server's answer passes its own status and prefix.
    """

    def __init__(self, message: str, exit_code: int = EXIT_USAGE, prefix: str = "error: ") -> None:
        super().__init__(message)
        self.exit_code = exit_code
        self.prefix = prefix


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative: use 0 or more")
    return value


class LayerRow(Protocol):
    name: str
    channels: int
    stride: int


def layer_table(layers: Iterable[LayerRow], default_layers: Mapping[str, float], indent: str = "") -> list[str]:
    """One line per layer (name, channels, stride, default weight), deepest last, with a header."""
    layers = list(layers)
    width = max(len("layer"), *(len(layer.name) for layer in layers))
    lines = [f"{indent}{'layer':<{width}}  channels  stride  default weight"]
    for layer in layers:
        weight = default_layers.get(layer.name)
        shown = f"{weight:g}" if weight is not None else ""
        lines.append(f"{indent}{layer.name:<{width}}  {layer.channels:>8}  {layer.stride:>6}  {shown}".rstrip())
    return lines


def environment_variable(prefix: str, action: argparse.Action) -> str:
    """The variable that sets a flag: --max-queue -> DREAMSTREAM_MAX_QUEUE (for prefix DREAMSTREAM_)."""
    return prefix + action.dest.upper()


def defaults_from_environment(parser: argparse.ArgumentParser, prefix: str) -> None:
    """Let every flag of `parser` also be set by an environment variable (PREFIX + its name in
    capitals); a flag on the command line still wins. Each flag's help names its variable.

    Containers and Kubernetes set configuration through the environment; this keeps one
    list of settings (the flags) instead of a second one to keep in step.
    """
    for action in parser._actions:
        if not action.option_strings or action.dest in (argparse.SUPPRESS, "help"):
            continue
        variable = environment_variable(prefix, action)
        if action.help is not argparse.SUPPRESS:
            action.help = f"{action.help or ''} [env {variable}]".strip()
        raw = os.environ.get(variable)
        if raw is None or raw == "":
            continue
        action.default = _environment_value(action, variable, raw)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _environment_value(action: argparse.Action, variable: str, raw: str) -> object:
    if action.nargs == 0:  # a switch: the variable holds the setting's value (DREAMSTREAM_REFLECTION=0)
        if raw.lower() not in _TRUE + _FALSE:
            raise CommandError(f"{variable}={raw!r}: use one of {', '.join(_TRUE + _FALSE)}")
        return raw.lower() in _TRUE
    try:
        value = action.type(raw) if callable(action.type) else raw
    except (argparse.ArgumentTypeError, TypeError, ValueError) as error:
        raise CommandError(f"{variable}={raw!r}: {error or 'not a valid value'}") from None
    if action.choices is not None and value not in action.choices:
        choices = ", ".join(map(str, action.choices))
        raise CommandError(f"{variable}={raw!r}: choose one of {choices}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a number above 0."""
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a number above 0")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a number of at least 0."""
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is negative: use 0 or more")
    return value
