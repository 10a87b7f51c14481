"""Prometheus metrics of a dreamstream server, served over HTTP on --metrics-port.

`DreamMetrics` is a telemetry listener: it turns every call's record into counters,
histograms and gauges, each labelled with the call's kind (dream, video, zoom, classify),
so that a replica busy with videos shows as busy as one busy with dreams. Each server has
its own registry (two servers in one process do not mix their numbers). Device memory
comes from NVML on NVIDIA GPUs, the one provider that reports it; on the CPU,
process_resident_memory_bytes says what the server holds.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from dreamstream.server.telemetry import DreamListener, DreamRecord

# The kinds of call (dataplane.CallKind's values): their gauges exist at 0 from the start,
# so that a sum over kinds (the autoscaler's) never misses one.
KINDS = ("dream", "video", "zoom", "classify")

log = logging.getLogger(__name__)

# Dreams take from a fraction of a second (small, few steps, GPU) to minutes (large, CPU).
_DREAM_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640)
_WAIT_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)


class DreamMetrics(DreamListener):
    """The dream metrics, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        metric: dict[str, Any] = {"registry": self.registry}
        self.dreams = Counter(
            "dreamstream_dreams",
            "Calls ended (dreams, videos, zooms, classifications), by kind, model and status code",
            ["kind", "model", "code"],
            **metric,
        )
        self.dream_seconds = Histogram(
            "dreamstream_dream_seconds",
            "Seconds a call ran, from getting its slot to its end",
            ["kind", "model"],
            buckets=_DREAM_BUCKETS,
            **metric,
        )
        self.queue_wait_seconds = Histogram(
            "dreamstream_queue_wait_seconds",
            "Seconds a call waited for a slot",
            ["kind", "model"],
            buckets=_WAIT_BUCKETS,
            **metric,
        )
        self.first_frame_seconds = Histogram(
            "dreamstream_first_frame_seconds",
            "Seconds from a call's arrival to its first frame (queue included)",
            ["kind", "model"],
            buckets=_DREAM_BUCKETS,
            **metric,
        )
        self.steps = Counter("dreamstream_steps", "Ascent steps run", ["model"], **metric)
        self.inflight = Gauge("dreamstream_inflight_dreams", "Calls running now, by kind", ["kind"], **metric)
        self.queued_dreams = Gauge(
            "dreamstream_queued_dreams", "Calls waiting for a slot now, by kind", ["kind"], **metric
        )
        for kind in KINDS:
            self.inflight.labels(kind)
            self.queued_dreams.labels(kind)
        ProcessCollector(registry=self.registry)
        self.registry.register(DeviceMemoryCollector())

    def queued(self, record: DreamRecord) -> None:
        self.queued_dreams.labels(record.kind).inc()

    def admitted(self, record: DreamRecord) -> None:
        self.queued_dreams.labels(record.kind).dec()
        self.inflight.labels(record.kind).inc()
        if record.queue_wait is not None:
            self.queue_wait_seconds.labels(record.kind, record.model).observe(record.queue_wait)

    def stepped(self, record: DreamRecord) -> None:
        self.steps.labels(record.model).inc()

    def framed(self, record: DreamRecord) -> None:
        if record.frames_sent == 1 and record.first_frame_seconds is not None:
            self.first_frame_seconds.labels(record.kind, record.model).observe(record.first_frame_seconds)

    def ended(self, record: DreamRecord) -> None:
        if record.admitted_at is not None:
            self.inflight.labels(record.kind).dec()
        elif record.queued_at is not None:
            self.queued_dreams.labels(record.kind).dec()
        self.dreams.labels(record.kind, record.model, record.code).inc()
        if record.running_seconds is not None:
            self.dream_seconds.labels(record.kind, record.model).observe(record.running_seconds)

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics on host:port (0 picks a port) in a background thread; returns the port."""
        server, _ = start_http_server(port, addr=host, registry=self.registry)
        bound = server.server_port
        log.info("metrics on http://%s:%d/metrics", host, bound)
        return bound


class DeviceMemoryCollector(Collector):
    """Memory of the NVIDIA GPUs this process sees, read from NVML at each scrape.

    Reports nothing where there is no NVML (no nvidia-ml-py, no driver: CPU machines).
    """

    def collect(self) -> Iterator[GaugeMetricFamily]:
        readings = nvml_memory()
        if not readings:
            return
        used = GaugeMetricFamily("dreamstream_device_memory_used_bytes", "GPU memory in use", labels=["device"])
        total = GaugeMetricFamily("dreamstream_device_memory_total_bytes", "GPU memory in all", labels=["device"])
        for device, (used_bytes, total_bytes) in readings.items():
            used.add_metric([device], used_bytes)
            total.add_metric([device], total_bytes)
        yield used
        yield total


def nvml_memory() -> dict[str, tuple[int, int]]:
    """device name -> (used, total) bytes, from NVML; empty where NVML is absent."""
    try:
        import pynvml
    except ImportError:
        return {}
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return {}
    try:
        readings = {}
        for index in range(pynvml.nvmlDeviceGetCount()):
            memory = pynvml.nvmlDeviceGetMemoryInfo(pynvml.nvmlDeviceGetHandleByIndex(index))
            readings[f"cuda:{index}"] = (int(memory.used), int(memory.total))
        return readings
    finally:
        pynvml.nvmlShutdown()
