"""Real `dreamstream serve` processes, as replicas of one service on loopback addresses.

Each replica listens on its own address of 127.0.0.0/8 (127.0.0.2, .3, ...) with the same
port, as pods behind a headless Service do, and serves its Prometheus metrics there too,
so a test can see which replica ran which dreams.
"""

from __future__ import annotations

import socket
import subprocess
import urllib.request
from pathlib import Path

from health import wait_until_serving
from prometheus_client.parser import text_string_to_metric_families
from serve_process import CLI


def port_free_on_every(hosts: list[str]) -> int:
    """A port that is free on each of `hosts` (asked of the first, checked on the others)."""
    for _ in range(50):
        with socket.socket() as probe:
            probe.bind((hosts[0], 0))
            port = probe.getsockname()[1]
        try:
            for host in hosts[1:]:
                with socket.socket() as other:
                    other.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError(f"no port free on all of {hosts}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus endpoint: (name, sorted labels) -> value."""
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def dreams_total(samples: dict, code: str = "OK") -> float:
    return sum(
        value
        for (name, labels), value in samples.items()
        if name == "dreamstream_dreams_total" and dict(labels).get("code") == code
    )


class Replica:
    """`dreamstream serve` on host:port with metrics on host:metrics_port, until stopped or killed."""

    def __init__(self, models: Path, host: str, port: int, metrics_port: int, log: Path, *flags: str) -> None:
        self.host = host
        self.log = log
        self.target = f"{host}:{port}"
        self.metrics_url = f"http://{host}:{metrics_port}/metrics"
        command = [*CLI, "serve", "--models", str(models), "--host", host, "--port", str(port)]
        command += ["--metrics-port", str(metrics_port), "--device", "cpu", "--threads", "1", *flags]
        with open(log, "wb") as output:
            self.process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT)

    def wait_until_serving(self) -> Replica:
        try:
            wait_until_serving(self.target)
        except AssertionError:
            self.stop()
            raise AssertionError(f"replica {self.target} did not start: {self.log.read_text()[-3000:]}") from None
        return self

    def metrics(self) -> dict:
        return scrape(self.metrics_url)

    def kill(self) -> None:
        """SIGKILL: the replica vanishes at once, as a pod on a lost node does."""
        self.process.kill()
        self.process.wait(timeout=30)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
