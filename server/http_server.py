"""uvicorn on the gRPC server's own event loop: the HTTP port of `serve --http-port`.

The socket is bound here, so that a taken port is an OSError the command reports in one
line (uvicorn itself would exit the process), and uvicorn's signal handlers are left out:
the server's own SIGTERM handling drains gRPC and HTTP together. Rewritten TLS files are
taken up for the next handshakes, as gRPC's credentials take them up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
from collections.abc import Generator

import uvicorn
from starlette.types import ASGIApp

from dreamstream.server.security import SecurityError, TlsFiles

log = logging.getLogger(__name__)

# Seconds open HTTP responses get once the gateway stops (after the drain ended the dreams).
_CLOSE_GRACE = 2
# How often the TLS files are looked at (their inode, size and mtime) for a rewrite.
TLS_POLL_SECONDS = 1.0


class _Server(uvicorn.Server):
    """uvicorn without its signal handlers: `serve` installs its own for gRPC and HTTP alike."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class HttpServer:
    """An ASGI app served on host:port, TLS with the server's --tls-cert and --tls-key."""

    def __init__(self, app: ASGIApp, tls: TlsFiles | None = None) -> None:
        self._app = app
        self._tls = tls
        self._server: _Server | None = None
        self._task: asyncio.Task[None] | None = None
        self._tls_watch: asyncio.Task[None] | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        """Listen on host:port (0 picks a free port) and return the port."""
        listening = _bind(host, port)
        self.port = listening.getsockname()[1]
        config = uvicorn.Config(
            self._app,
            log_config=None,  # the server's logging, text or JSON, as configured by `serve`
            access_log=False,  # each dream has its access line from the data plane
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=_CLOSE_GRACE,
            **self._tls_settings(),
        )
        config.load()  # here rather than in serve(): its SSL context is the one the watch reloads
        if self._tls is not None and config.ssl is not None:
            self._tls_watch = asyncio.create_task(_take_up_rewritten_files(self._tls, config.ssl))
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[listening]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises what stopped it
                raise OSError(f"the HTTP server on {host}:{self.port} stopped while starting")
            await asyncio.sleep(0.01)
        log.info("http on %s:%d%s", host, self.port, " (TLS)" if self._tls else "")
        return self.port

    def _tls_settings(self) -> dict[str, object]:
        if self._tls is None:
            return {}
        settings: dict[str, object] = {"ssl_certfile": str(self._tls.cert), "ssl_keyfile": str(self._tls.key)}
        if self._tls.client_ca is not None:  # mutual TLS, as gRPC asks it
            settings.update(ssl_ca_certs=str(self._tls.client_ca), ssl_cert_reqs=ssl.CERT_REQUIRED)
        return settings

    async def stop(self) -> None:
        """Close the port and the open responses (their dreams ended in the drain)."""
        if self._tls_watch is not None:
            self._tls_watch.cancel()
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(Exception):
            await self._task


def _bind(host: str, port: int) -> socket.socket:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    listening = socket.create_server((host, port), family=family, backlog=128)
    listening.setblocking(False)
    return listening


async def _take_up_rewritten_files(files: TlsFiles, context: ssl.SSLContext) -> None:
    """Load rewritten certificate and key files into `context`, for the handshakes after it.

    A pair that does not read well or does not match (half-written, or one file rewritten
    before the other) is not taken: the certificate in force stays until a good pair lands.
    """
    stamps = files.stamps()
    while True:
        await asyncio.sleep(TLS_POLL_SECONDS)
        if files.stamps() == stamps:
            continue
        stamps = files.stamps()
        try:
            files.configuration()  # raises SecurityError, naming the flag, for a pair that cannot be used
            context.load_cert_chain(files.cert, files.key)
            if files.client_ca is not None:
                context.load_verify_locations(files.client_ca)
        except (SecurityError, ssl.SSLError, OSError) as error:
            log.warning("HTTPS: TLS files not reloaded, the certificate in force kept: %s", error)
            continue
        log.info("HTTPS: TLS files reloaded: %s", files.cert)
