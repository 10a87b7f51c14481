"""How a client reaches a server: plain or TLS channel, and the bearer token sent with each call.

A token is taken from, in order: the `token` argument, the `token_file`
argument (its first line), or the DREAMSTREAM_TOKEN environment variable.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import grpc

TOKEN_ENV = "DREAMSTREAM_TOKEN"


class ConnectionSettingsError(ValueError):
    """A CA, certificate, key or token file that cannot be read."""


@dataclass(frozen=True)
class Connection:
    """TLS and token settings of a client. No TLS unless `tls` or one of the PEM files is given.

    `ca_file`: the CA that signed the server's certificate (default: the system's roots);
    `cert_file` and `key_file`: the client's own certificate, for servers that demand one
    (mutual TLS).
    """

    tls: bool = False
    ca_file: str | os.PathLike[str] | None = None
    cert_file: str | os.PathLike[str] | None = None
    key_file: str | os.PathLike[str] | None = None
    token: str | None = None
    token_file: str | os.PathLike[str] | None = None

    @property
    def uses_tls(self) -> bool:
        return self.tls or any(path is not None for path in (self.ca_file, self.cert_file, self.key_file))

    def credentials(self) -> grpc.ChannelCredentials:
        if (self.cert_file is None) != (self.key_file is None):
            raise ConnectionSettingsError("a client certificate needs both cert_file and key_file")
        return grpc.ssl_channel_credentials(
            root_certificates=_read(self.ca_file, "CA file"),
            private_key=_read(self.key_file, "key file"),
            certificate_chain=_read(self.cert_file, "certificate file"),
        )

    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying the token, if there is one."""
        token = self.token
        if token is None and self.token_file is not None:
            text = _read(self.token_file, "token file").decode().strip()
            token = text.splitlines()[0].strip() if text else ""
            if not token:
                raise ConnectionSettingsError(f"token file {self.token_file} is empty")
        if token is None:
            token = os.environ.get(TOKEN_ENV) or None
        return (("authorization", f"Bearer {token}"),) if token else ()


def _read(path: str | os.PathLike[str] | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ConnectionSettingsError(f"cannot read the {what} {path}: {error.strerror}") from None
