"""How long the server keeps a client's connection, so that load balancing works for long streams.

A gRPC client keeps one HTTP/2 connection to a server for all its calls, so a load
balancer that spreads connections (kube-proxy, a cloud L4 balancer) never moves a busy
client off the replica it first reached, and a replica added later gets no work.
`max_connection_age` bounds that: the server sends GOAWAY once a connection is that old,
the client opens a new one (to whichever replica the balancer picks) for its next calls,
and the streams already running get `max_connection_age_grace` to finish, which must be
at least the longest dream. Keepalive pings find dead peers behind NATs and proxies.
"""

from __future__ import annotations

from dataclasses import dataclass

# Defaults a platform team can live with: connections recycled every 5 minutes; a running
# dream keeps its connection for up to 10 minutes more (the longest dream the server allows).
DEFAULT_KEEPALIVE_TIME = 60.0
DEFAULT_KEEPALIVE_TIMEOUT = 20.0
DEFAULT_MAX_CONNECTION_AGE = 300.0
DEFAULT_MAX_CONNECTION_AGE_GRACE = 600.0
# Clients may ping this often (dreamstream's own client pings every 30 s); gRPC's default
# of 5 minutes would answer more frequent pings with GOAWAY "too_many_pings".
MIN_CLIENT_PING_INTERVAL = 10.0


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


@dataclass(frozen=True)
class ConnectionPolicy:
    """Keepalive and connection age, in seconds; max_connection_age None keeps connections forever."""

    keepalive_time: float = DEFAULT_KEEPALIVE_TIME
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connection_age: float | None = DEFAULT_MAX_CONNECTION_AGE
    max_connection_age_grace: float = DEFAULT_MAX_CONNECTION_AGE_GRACE

    def grpc_options(self) -> list[tuple[str, int]]:
        options = [
            ("grpc.keepalive_time_ms", _ms(self.keepalive_time)),
            ("grpc.keepalive_timeout_ms", _ms(self.keepalive_timeout)),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.http2.min_recv_ping_interval_without_data_ms", _ms(MIN_CLIENT_PING_INTERVAL)),
            ("grpc.http2.max_ping_strikes", 0),  # never GOAWAY a client for pinging
        ]
        if self.max_connection_age is not None:
            options += [
                ("grpc.max_connection_age_ms", _ms(self.max_connection_age)),
                ("grpc.max_connection_age_grace_ms", _ms(self.max_connection_age_grace)),
            ]
        return options
