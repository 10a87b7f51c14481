"""The `serve` flags for running in production: metrics, logs, connection recycling, warm start.

They are added to the `serve` parser by `add_operation_flags`, and turned into the server's
parts here (`connection_policy`, `telemetry_listeners`, `configure_logging`), so that the
command itself stays a short list of steps.
"""

from __future__ import annotations

import argparse
import logging

from dreamstream.cmdline import CommandError, non_negative_float, positive_float
from dreamstream.server.access_log import AccessLog, JsonFormatter
from dreamstream.server.connections import (
    DEFAULT_KEEPALIVE_TIME,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_MAX_CONNECTION_AGE,
    DEFAULT_MAX_CONNECTION_AGE_GRACE,
    ConnectionPolicy,
)
from dreamstream.server.metrics import DreamMetrics
from dreamstream.server.telemetry import DreamListener, Telemetry

# Every `serve` flag can be set by the variable of this prefix and its name: --max-queue is
# DREAMSTREAM_MAX_QUEUE.
ENV_PREFIX = "DREAMSTREAM_"
LOG_FORMATS = ("text", "json")
_TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def add_operation_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics on http://HOST:PORT/metrics (default: no metrics; 0 picks a port)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="text, or json: one JSON object per line, with one line per dream (default text)",
    )
    parser.add_argument(
        "--keepalive-time",
        type=positive_float,
        default=DEFAULT_KEEPALIVE_TIME,
        metavar="SECONDS",
        help=f"ping an idle client after this long, to find dead connections (default {DEFAULT_KEEPALIVE_TIME:g})",
    )
    parser.add_argument(
        "--keepalive-timeout",
        type=positive_float,
        default=DEFAULT_KEEPALIVE_TIMEOUT,
        metavar="SECONDS",
        help=f"close a connection whose ping is unanswered this long (default {DEFAULT_KEEPALIVE_TIMEOUT:g})",
    )
    parser.add_argument(
        "--max-connection-age",
        type=non_negative_float,
        default=DEFAULT_MAX_CONNECTION_AGE,
        metavar="SECONDS",
        help="ask clients to reconnect (GOAWAY) after this long, so that load balancers spread them "
        f"again; 0 never (default {DEFAULT_MAX_CONNECTION_AGE:g})",
    )
    parser.add_argument(
        "--max-connection-age-grace",
        type=positive_float,
        default=DEFAULT_MAX_CONNECTION_AGE_GRACE,
        metavar="SECONDS",
        help="streams running when their connection ages out get this long to finish: "
        f"at least the longest dream (default {DEFAULT_MAX_CONNECTION_AGE_GRACE:g})",
    )
    parser.add_argument(
        "--warm-start",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="before reporting SERVING, run one tiny dream on every model's default layers, "
        "so that the first request pays no start-up cost (default on)",
    )


def connection_policy(args: argparse.Namespace, longest_dream: float | None = None) -> ConnectionPolicy:
    """The connection settings of the flags; the grace must cover `longest_dream` seconds."""
    if longest_dream is not None and args.max_connection_age_grace < longest_dream:
        raise CommandError(
            f"--max-connection-age-grace {args.max_connection_age_grace:g} is shorter than the longest dream "
            f"({longest_dream:g} s): a dream on an aged-out connection would be cut; raise it"
        )
    return ConnectionPolicy(
        keepalive_time=args.keepalive_time,
        keepalive_timeout=args.keepalive_timeout,
        max_connection_age=args.max_connection_age or None,
        max_connection_age_grace=args.max_connection_age_grace,
    )


def configure_logging(args: argparse.Namespace) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.log_format == "json" else logging.Formatter(_TEXT_FORMAT))
    logging.basicConfig(level=args.log_level.upper(), handlers=[handler], force=True)


def start_telemetry(args: argparse.Namespace) -> Telemetry:
    """The access log always; the Prometheus metrics too (their HTTP server started) with --metrics-port."""
    listeners: list[DreamListener] = [AccessLog()]
    if args.metrics_port is not None:
        metrics = DreamMetrics()
        try:
            metrics.serve(args.host, args.metrics_port)
        except OSError as error:
            raise CommandError(
                f"cannot serve metrics on {args.host}:{args.metrics_port}: {error.strerror} (choose --metrics-port)"
            ) from error
        listeners.append(metrics)
    return Telemetry(listeners)
