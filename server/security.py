"""Who may call the server: TLS credentials and bearer tokens, checked before any handler runs.

Tokens come from a file, one per line, so a new one can be added before the old
one is removed (rotation). Every call but the health checks must carry
`authorization: Bearer <token>` metadata; the comparison takes the same time
whatever the token, so nothing about a valid token leaks through timing.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health

from dreamstream.server.error_status import abort, call_request_id
from dreamstream.server.refusals import Unauthenticated

AUTHORIZATION = "authorization"
BEARER = "Bearer "
# Health checks answer without a token: load balancers and orchestrators probe them.
_OPEN_SERVICES = (f"/{health.SERVICE_NAME}/",)


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


@dataclass(frozen=True)
class TlsFiles:
    """PEM files: the server's certificate chain and key, and the CA of client certificates (mutual TLS)."""

    cert: Path
    key: Path
    client_ca: Path | None = None

    def credentials(self) -> grpc.ServerCredentials:
        chain, key = _read("--tls-cert", self.cert), _read("--tls-key", self.key)
        client_ca = _read("--tls-client-ca", self.client_ca) if self.client_ca else None
        return grpc.ssl_server_credentials(
            [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


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

    def __init__(self, tokens: tuple[bytes, ...]) -> None:
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
                if token_matches(value[len(BEARER) :].strip().encode(), self._tokens):
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
