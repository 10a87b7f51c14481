"""The container image: the root Dockerfile, built for the CPU on a plain Debian base and run.

A private Docker daemon (tests/docker_engine.py) builds the image once per session from a
copy of the checkout's files, the way CI builds it; the container runs on the host's
network, listening on loopback only, and this test process is its independent client.
Skipped, saying why, where the container engine cannot be installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from conftest import BVLC_WEIGHTS
from docker_engine import DockerEngine
from grpc_health.v1 import health_pb2
from health import serving_status, wait_until_serving
from replicas import dreams_total, scrape

REPO = Path(__file__).resolve().parents[1]
IMAGE = "dreamstream-test:cpu"
BASE = "local/bookworm:test"
# The CA bundle pip trusts on this machine, handed to the build as a secret.
PIP_CA = Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
# Seconds `docker stop` leaves the server before it kills it.
STOP_GRACE = 30


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def build_context(destination: Path) -> Path:
    """The checkout's files as CI's clone has them (tracked, or new and not ignored), plus the
    BVLC weights under weights/ when ../shared has them, for a model exported at build time."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listed.split("\0")):
        source = REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    if BVLC_WEIGHTS.exists():
        (destination / "weights").mkdir()
        shutil.copy2(BVLC_WEIGHTS, destination / "weights" / BVLC_WEIGHTS.name)
    return destination


def models_to_export(context: Path) -> list[str]:
    models = ["efficientnet-lite0"]
    if (context / "weights" / BVLC_WEIGHTS.name).exists():
        models.append(f"googlenet-bvlc:weights/{BVLC_WEIGHTS.name}")
    return models


@pytest.fixture(scope="session")
def docker() -> Iterator[DockerEngine]:
    docker = DockerEngine()
    yield docker
    docker.stop()


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    models: list[str]  # the models exported into it at build time


@pytest.fixture(scope="session")
def image(docker: DockerEngine, tmp_path_factory: pytest.TempPathFactory) -> BuiltImage:
    """The CPU image, built once per session."""
    docker.import_debian_base(BASE)
    context = build_context(tmp_path_factory.mktemp("context"))
    models = models_to_export(context)
    build_args = {"BASE": BASE, "EXTRA": "server", "MODELS": " ".join(models)}
    options = [f"--build-arg={name}={value}" for name, value in build_args.items()]
    if PIP_CA.is_file():
        options.append(f"--secret=id=pipca,src={PIP_CA}")
    docker("build", "--network=host", *options, f"--tag={IMAGE}", str(context), timeout=1800)
    return BuiltImage(IMAGE, [entry.split(":")[0] for entry in models])


class Container:
    """`docker run -d` of the image on the host's network; the server on 127.0.0.1:port."""

    def __init__(self, docker: DockerEngine, image: BuiltImage, *args: str, run_options: tuple[str, ...] = ()) -> None:
        self.docker = docker
        self.port = free_port()
        self.target = f"127.0.0.1:{self.port}"
        self.metrics_port = free_port()
        self.http_port = free_port()
        serve = ["serve", "--host", "127.0.0.1", "--port", str(self.port), "--device", "cpu"]
        serve += ["--metrics-port", str(self.metrics_port), "--http-port", str(self.http_port), *args]
        self.id = docker("run", "--detach", "--network=host", *run_options, image.tag, *serve).strip()

    def server_status(self, field: str) -> int:
        """A kB figure of the server process's /proc status (VmHWM: its peak), read from the host."""
        processes = self.docker("top", self.id, "-o", "pid,args").splitlines()[1:]
        pid = next(line.split()[0] for line in processes if " serve " in f" {line} " and "tini" not in line)
        text = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(rf"^{field}:\s+(\d+) kB", text, re.MULTILINE).group(1))

    def inspect(self) -> dict:
        return json.loads(self.docker("inspect", self.id))[0]

    def logs(self) -> str:
        return self.docker("logs", self.id, stderr_too=True)  # the server logs on its stderr

    def wait_until_serving(self) -> None:
        try:
            wait_until_serving(self.target)
        except AssertionError as error:
            raise AssertionError(f"{error}; container state {self.inspect()['State']}") from None

    def remove(self) -> None:
        self.docker("rm", "--force", self.id)


@pytest.fixture(scope="module")
def container(docker: DockerEngine, image: BuiltImage) -> Iterator[Container]:
    running = Container(docker, image)
    running.wait_until_serving()
    yield running
    running.remove()


def test_the_server_in_the_container_reports_serving(container: Container) -> None:
    from grpc_health.v1 import health_pb2

    assert serving_status(container.target) == health_pb2.HealthCheckResponse.SERVING


def test_a_client_on_the_host_dreams_through_the_container(container: Container) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.client.events import Frame

    with DreamClient(container.target) as client:
        events = list(client.dream(REPO / "samples" / "coffee.jpg", octaves=2, max_size=96))
    frames = [event for event in events if isinstance(event, Frame)]
    assert [frame.final for frame in frames] == [False, True]
    assert max(frames[-1].image().size) == 96


def test_prometheus_scrapes_the_dreams_the_container_ran(container: Container) -> None:
    from dreamstream.client import DreamClient

    with DreamClient(container.target) as client:
        list(client.dream(width=64, height=64, octaves=1, steps_per_octave=2))
    samples = scrape(f"http://127.0.0.1:{container.metrics_port}/metrics")
    assert dreams_total(samples) >= 1
    for kind in ("dream", "video", "zoom", "classify"):
        assert samples[("dreamstream_inflight_dreams", (("kind", kind),))] == 0
        assert samples[("dreamstream_queued_dreams", (("kind", kind),))] == 0
    names = {name for name, _ in samples}
    for histogram in ("dream_seconds", "queue_wait_seconds", "first_frame_seconds"):
        assert f"dreamstream_{histogram}_count" in names
    assert "dreamstream_steps_total" in names


def test_the_http_gateway_serves_the_page_and_streams_a_dream_from_the_container(container: Container) -> None:
    import httpx

    url = f"http://127.0.0.1:{container.http_port}"
    assert httpx.get(f"{url}/", timeout=30).status_code == 200
    picture = (REPO / "samples" / "coffee.jpg").read_bytes()
    fields = {"octaves": "1", "steps_per_octave": "1", "max_size": "64"}
    answer = httpx.post(f"{url}/api/dreams", files={"image": ("coffee.jpg", picture)}, data=fields, timeout=120)
    assert answer.status_code == 200 and answer.text.rstrip().splitlines()[-2] == "event: done"


def test_the_models_exported_at_build_time_are_served(container: Container, image: BuiltImage) -> None:
    from dreamstream.client import DreamClient

    with DreamClient(container.target) as client:
        served = {model.name: model.default for model in client.models()}
    assert sorted(served) == sorted(image.models)
    assert served["efficientnet-lite0"] is True


def test_every_process_in_the_container_runs_as_the_non_root_user(container: Container) -> None:
    processes = container.docker("top", container.id, "-o", "pid,uid,args").splitlines()[1:]
    assert {line.split()[1] for line in processes} == {"10001"}, processes


def test_the_image_runs_dreamstream_under_tini_serving_its_models_and_metrics_on_every_address(
    docker: DockerEngine, image: BuiltImage
) -> None:
    config = json.loads(docker("image", "inspect", image.tag))[0]["Config"]
    assert config["User"] == "10001:10001"
    assert config["Entrypoint"] == ["/usr/bin/tini", "--", "dreamstream"]
    assert (
        config["Cmd"]
        == (
            "serve --models /models --host 0.0.0.0 --port 50051 --metrics-port 9090 --http-port 8080 "
            "--memory-budget auto"
        ).split()
    )
    assert set(config["ExposedPorts"]) == {"50051/tcp", "9090/tcp", "8080/tcp"}


def test_docker_stop_ends_the_server_with_exit_code_0(docker: DockerEngine, image: BuiltImage) -> None:
    """SIGTERM reaches the server through tini, and it exits cleanly before the kill."""
    stopped = Container(docker, image)
    try:
        stopped.wait_until_serving()
        docker("stop", "--time", str(STOP_GRACE), stopped.id, timeout=STOP_GRACE + 60)
        state = stopped.inspect()["State"]
        assert (state["ExitCode"], state["OOMKilled"]) == (0, False), stopped.logs()
    finally:
        stopped.remove()


def test_no_layer_holds_the_build_secret(docker: DockerEngine, image: BuiltImage, tmp_path: Path) -> None:
    """The CA bundle given to pip as a BuildKit secret is in none of the image's layers."""
    if not PIP_CA.is_file():
        pytest.skip(f"{PIP_CA} is absent: the build had no secret")
    secret = PIP_CA.read_bytes()
    saved = tmp_path / "image.tar"
    docker("save", "--output", str(saved), image.tag)
    with tarfile.open(saved) as image_tar:
        for layer in (member for member in image_tar if member.name.endswith("layer.tar")):
            with tarfile.open(fileobj=image_tar.extractfile(layer)) as layer_tar:
                for file in layer_tar:
                    if file.isfile() and file.size == len(secret):
                        content = layer_tar.extractfile(file).read()
                        assert hashlib.sha256(content).digest() != hashlib.sha256(secret).digest(), file.name


MEMORY_LIMIT_MIB = 2048


@pytest.mark.timeout(1800)  # the image's build, when this test runs first, and the burst on 2 shared cores
def test_a_server_with_no_memory_flag_in_a_2_gib_container_survives_a_burst_of_the_largest_legal_mix(
    docker: DockerEngine, image: BuiltImage
) -> None:
    """`--memory-budget auto` (the default) reads the container's limit from its cgroup: a burst of the
    largest requests it accepts (dreams at the largest untiled side on each model's deepest layer, a
    tiled dream, a guided one, a video, a zoom, classifications) all run, and the server's peak stays
    under the limit: no OOM kill, still serving."""
    from dreamstream.client import DreamClient

    limited = Container(
        docker,
        image,
        *("--max-concurrent", "4", "--max-queue", "16", "--no-warm-start"),
        run_options=(f"--memory={MEMORY_LIMIT_MIB}m", f"--memory-swap={MEMORY_LIMIT_MIB}m"),
    )
    try:
        limited.wait_until_serving()
        assert re.search(rf"memory: cgroup v[12] \S+ {MEMORY_LIMIT_MIB:,} MiB", limited.logs()), limited.logs()
        began = time.monotonic()
        with DreamClient(limited.target) as client:
            failures = _burst(client, REPO / "samples" / "coffee.jpg")
        peak_mib = limited.server_status("VmHWM") / 1024
        state = limited.inspect()["State"]
        seconds = time.monotonic() - began
        print(f"container burst: {seconds:.0f} s, server peak {peak_mib:.0f} MiB of {MEMORY_LIMIT_MIB} MiB")
        assert failures == [], (failures, limited.logs()[-3000:])
        assert state["Running"] and not state["OOMKilled"], state
        assert serving_status(limited.target) == health_pb2.HealthCheckResponse.SERVING
        assert peak_mib < MEMORY_LIMIT_MIB
    finally:
        limited.remove()


def _burst(client, coffee: Path) -> list[BaseException]:
    """The largest legal mix at once, each call in its own thread; what failed."""
    models = {model.name: model for model in client.models()}
    one_step = {"octaves": 1, "steps_per_octave": 1}

    def largest_dream(name: str, seed: int) -> None:
        model = models[name]
        side, deepest = model.max_untiled_size, {model.layers[-1].name: 1.0}
        list(client.dream(width=side, height=side, model=name, layers=deepest, seed=seed, **one_step))

    side = models["efficientnet-lite0"].max_untiled_size
    deepest_lite0 = {models["efficientnet-lite0"].layers[-1].name: 1.0}  # a guide takes the layers of one group
    frame = np.full((side, side, 3), 128, np.uint8)
    calls = [
        lambda: largest_dream("efficientnet-lite0", 1),
        lambda: list(client.dream(width=2 * side, height=2 * side, tile_size=512, **one_step)),  # tiled
        lambda: list(client.dream(coffee, max_size=side, guide=coffee, layers=deepest_lite0, **one_step)),
        lambda: list(client.dream_video([frame, frame, frame], **one_step)),
        lambda: list(client.zoom(width=side, height=side, frames=3, **one_step)),
        lambda: client.classify(coffee),
    ]
    if "googlenet-bvlc" in models:
        calls.append(lambda: largest_dream("googlenet-bvlc", 3))
    failures: list[BaseException] = []

    def run(call) -> None:
        try:
            call()
        except Exception as error:  # reported by the test, with the container's log
            failures.append(error)

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    return failures
