"""The gRPC server: the Dream service, the standard health service and reflection, on one port;
and, with `start_http`, the HTTP gateway on another, over the same data plane."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dreamstream.server.connections import ConnectionPolicy
from dreamstream.server.dataplane import READER_TIMEOUT, DataPlane
from dreamstream.server.engine import DreamEngine
from dreamstream.server.gateway import gateway_app
from dreamstream.server.http_server import HttpServer
from dreamstream.server.models import ModelRepository
from dreamstream.server.security import TlsFiles, TokenAuth, TokenSet
from dreamstream.server.service import DreamService
from dreamstream.server.telemetry import Telemetry
from dreamstream.server.warmup import warm_up
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import CHANNEL_OPTIONS

log = logging.getLogger(__name__)

SERVICE_NAME = dream_pb2.DESCRIPTOR.services_by_name["DreamService"].full_name
# Health answers for the whole server ("") and for the Dream service by name.
_HEALTH_NAMES = ("", SERVICE_NAME)
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def model_health_name(model: str) -> str:
    """The health service name of one model: SERVING when it loaded, NOT_SERVING when refused."""
    return f"{SERVICE_NAME}/{model}"


class DreamServer:
    """The dreamstream server over a model repository.

    `start()` opens the port with health NOT_SERVING; `load()` loads the models (and with
    `warm_start`, runs one tiny dream on each) and turns health SERVING, so load balancers
    send no dream before it can run at full speed.
    `drain()` turns health NOT_SERVING again while the port stays open, refuses new
    dreams, and lets the running ones finish.
    """

    def __init__(
        self,
        models: ModelRepository,
        *,
        max_concurrent: int = 1,
        max_queue: int = 4,
        engine: DreamEngine | None = None,
        tls: TlsFiles | None = None,
        tokens: TokenSet | tuple[bytes, ...] = (),
        reflection: bool = True,
        reader_timeout: float = READER_TIMEOUT,
        telemetry: Telemetry | None = None,
        connections: ConnectionPolicy | None = None,
        warm_start: bool = False,
    ) -> None:
        self.models = models
        self.engine = engine or DreamEngine(models)
        self.port = 0
        self._tls = tls
        # A tuple is a fixed set (tests, embedding); `serve` passes the token file's TokenSet.
        self.tokens = tokens if isinstance(tokens, TokenSet) else TokenSet.fixed(tokens) if tokens else None
        self._reflection = reflection
        self._connections = connections or ConnectionPolicy()
        self._warm_start = warm_start
        # Every call enters through the data plane: this server's gRPC service, and any other
        # transport on the same process (which reaches it as `server.plane`).
        self.plane = DataPlane(
            self.engine,
            max_concurrent=max_concurrent,
            max_queue=max_queue,
            reader_timeout=reader_timeout,
            telemetry=telemetry,
        )
        self._service = DreamService(self.plane)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None
        self._http: HttpServer | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port) and return the port."""
        # Created here rather than in __init__: a grpc.aio server belongs to the event
        # loop it is created in, which must be the one that runs it.
        interceptors = [TokenAuth(self.tokens)] if self.tokens is not None else []
        options = [*CHANNEL_OPTIONS, *self._connections.grpc_options()]
        self._server = grpc.aio.server(options=options, interceptors=interceptors)
        dream_pb2_grpc.add_DreamServiceServicer_to_server(self._service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        if self._reflection:
            names = (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME)
            reflection.enable_server_reflection(names, self._server)
        await self._set_health(NOT_SERVING)
        address = f"{host}:{port}"
        if self._tls is not None:
            self.port = self._server.add_secure_port(address, self._tls.credentials())
        else:
            self.port = self._server.add_insecure_port(address)
        if not self.port:
            raise OSError(f"cannot listen on {address}")
        await self._server.start()
        log.info("listening on %s:%d%s", host, self.port, " (TLS)" if self._tls else "")
        return self.port

    async def start_http(self, host: str, port: int) -> int:
        """Also serve the HTTP gateway (the JSON/SSE API and the page at /) on host:port, with the
        same data plane, TLS files and tokens as gRPC; returns the port (0 picks one)."""
        # The same TokenSet as gRPC's interceptor: a token file read again applies to both at once.
        token_check = self.tokens.allows if self.tokens is not None else None
        self._http = HttpServer(gateway_app(self.plane, token_check=token_check), self._tls)
        return await self._http.start(host, port)

    async def load(self) -> None:
        """Load the models (unless already loaded) off the event loop, then serve."""
        if not self.models.loaded:
            await asyncio.to_thread(self.models.load)
        if self._warm_start:
            await asyncio.to_thread(warm_up, self.engine)
        for name in self.models.names():
            await self._health.set(model_health_name(name), SERVING)
        for name in self.models.refused:
            await self._health.set(model_health_name(name), NOT_SERVING)
        await self._set_health(SERVING)
        log.info("serving %s", ", ".join(self.models.names()))

    def reload_credentials(self) -> None:
        """SIGHUP: the token file read again now. The TLS files need no signal: they are looked at
        before every handshake (see security.CertificateReloader)."""
        if self.tokens is not None:
            self.tokens.reload()
        log.info("SIGHUP: token file read again%s", "" if self.tokens is not None else " (none given)")

    async def drain(self, grace: float) -> None:
        """Health NOT_SERVING at once (the port stays open), new and waiting dreams UNAVAILABLE,
        running dreams `grace` seconds to finish before they are stopped; then close."""
        await self._set_health(NOT_SERVING)
        for name in self.models.names():
            await self._health.set(model_health_name(name), NOT_SERVING)
        log.info("draining: no new dreams; running ones get %g s to finish", grace)
        if await self.plane.drain(grace):
            log.info("drained: every running dream finished")
        else:
            log.warning("drained: dreams still running after %g s were stopped", grace)
        await self.stop(grace=1.0)

    async def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, give running ones `grace` seconds, then stop."""
        await self._set_health(NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        if self._http is not None:
            await self._http.stop()
        self.plane.close()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in _HEALTH_NAMES:
            await self._health.set(name, status)
