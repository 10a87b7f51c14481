"""How a client spreads its dreams over the replicas of a service, and rides out a lost one.

A target may name several servers: `ipv4:10.0.0.1:50051,10.0.0.2:50051`, or a DNS name
that resolves to all of them, such as a Kubernetes headless Service
(`dns:///dreamstream-headless:50051`). The client keeps a connection to each and sends
every call to the next one (round_robin; gRPC's default, pick_first, would send them all
to the first address). When the name resolves anew (a pod added, a server's GOAWAY after
its max connection age), the set follows.

A call that a server answers UNAVAILABLE before sending anything (it is draining, still
loading, or went away) is tried again on the next one by the client itself
(`retries.Attempts`), so the caller never sees it. A dream that has started is never
repeated: its frames were already delivered.

gRPC's own retries (a `retryPolicy` here, with `grpc.enable_retries`) did this before and
are off: with them, a blocking call refused UNAVAILABLE and waiting to be tried again when
its server's connection went away (a server finishing its drain and exiting) never ended,
not at its deadline, not on `cancel()` (grpcio 1.62.3 and 1.85.3 alike; the asyncio
channel was spared). tests/test_drain.py sends such calls.
"""

from __future__ import annotations

import json

from dreamstream.wire import CHANNEL_OPTIONS

SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}

# Seconds between the client's keepalive pings on a connection with calls open: a server that
# vanished without closing its connections (a node lost) is noticed within ping + timeout.
KEEPALIVE_TIME = 30
KEEPALIVE_TIMEOUT = 10

CLIENT_CHANNEL_OPTIONS = (
    *CHANNEL_OPTIONS,
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 0),  # see above: the client tries again itself
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT * 1000),
)
