"""Waiting for a server, started in another process or container, to report SERVING."""

from __future__ import annotations

import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def serving_status(target: str, timeout: float = 2.0) -> int | None:
    """The server's grpc.health.v1 status for the whole server, None while it does not answer."""
    with grpc.insecure_channel(target) as channel:
        try:
            return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=timeout).status
        except grpc.RpcError:
            return None


def wait_until_serving(target: str, timeout: float = 120.0) -> None:
    """Return once `target` reports SERVING; AssertionError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while serving_status(target) != health_pb2.HealthCheckResponse.SERVING:
        assert time.monotonic() < deadline, f"{target} did not report SERVING within {timeout:.0f} s"
        time.sleep(0.25)
