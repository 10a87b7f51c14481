"""`dreamstream serve`: run the gRPC server over a directory of exported models."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path

from dreamstream.cmdline import CommandError, non_negative_int, positive_int
from dreamstream.server.app import DreamServer
from dreamstream.server.models import ModelRepository, RepositoryError
from dreamstream.server.providers import DEVICE_CHOICES, DeviceError
from dreamstream.wire import DEFAULT_PORT

log = logging.getLogger(__name__)

# Seconds running dreams get to finish when the server is asked to stop.
SHUTDOWN_GRACE = 5.0


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the dreamstream gRPC server",
        description="Serve the models of a directory of exported models over gRPC.",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=Path(os.environ.get("DREAMSTREAM_MODELS", "models")),
        help="directory of exported models (default: $DREAMSTREAM_MODELS or ./models)",
    )
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the graphs run: auto takes CUDA when it really loads (default auto)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=1,
        help="dreams that run at once (default 1)",
    )
    parser.add_argument(
        "--max-queue",
        type=non_negative_int,
        default=4,
        help="dreams that may wait for a slot; beyond, RESOURCE_EXHAUSTED (default 4)",
    )
    parser.add_argument(
        "--threads",
        type=non_negative_int,
        default=0,
        help="threads per graph operator (default 0: one per physical core; set it to the container's CPU limit)",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    parser.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(_serve(args))
    return 0


async def _serve(args: argparse.Namespace) -> None:
    server = DreamServer(
        ModelRepository(args.models, args.device, args.threads),
        max_concurrent=args.max_concurrent,
        max_queue=args.max_queue,
    )
    try:
        await server.start(args.host, args.port)
    except (RuntimeError, OSError) as error:  # grpc raises RuntimeError when it cannot bind
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: is the port taken? (choose one with --port)"
        ) from error
    try:
        await server.load()
    except (RepositoryError, DeviceError) as error:
        await server.stop(grace=None)
        raise CommandError(str(error)) from error

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    log.info("stopping: running dreams get %.0f s to finish", SHUTDOWN_GRACE)
    await server.stop(SHUTDOWN_GRACE)
