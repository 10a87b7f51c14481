"""How a client spreads its dreams over the replicas of a service, and rides out a lost one.

A target may name several servers: `ipv4:10.0.0.1:50051,10.0.0.2:50051`, or a DNS name
that resolves to all of them, such as a Kubernetes headless Service
(`dns:///dreamstream-headless:50051`). The client keeps a connection to each and sends
every call to the next one (round_robin; gRPC's default, pick_first, would send them all
to the first address). When the name resolves anew (a pod added, a server's GOAWAY after
its max connection age), the set follows.

A call that a server answers UNAVAILABLE before sending anything (it is draining, still
loading, or went away) is tried again on another one by gRPC itself, so the caller never
sees it. A dream that has started is never repeated: its frames were already delivered.
"""

from __future__ import annotations

import json

from dreamstream.v1 import dream_pb2
from dreamstream.wire import CHANNEL_OPTIONS, MAX_MESSAGE_BYTES

_SERVICE = dream_pb2.DESCRIPTOR.services_by_name["DreamService"].full_name

SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "methodConfig": [
        {
            "name": [{"service": _SERVICE}],
            "retryPolicy": {
                "maxAttempts": 5,  # gRPC's ceiling
                "initialBackoff": "0.1s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ],
}

# Seconds between the client's keepalive pings on a connection with calls open: a server that
# vanished without closing its connections (a node lost) is noticed within ping + timeout.
KEEPALIVE_TIME = 30
KEEPALIVE_TIMEOUT = 10

CLIENT_CHANNEL_OPTIONS = (
    *CHANNEL_OPTIONS,
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
    ("grpc.enable_retries", 1),
    # gRPC retries a call only while its request is still buffered: raise the buffers (256 KiB
    # by default) to the largest request, or calls with a large picture would never be retried.
    ("grpc.per_rpc_retry_buffer_size", MAX_MESSAGE_BYTES),
    ("grpc.retry_buffer_size", 4 * MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME * 1000),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT * 1000),
)
