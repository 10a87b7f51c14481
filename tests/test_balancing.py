"""Load balancing of long streams: one client over several replicas, replicas that go away,
connections the server recycles, and an L7 proxy (nginx) in front.

Replicas are real `dreamstream serve` processes on 127.0.0.2, .3 and .4 (one port, as the
pods behind a headless Service); each one's metrics tell which dreams it ran.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replicas import Replica, dreams_total, port_free_on_every
from system_packages import require_programs

HOSTS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]
# A small dream on seeded noise: the tests are about where dreams run, not how.
SMALL = {"width": 64, "height": 64, "octaves": 1, "steps_per_octave": 2}


def dream_frames(client: Any, **options: Any) -> list[Any]:
    from dreamstream.client.events import Frame

    return [event for event in client.dream(**{**SMALL, **options}) if isinstance(event, Frame)]


@pytest.fixture(scope="module")
def replicas(lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Replica]]:
    port = port_free_on_every(HOSTS)
    metrics_port = port_free_on_every(HOSTS)
    logs = tmp_path_factory.mktemp("replicas")
    started = [
        Replica(lite0_dir.parent, host, port, metrics_port, logs / f"{host}.log", "--no-warm-start") for host in HOSTS
    ]
    try:
        yield [replica.wait_until_serving() for replica in started]
    finally:
        for replica in started:
            replica.stop()


def every_replica(replicas: list[Replica]) -> str:
    """The target naming every replica, as a headless Service's DNS answer does."""
    return "ipv4:" + ",".join(replica.target for replica in replicas)


def test_one_clients_dreams_reach_every_replica(replicas: list[Replica]) -> None:
    from dreamstream.client import DreamClient

    before = [dreams_total(replica.metrics()) for replica in replicas]
    with DreamClient(every_replica(replicas)) as client:
        for _ in range(6):
            assert dream_frames(client)[-1].final
    ran = [dreams_total(replica.metrics()) - already for replica, already in zip(replicas, before, strict=True)]
    assert sum(ran) == 6
    assert all(count >= 1 for count in ran), f"dreams per replica: {ran}"


def test_a_client_on_one_address_still_reaches_it_alone(replicas: list[Replica]) -> None:
    from dreamstream.client import DreamClient

    with DreamClient(replicas[0].target) as client:
        assert dream_frames(client)[-1].final


def test_a_replica_that_refuses_for_now_costs_the_caller_nothing(
    start_server: Any, repository: Any, lite0_dir: Path
) -> None:
    """A server that answers UNAVAILABLE before any response (still loading, draining) is
    skipped: gRPC retries the call on another address, under the client's service config."""
    from dreamstream.client import DreamClient
    from dreamstream.server.models import ModelRepository

    serving = start_server(repository)
    # Never loaded: health NOT_SERVING, and every dream answered UNAVAILABLE.
    loading = start_server(ModelRepository(lite0_dir.parent, device="cpu"), load=False)
    with DreamClient(f"ipv4:{loading.target},{serving.target}") as client:
        for _ in range(4):
            assert dream_frames(client)[-1].final


def test_stream_longer_than_twice_the_max_connection_age_completes(start_server: Any, repository: Any) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.server.connections import ConnectionPolicy

    age = 0.3
    server = start_server(repository, connections=ConnectionPolicy(max_connection_age=age, max_connection_age_grace=60))
    with DreamClient(server.target) as client:
        began = time.monotonic()
        frames = dream_frames(client, width=160, height=160, steps_per_octave=80)
        took = time.monotonic() - began
    assert frames[-1].final
    assert took > 2 * age, f"the dream took {took:.2f} s: too short to outlive two connection ages"


def test_a_stream_outliving_the_grace_is_cut(start_server: Any, repository: Any) -> None:
    """The other side of the grace: it is what keeps long dreams alive on an aged-out connection."""
    from dreamstream.client import DreamClient
    from dreamstream.client.errors import DreamstreamError
    from dreamstream.server.connections import ConnectionPolicy

    server = start_server(
        repository, connections=ConnectionPolicy(max_connection_age=0.2, max_connection_age_grace=0.2)
    )
    with DreamClient(server.target) as client, pytest.raises(DreamstreamError):
        dream_frames(client, width=160, height=160, steps_per_octave=400)


# nginx as an L7 gRPC proxy in front of the replicas, with the settings long streams need
# (the README's Deploy section explains each).
NGINX_CONF = """
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    upstream dreamstream {{
{servers}
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port} http2;
        client_max_body_size 64m;
        client_body_timeout 660s;
        grpc_read_timeout 660s;
        grpc_send_timeout 660s;
        keepalive_timeout 660s;
        location / {{
            grpc_pass grpc://dreamstream;
        }}
    }}
}}
"""


def wait_until_listening(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {host}:{port}"
            time.sleep(0.1)


@pytest.fixture(scope="module")
def nginx(replicas: list[Replica], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx on 127.0.0.1, balancing over the replicas; yields its target."""
    require_programs({"nginx": "nginx"})
    directory = tmp_path_factory.mktemp("nginx")
    port = port_free_on_every(["127.0.0.1"])
    servers = "\n".join(f"        server {replica.target};" for replica in replicas)
    config = directory / "nginx.conf"
    config.write_text(NGINX_CONF.format(dir=directory, servers=servers, port=port))
    process = subprocess.Popen(["nginx", "-c", str(config), "-p", str(directory), "-e", str(directory / "error.log")])
    try:
        wait_until_listening("127.0.0.1", port)
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_nginx_in_front_of_the_replicas_streams_dreams_through(nginx: str, replicas: list[Replica]) -> None:
    import numpy as np

    from dreamstream.client import DreamClient
    from dreamstream.client.events import Frame, Progress

    # Noise does not compress: a PNG of about 2 MB, over nginx's default 1 MB body limit.
    picture = np.random.default_rng(0).integers(0, 256, (820, 820, 3), dtype=np.uint8)
    before = [dreams_total(replica.metrics()) for replica in replicas]
    with DreamClient(nginx) as client:
        for _ in range(3):
            events = list(client.dream(picture, max_size=64, octaves=2, steps_per_octave=2))
            frames = [event for event in events if isinstance(event, Frame)]
            assert [frame.final for frame in frames] == [False, True]
            assert sum(isinstance(event, Progress) for event in events) == 4  # streamed, step by step
    ran = [dreams_total(replica.metrics()) - already for replica, already in zip(replicas, before, strict=True)]
    assert sum(ran) == 3
    assert sum(count > 0 for count in ran) >= 2, f"nginx sent every dream to one replica: {ran}"


def test_a_replica_killed_mid_run_costs_the_caller_nothing(replicas: list[Replica]) -> None:
    from dreamstream.client import DreamClient

    with DreamClient(every_replica(replicas)) as client:
        for _ in range(3):
            assert dream_frames(client)[-1].final
        replicas[1].kill()
        for _ in range(6):
            assert dream_frames(client)[-1].final
