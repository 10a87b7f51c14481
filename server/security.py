"""Who may call the server: TLS credentials and bearer tokens, checked before any handler runs.

Tokens come from a file, one per line, so a new one can be added before the old
one is removed (rotation). Every call but the health checks must carry
`authorization: Bearer <token>` metadata; the comparison takes the same time
whatever the token, so nothing about a valid token leaks through timing.

Both files are read again while the server runs, so rotating needs no restart: the
token file when it changes (its inode, size or mtime, looked at on use at most once
every TOKEN_POLL_SECONDS) or on `reload()` (SIGHUP), the certificate files at each new
connection's handshake when they changed (gRPC asks before every handshake). A file
that cannot be used (empty, half-written, unreadable, not PEM) never replaces the last
good one: it is logged and the old tokens or certificates stay in force.
"""

from __future__ import annotations

import hmac
import logging
import os
import ssl
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health

from dreamstream.server.error_status import abort, call_request_id
from dreamstream.server.refusals import Unauthenticated

log = logging.getLogger(__name__)

AUTHORIZATION = "authorization"
BEARER = "Bearer "
# Health checks answer without a token: load balancers and orchestrators probe them.
_OPEN_SERVICES = (f"/{health.SERVICE_NAME}/",)
# How stale the tokens in force may be: a changed token file is read on the first call after this long.
TOKEN_POLL_SECONDS = 1.0


class SecurityError(ValueError):
    """A TLS or token file that cannot be used, said in terms of the flag that named it."""


def read_tokens(path: Path) -> tuple[bytes, ...]:
    """The tokens of a token file: one per line; blank lines and lines starting with # are skipped."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise SecurityError(f"--auth-token-file {path}: cannot read it ({error})") from error
    tokens = tuple(line.strip().encode() for line in lines if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise SecurityError(f"--auth-token-file {path} holds no token: write one token per line")
    return tokens


def token_matches(offered: bytes, tokens: tuple[bytes, ...]) -> bool:
    """Whether `offered` is one of `tokens`, comparing with every one in constant time."""
    matches = [hmac.compare_digest(offered, token) for token in tokens]
    return any(matches)


def _stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when a file is rewritten or replaced (inode, size, mtime); None when it is absent."""
    try:
        status = os.stat(path)
    except OSError:
        return None
    return (status.st_ino, status.st_size, status.st_mtime_ns)


class TokenSet:
    """The tokens calls may carry, read from a token file and read again when it changes.

    `allows()` is safe from any thread (the gRPC interceptor, an HTTP gateway): the set in
    force is replaced whole, never edited. Without a file (`fixed`), the tokens never change.
    """

    def __init__(self, path: Path | None, tokens: tuple[bytes, ...], poll_seconds: float = TOKEN_POLL_SECONDS) -> None:
        self.path = path
        self._tokens = tokens
        self._poll_seconds = poll_seconds
        self._stamp = _stamp(path) if path is not None else None
        self._next_look = time.monotonic() + poll_seconds
        self._lock = threading.Lock()

    @classmethod
    def from_file(cls, path: Path, poll_seconds: float = TOKEN_POLL_SECONDS) -> TokenSet:
        """The tokens of `path`; a file that cannot be used now is a SecurityError (the server does not start)."""
        stamp = _stamp(path)
        tokens = cls(path, read_tokens(path), poll_seconds)
        tokens._stamp = stamp  # the version read, even if the file changed since
        return tokens

    @classmethod
    def fixed(cls, tokens: tuple[bytes, ...]) -> TokenSet:
        return cls(None, tuple(tokens))

    def allows(self, offered: bytes) -> bool:
        """Whether `offered` is one of the tokens in force (compared in constant time)."""
        if self.path is not None and time.monotonic() >= self._next_look:
            self._reload_if_changed()
        return token_matches(offered, self._tokens)

    def reload(self) -> bool:
        """Read the file again now (SIGHUP); False, the old tokens kept, when it cannot be used."""
        if self.path is None:
            return True
        with self._lock:
            return self._read(_stamp(self.path))

    def _reload_if_changed(self) -> None:
        with self._lock:
            self._next_look = time.monotonic() + self._poll_seconds
            stamp = _stamp(self.path)
            if stamp != self._stamp:
                self._read(stamp)

    def _read(self, stamp: tuple[int, int, int] | None) -> bool:
        self._stamp = stamp  # a bad version is reported once, not at every look
        try:
            tokens = read_tokens(self.path)
        except SecurityError as error:
            log.warning("token file not reloaded, the %d tokens in force kept: %s", len(self._tokens), error)
            return False
        if tokens != self._tokens:
            log.info("token file %s reloaded: %d tokens", self.path, len(tokens))
        self._tokens = tokens
        return True


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA of client certificates (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def configuration(self) -> grpc.ServerCertificateConfiguration:
        """The files as they are now; SecurityError, naming the flag, when one cannot be used (not PEM,
        a key that is not the certificate's, a file changing while read)."""
        before = self.stamps()
        chain, key = _read("--tls-cert", self.cert), _read("--tls-key", self.key)
        client_ca = _read("--tls-client-ca", self.client_ca) if self.client_ca else None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(self.cert, self.key)
            if client_ca is not None:
                context.load_verify_locations(cadata=client_ca.decode("ascii", errors="replace"))
        except (ssl.SSLError, ValueError) as error:
            raise SecurityError(f"--tls-cert {self.cert} with --tls-key {self.key}: cannot be used ({error})") from None
        if self.stamps() != before:
            raise SecurityError(f"--tls-cert {self.cert} or its key changed while being read: read again later")
        return grpc.ssl_server_certificate_configuration([(key, chain)], root_certificates=client_ca)

    def credentials(self) -> grpc.ServerCredentials:
        """Credentials that take up rewritten files at the next handshake (see CertificateReloader)."""
        reloader = CertificateReloader(self)
        return grpc.dynamic_ssl_server_credentials(
            reloader.initial, reloader.fetch, require_client_authentication=self.client_ca is not None
        )

    def stamps(self) -> tuple[tuple[int, int, int] | None, ...]:
        return tuple(_stamp(path) for path in (self.cert, self.key, self.client_ca) if path is not None)


class CertificateReloader:
    """gRPC's certificate fetcher: a new configuration once the files changed and read well, else None.

    A certificate and its key are rewritten one after the other: until both have landed
    the pair does not match, and the one in force stays; so does it for a file that is
    not PEM (empty, half-written).
    """

    def __init__(self, files: TlsFiles) -> None:
        self._files = files
        self._stamps = files.stamps()
        self.initial = files.configuration()

    def fetch(self) -> grpc.ServerCertificateConfiguration | None:
        stamps = self._files.stamps()
        if stamps == self._stamps:
            return None
        self._stamps = stamps
        try:
            configuration = self._files.configuration()
        except SecurityError as error:
            log.warning("TLS files not reloaded, the certificate in force kept: %s", error)
            return None
        log.info("TLS files reloaded: %s", self._files.cert)
        return configuration


def _read(flag: str, path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise SecurityError(f"{flag} {path}: cannot read it ({error.strerror})") from error
    if b"-----BEGIN" not in data:
        raise SecurityError(f"{flag} {path} is not a PEM file")
    return data


class TokenAuth(grpc.aio.ServerInterceptor):
    """Answers UNAUTHENTICATED to calls without one of `tokens`; health checks pass without one."""

    def __init__(self, tokens: TokenSet) -> None:
        self._tokens = tokens

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(_OPEN_SERVICES):
            return handler
        refusal = self._refusal(details)
        return handler if refusal is None else _refusing(handler, refusal)

    def _refusal(self, details: grpc.HandlerCallDetails) -> Unauthenticated | None:
        """Why the call is refused (no token, or not one of ours), None when it may go on."""
        for key, value in details.invocation_metadata or ():
            if key == AUTHORIZATION and isinstance(value, str) and value.startswith(BEARER):
                if self._tokens.allows(value[len(BEARER) :].strip().encode()):
                    return None
                return Unauthenticated(_UNAUTHENTICATED, reason="WRONG_TOKEN")
        return Unauthenticated(_UNAUTHENTICATED)


_UNAUTHENTICATED = "send a valid token as `authorization: Bearer <token>` metadata (the client's --token-file)"


def _refusing(handler: grpc.RpcMethodHandler, refusal: Unauthenticated) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that answers UNAUTHENTICATED, with the details every
    error status carries."""

    async def refuse(request: object, context: grpc.aio.ServicerContext) -> None:
        await abort(context, refusal, call_request_id(context))

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **options)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **options)
    if handler.stream_stream:
        return grpc.stream_stream_rpc_method_handler(refuse, **options)
    return grpc.unary_unary_rpc_method_handler(refuse, **options)
