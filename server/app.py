"""The gRPC server: the Dream service, the standard health service and reflection, on one port."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from dreamstream.server.engine import DreamEngine
from dreamstream.server.models import ModelRepository
from dreamstream.server.service import DreamService
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import CHANNEL_OPTIONS

log = logging.getLogger(__name__)

SERVICE_NAME = dream_pb2.DESCRIPTOR.services_by_name["DreamService"].full_name
# Health answers for the whole server ("") and for the Dream service by name.
_HEALTH_NAMES = ("", SERVICE_NAME)


class DreamServer:
    """The dreamstream server over a model repository.

    `start()` opens the port with health NOT_SERVING; `load()` loads the models
    and turns health SERVING, so load balancers send no dream before it can run.
    """

    def __init__(
        self,
        models: ModelRepository,
        *,
        max_concurrent: int = 1,
        max_queue: int = 4,
        engine: DreamEngine | None = None,
    ) -> None:
        self.models = models
        self.engine = engine or DreamEngine(models)
        self.port = 0
        self._service = DreamService(self.engine, max_concurrent=max_concurrent, max_queue=max_queue)
        self._health = health.aio.HealthServicer()
        self._server: grpc.aio.Server | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen on host:port (0 picks a free port) and return the port."""
        # Created here rather than in __init__: a grpc.aio server belongs to the event
        # loop it is created in, which must be the one that runs it.
        self._server = grpc.aio.server(options=list(CHANNEL_OPTIONS))
        dream_pb2_grpc.add_DreamServiceServicer_to_server(self._service, self._server)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        reflection.enable_server_reflection((SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self._server)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        self.port = self._server.add_insecure_port(f"{host}:{port}")
        if not self.port:
            raise OSError(f"cannot listen on {host}:{port}")
        await self._server.start()
        log.info("listening on %s:%d", host, self.port)
        return self.port

    async def load(self) -> None:
        """Load the models (unless already loaded) off the event loop, then serve."""
        if not self.models.loaded:
            await asyncio.to_thread(self.models.load)
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        log.info("serving %s", ", ".join(self.models.names()))

    async def stop(self, grace: float | None = 5.0) -> None:
        """Refuse new calls, give running ones `grace` seconds, then stop."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        if self._server is not None:
            await self._server.stop(grace)
        self._service.close()

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in _HEALTH_NAMES:
            await self._health.set(name, status)
