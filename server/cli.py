"""`dreamstream serve`: run the gRPC server over a directory of exported models."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from pathlib import Path

from dreamstream.cmdline import (
    CommandError,
    defaults_from_environment,
    non_negative_int,
    positive_float,
    positive_int,
)
from dreamstream.server.app import DreamServer
from dreamstream.server.dataplane import READER_TIMEOUT
from dreamstream.server.engine import DreamEngine
from dreamstream.server.engine.limits import (
    DEFAULT_MAX_COST,
    DEFAULT_MAX_DREAM_SECONDS,
    DEFAULT_MAX_INPUT_PIXELS,
    STEP_BYTES_PER_PIXEL,
    Limits,
)
from dreamstream.server.memory_budget import MemoryBudgetError, MemoryPlan, plan_memory
from dreamstream.server.models import ModelRepository, RepositoryError
from dreamstream.server.options import (
    ENV_PREFIX,
    add_operation_flags,
    configure_logging,
    connection_policy,
    start_telemetry,
)
from dreamstream.server.providers import (
    DEVICE_CHOICES,
    CpuShare,
    DeviceError,
    available_cpus,
    gpu_expected,
    serving_defaults,
)
from dreamstream.server.security import SecurityError, TlsFiles, TokenSet
from dreamstream.wire import DEFAULT_PORT

log = logging.getLogger(__name__)

# Seconds running dreams get to finish when the server is asked to stop (SIGTERM, SIGINT).
SHUTDOWN_GRACE = 30.0
_MIB = 2**20
AUTO = "auto"


def add_serve_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the dreamstream gRPC server",
        description="Serve the models of a directory of exported models over gRPC.",
    )
    parser.add_argument(
        "--models",
        type=Path,
        default=Path("models"),
        help="directory of exported models (default ./models)",
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for every interface)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0 picks one)")
    parser.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="also serve the HTTP gateway on this port: the JSON and Server-Sent Events API and the web page at / "
        "(default: none; 0 picks one)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICE_CHOICES,
        default="auto",
        help="where the graphs run: auto takes CUDA when it really loads (default auto)",
    )
    parser.add_argument(
        "--max-concurrent",
        type=positive_int,
        default=None,
        help="dreams that run at once (default: on the CPU the CPUs available over --threads, or one per CPU "
        "without it; on a GPU 1)",
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
        help="threads per dream's graph operators (default 0: the CPUs available, from the affinity mask and "
        "the cgroup CPU quota, shared out at each step among the dreams running then: a lone dream on all)",
    )
    _add_security_flags(parser)
    _add_limit_flags(parser)
    parser.add_argument(
        "--shutdown-grace",
        type=positive_float,
        default=SHUTDOWN_GRACE,
        metavar="SECONDS",
        help=f"on SIGTERM, running dreams get this long to finish before they are stopped (default {SHUTDOWN_GRACE:g})",
    )
    parser.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    add_operation_flags(parser)
    defaults_from_environment(parser, ENV_PREFIX)  # after every flag: each one gets its variable
    parser.set_defaults(func=serve)


def _add_security_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="serve TLS with this certificate chain")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the private key of --tls-cert")
    parser.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="PEM",
        help="mutual TLS: accept only clients with a certificate signed by this CA",
    )
    parser.add_argument(
        "--auth-token-file",
        type=Path,
        metavar="FILE",
        help="accept only calls with `authorization: Bearer <token>`, one token per line (health stays open); "
        "read again when it changes or on SIGHUP, so tokens rotate without a restart",
    )
    parser.add_argument(
        "--no-reflection", dest="reflection", action="store_false", help="do not offer gRPC server reflection"
    )


def _add_limit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--max-input-pixels",
        type=positive_int,
        default=DEFAULT_MAX_INPUT_PIXELS,
        metavar="N",
        help=f"refuse pictures above this many pixels before decoding them (default {DEFAULT_MAX_INPUT_PIXELS:,})",
    )
    parser.add_argument(
        "--max-cost",
        type=positive_int,
        default=DEFAULT_MAX_COST,
        metavar="N",
        help=f"refuse dreams above this many pixel-steps, each octave's pixels x steps (default {DEFAULT_MAX_COST:,})",
    )
    parser.add_argument(
        "--max-dream-seconds",
        type=positive_float,
        default=DEFAULT_MAX_DREAM_SECONDS,
        metavar="SECONDS",
        help=f"stop a dream running longer than this (default {DEFAULT_MAX_DREAM_SECONDS:g})",
    )
    parser.add_argument(
        "--memory-budget",
        type=_memory_budget,
        default=AUTO,
        metavar="MIB|auto",
        help="memory the running dreams may take together, beyond the loaded models; "
        "dreams wait for room, and one that alone is above it is refused (default auto: the container's "
        "memory limit, or the machine's memory, less a margin for the server and its models)",
    )
    parser.add_argument(
        "--dream-bytes-per-pixel",
        type=positive_int,
        default=STEP_BYTES_PER_PIXEL,
        metavar="BYTES",
        help="memory a dream takes per pixel of its largest octave, for --memory-budget "
        f"(default {STEP_BYTES_PER_PIXEL:,}: efficientnet-lite0 and googlenet-bvlc on the CPU; more for VGG)",
    )
    parser.add_argument(
        "--reader-timeout",
        type=positive_float,
        default=READER_TIMEOUT,
        metavar="SECONDS",
        help=f"stop a dream whose client reads nothing for this long (default {READER_TIMEOUT:g})",
    )


def _memory_budget(text: str) -> int | str:
    """argparse type of --memory-budget: `auto` or a positive number of MiB."""
    return AUTO if text.strip().lower() == AUTO else positive_int(text)


def serve(args: argparse.Namespace) -> int:
    configure_logging(args)
    asyncio.run(_serve(args))
    return 0


def _memory(args: argparse.Namespace) -> MemoryPlan:
    """The dreams' budget (--memory-budget, or auto) and the sessions' one, within the container's limit."""
    dreams = None if args.memory_budget == AUTO else args.memory_budget * _MIB
    try:
        plan = plan_memory(args.models, dreams)
    except MemoryBudgetError as error:
        raise CommandError(str(error)) from None
    log.info("%s", plan.describe())
    return plan


def _limits(args: argparse.Namespace, memory: MemoryPlan) -> Limits:
    return Limits(
        max_input_pixels=args.max_input_pixels,
        max_cost=args.max_cost,
        max_dream_seconds=args.max_dream_seconds,
        memory_budget=memory.dreams,
        step_bytes_per_pixel=args.dream_bytes_per_pixel,
    )


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise CommandError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise CommandError("TLS needs both --tls-cert and --tls-key")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def _server(args: argparse.Namespace) -> DreamServer:
    memory = _memory(args)
    cpus = available_cpus()
    max_concurrent, threads = serving_defaults(cpus, gpu_expected(args.device), args.max_concurrent, args.threads)
    each = f"{threads} thread(s) each" if threads else f"the {cpus} CPUs shared out among the dreams running"
    log.info("CPUs: %d available; %d dream(s) at once, %s", cpus, max_concurrent, each)
    models = ModelRepository(args.models, args.device, CpuShare(cpus, threads), session_budget=memory.sessions)
    try:
        tls = _tls(args)
        if tls is not None:
            tls.credentials()  # a bad file is named now, not at the first connection
        tokens = TokenSet.from_file(args.auth_token_file) if args.auth_token_file else ()
    except SecurityError as error:
        raise CommandError(str(error)) from None
    return DreamServer(
        models,
        max_concurrent=max_concurrent,
        max_queue=args.max_queue,
        engine=DreamEngine(models, limits=_limits(args, memory)),
        tls=tls,
        tokens=tokens,
        reflection=args.reflection,
        reader_timeout=args.reader_timeout,
        telemetry=start_telemetry(args),
        connections=connection_policy(args, longest_dream=args.max_dream_seconds),
        warm_start=args.warm_start,
    )


async def _serve(args: argparse.Namespace) -> None:
    server = _server(args)
    try:
        await server.start(args.host, args.port)
    except (RuntimeError, OSError) as error:  # grpc raises RuntimeError when it cannot bind
        raise CommandError(
            f"cannot listen on {args.host}:{args.port}: is the port taken? (choose one with --port)"
        ) from error
    if args.http_port is not None:
        try:
            await server.start_http(args.host, args.http_port)
        except OSError as error:
            await server.stop(grace=None)
            raise CommandError(
                f"cannot serve HTTP on {args.host}:{args.http_port}: {error.strerror or error} (choose --http-port)"
            ) from error
    # Set before loading, so that a stop asked for during the load drains right after it.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    # SIGHUP reads the token file again now (it is also read when it changes); never a stop.
    loop.add_signal_handler(signal.SIGHUP, server.reload_credentials)
    try:
        await server.load()
    except (RepositoryError, DeviceError) as error:
        await server.stop(grace=None)
        raise CommandError(str(error)) from error
    await stop.wait()
    await server.drain(args.shutdown_grace)
    # Drained: a second stop signal (an impatient supervisor) must not kill the process
    # on its way out with "terminated by SIGTERM" instead of exit 0. Ignored rather than
    # left to the loop, whose closing would put the default (fatal) action back.
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)
