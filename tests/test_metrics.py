"""Prometheus metrics: scraped over HTTP after real dreams through a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from replicas import scrape

MODEL = "efficientnet-lite0"
SMALL = {"width": 64, "height": 64, "octaves": 2, "steps_per_octave": 3}


@pytest.fixture(scope="module")
def metered(start_server: Any, repository: Any) -> Iterator[tuple[Any, str]]:
    """A server whose dreams feed a DreamMetrics, and the URL of its metrics."""
    from dreamstream.server.metrics import DreamMetrics
    from dreamstream.server.telemetry import Telemetry

    metrics = DreamMetrics()
    port = metrics.serve("127.0.0.1", 0)
    server = start_server(repository, telemetry=Telemetry([metrics]), max_concurrent=1, max_queue=2)
    yield server, f"http://127.0.0.1:{port}/metrics"


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_dreams_steps_and_their_times_are_counted_by_model_and_code(metered: tuple[Any, str]) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.client.errors import InvalidRequest

    server, url = metered
    before = scrape(url)
    with DreamClient(server.target) as client:
        for _ in range(2):
            list(client.dream(**SMALL))
        with pytest.raises(InvalidRequest):
            list(client.dream(**SMALL, layers={"no-such-layer": 1.0}))
    after = scrape(url)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert added("dreamstream_dreams_total", model=MODEL, code="OK") == 2
    assert added("dreamstream_dreams_total", model="", code="INVALID_ARGUMENT") == 1
    assert added("dreamstream_steps_total", model=MODEL) == 2 * 2 * 3
    for histogram in ("dream_seconds", "queue_wait_seconds", "first_frame_seconds"):
        assert added(f"dreamstream_{histogram}_count", model=MODEL) == 2, histogram
        assert added(f"dreamstream_{histogram}_sum", model=MODEL) > 0 or histogram == "queue_wait_seconds"
    assert value(after, "dreamstream_inflight_dreams") == 0
    assert value(after, "dreamstream_queued_dreams") == 0
    assert value(after, "process_resident_memory_bytes") > 0


def test_inflight_and_queued_dreams_are_gauged_while_they_run(metered: tuple[Any, str]) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.client.events import Progress

    server, url = metered
    release = threading.Event()

    def long_dream(started: threading.Event) -> None:
        with DreamClient(server.target) as client:
            for event in client.dream(width=128, height=128, octaves=1, steps_per_octave=1000):
                if isinstance(event, Progress):
                    started.set()
                    if release.is_set():
                        break  # cancels the dream

    running, waiting = threading.Event(), threading.Event()
    first = threading.Thread(target=long_dream, args=(running,))
    first.start()
    try:
        assert running.wait(60)
        second = threading.Thread(target=long_dream, args=(waiting,))
        second.start()
        deadline = time.monotonic() + 30
        while value(scrape(url), "dreamstream_queued_dreams") < 1:
            assert time.monotonic() < deadline, "the second dream never showed as queued"
            time.sleep(0.05)
        assert value(scrape(url), "dreamstream_inflight_dreams") == 1
    finally:
        release.set()
        first.join(60)
    second.join(60)
    deadline = time.monotonic() + 30
    while value(samples := scrape(url), "dreamstream_inflight_dreams") or value(samples, "dreamstream_queued_dreams"):
        assert time.monotonic() < deadline, "the gauges did not return to 0"
        time.sleep(0.05)
    assert value(samples, "dreamstream_dreams_total", model=MODEL, code="CANCELLED") >= 1


def test_device_memory_gauges_show_what_nvml_reports() -> None:
    """On an NVIDIA machine, each GPU's memory; elsewhere (no driver, no nvidia-ml-py) nothing,
    rather than a made-up zero."""
    from dreamstream.server.metrics import DeviceMemoryCollector, nvml_memory

    readings = nvml_memory()
    families = {family.name: family for family in DeviceMemoryCollector().collect()}
    if not readings:
        assert families == {}
        return
    totals = {
        sample.labels["device"]: sample.value for sample in families["dreamstream_device_memory_total_bytes"].samples
    }
    assert totals == {device: total for device, (_, total) in readings.items()}
    assert all(total > 0 for total in totals.values())
