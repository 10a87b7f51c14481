"""Prometheus metrics: scraped over HTTP after real dreams through a real server."""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import shared_image
from replicas import scrape

REPO = Path(__file__).resolve().parents[1]
MODEL = "efficientnet-lite0"
SMALL = {"width": 64, "height": 64, "octaves": 2, "steps_per_octave": 3}


@pytest.fixture(scope="module")
def metered(start_server: Any, repository: Any) -> Iterator[tuple[Any, str]]:
    """A server whose dreams feed a DreamMetrics, and the URL of its metrics."""
    from dreamstream.server.access_log import AccessLog
    from dreamstream.server.metrics import DreamMetrics
    from dreamstream.server.telemetry import Telemetry

    metrics = DreamMetrics()
    port = metrics.serve("127.0.0.1", 0)
    server = start_server(repository, telemetry=Telemetry([metrics, AccessLog()]), max_concurrent=1, max_queue=2)
    yield server, f"http://127.0.0.1:{port}/metrics"


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


KINDS = ("dream", "video", "zoom", "classify")


def gauges_are_at_zero(samples: dict) -> bool:
    """Every kind's in-flight and queued gauge is exported, and reads 0."""
    gauges = [
        samples[(name, (("kind", kind),))]
        for name in ("dreamstream_inflight_dreams", "dreamstream_queued_dreams")
        for kind in KINDS
    ]
    return gauges == [0.0] * len(gauges)


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

    assert added("dreamstream_dreams_total", kind="dream", model=MODEL, code="OK") == 2
    assert added("dreamstream_dreams_total", kind="dream", model="", code="INVALID_ARGUMENT") == 1
    assert added("dreamstream_steps_total", model=MODEL) == 2 * 2 * 3
    for histogram in ("dream_seconds", "queue_wait_seconds", "first_frame_seconds"):
        assert added(f"dreamstream_{histogram}_count", kind="dream", model=MODEL) == 2, histogram
        assert added(f"dreamstream_{histogram}_sum", kind="dream", model=MODEL) > 0 or histogram == "queue_wait_seconds"
    assert gauges_are_at_zero(after)
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
        while value(scrape(url), "dreamstream_queued_dreams", kind="dream") < 1:
            assert time.monotonic() < deadline, "the second dream never showed as queued"
            time.sleep(0.05)
        assert value(scrape(url), "dreamstream_inflight_dreams", kind="dream") == 1
    finally:
        release.set()
        first.join(60)
    second.join(60)
    deadline = time.monotonic() + 30
    while not gauges_are_at_zero(samples := scrape(url)):
        assert time.monotonic() < deadline, "the gauges did not return to 0"
        time.sleep(0.05)
    assert value(samples, "dreamstream_dreams_total", kind="dream", model=MODEL, code="CANCELLED") >= 1


def test_videos_zooms_and_classifications_are_counted_by_kind_and_their_gauges_return_to_zero(
    metered: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    """Every call takes a slot, so every call is counted and logged with its kind: a replica busy
    with videos is seen as busy (the autoscaler sums the in-flight gauge over kinds)."""
    from PIL import Image

    from dreamstream.client import DreamClient
    from dreamstream.client.errors import InvalidRequest

    server, url = metered
    coffee = shared_image("coffee.png")
    clip = [Image.open(coffee).convert("RGB").resize((64, 48))] * 3
    tiny = {"max_size": 64, "octaves": 1, "steps_per_octave": 2}
    before = scrape(url)
    with caplog.at_level(logging.INFO, logger="dreamstream.server.access"), DreamClient(server.target) as client:
        assert len(list(client.dream_video(clip, **tiny))) == 3
        assert len(list(client.zoom(coffee, frames=2, **tiny))) == 2
        assert client.classify(shared_image("chelsea.png"), top=2)
        with pytest.raises(InvalidRequest):
            list(client.zoom(coffee, frames=0, **tiny))
    after = scrape(url)

    def added(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    for kind in ("video", "zoom", "classify"):
        assert added("dreamstream_dreams_total", kind=kind, model=MODEL, code="OK") == 1, kind
        assert added("dreamstream_dream_seconds_count", kind=kind, model=MODEL) == 1, kind
        assert added("dreamstream_queue_wait_seconds_count", kind=kind, model=MODEL) == 1, kind
    assert added("dreamstream_dreams_total", kind="zoom", model="", code="INVALID_ARGUMENT") == 1
    assert added("dreamstream_steps_total", model=MODEL) == 3 * 2 + 2 * 2  # the video's frames, the zoom's
    assert added("dreamstream_first_frame_seconds_count", kind="video", model=MODEL) == 1
    assert added("dreamstream_dreams_total", kind="dream", model=MODEL, code="OK") == 0
    assert gauges_are_at_zero(after)
    lines = [record.dream for record in caplog.records if record.name == "dreamstream.server.access"]
    assert [(line["kind"], line["status"], line["frames"]) for line in lines] == [
        ("video", "OK", 3),
        ("zoom", "OK", 2),
        ("classify", "OK", 0),
        ("zoom", "INVALID_ARGUMENT", 0),
    ]


def test_every_metric_the_readme_documents_is_exported_with_its_labels(metered: tuple[Any, str]) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    from dreamstream.client import DreamClient

    server, url = metered
    with DreamClient(server.target) as client:
        list(client.dream(**SMALL))
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Metrics") : readme.index("## How it is built")]
    documented = {
        name: set(labels.split(",")) if labels else set()
        for name, labels in re.findall(r"\| `(dreamstream_[a-z_]+)(?:\{([a-z,]+)\})?`", section)
        if "device_memory" not in name  # NVIDIA only: tested by the next test
    }
    with urllib.request.urlopen(url, timeout=10) as response:
        families = list(text_string_to_metric_families(response.read().decode()))
    exported = {}
    for family in families:
        for sample in family.samples:  # a histogram's samples are its family's _bucket, _count, _sum
            for name in (family.name, sample.name):
                exported.setdefault(name, set()).update(set(sample.labels) - {"le"})
    assert len(documented) == 7
    assert {name: exported.get(name) for name in documented} == documented


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
