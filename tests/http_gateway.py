"""A real `dreamstream serve --http-port 0` process and the Server-Sent Events it streams, for the HTTP tests."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from replicas import scrape
from serve_process import ServeProcess


@dataclass(frozen=True)
class Event:
    name: str
    data: dict[str, Any]


class GatewayProcess(ServeProcess):
    """A serve process with its HTTP gateway on a free port (and its metrics, with `metrics=True`)."""

    def __init__(self, models: Path, *flags: str, metrics: bool = False, scheme: str = "http") -> None:
        extra = ("--metrics-port", "0") if metrics else ()
        super().__init__(models, "--http-port", "0", *extra, *flags)
        port = self.wait_for(r"http on 127\.0\.0\.1:(\d+)").group(1)
        self.url = f"{scheme}://127.0.0.1:{port}"
        if metrics:
            self.metrics_url = self.wait_for(r"metrics on (http://\S+/metrics)").group(1)


def server_events(lines: Iterable[str]) -> Iterator[Event]:
    """The events of a text/event-stream body, from its lines, as they arrive."""
    name, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield Event(name, json.loads("\n".join(data)))
            name, data = "message", []
        elif line.startswith("event:"):
            name = line[len("event:") :].strip()
        elif line.startswith("data:"):
            data.append(line[len("data:") :].strip())


def metric_sum(metrics_url: str, name: str) -> float:
    """A metric's samples added up over all their labels (every kind, model, code)."""
    return sum(value for (sample, _), value in scrape(metrics_url).items() if sample == name)
