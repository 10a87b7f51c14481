"""`dreamstream serve` in production: every flag from a DREAMSTREAM_* variable (the flag wins),
one JSON log line per dream, metrics, and the warm start before SERVING."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from health import wait_until_serving
from replicas import CLI, dreams_total, port_free_on_every, scrape

from dreamstream.cmdline import CommandError, defaults_from_environment


def toy_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--max-queue", type=int, default=4, help="dreams that may wait")
    parser.add_argument("--log-format", choices=("text", "json"), default="text")
    parser.add_argument("--warm-start", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--no-reflection", dest="reflection", action="store_false")
    return parser


def parse(argv: list[str]) -> argparse.Namespace:
    parser = toy_parser()
    defaults_from_environment(parser, "DREAMSTREAM_")
    return parser.parse_args(argv)


def test_a_variable_sets_a_flag_and_the_flag_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMSTREAM_MAX_QUEUE", "9")
    monkeypatch.setenv("DREAMSTREAM_LOG_FORMAT", "json")
    assert (parse([]).max_queue, parse([]).log_format) == (9, "json")
    assert parse(["--max-queue", "2"]).max_queue == 2


def test_a_variable_holds_a_switchs_value(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DREAMSTREAM_WARM_START", "false")
    monkeypatch.setenv("DREAMSTREAM_REFLECTION", "0")
    args = parse([])
    assert (args.warm_start, args.reflection) == (False, False)
    assert parse(["--warm-start"]).warm_start is True


@pytest.mark.parametrize(("variable", "value"), [("DREAMSTREAM_MAX_QUEUE", "many"), ("DREAMSTREAM_LOG_FORMAT", "xml")])
def test_a_bad_variable_is_an_error_naming_it(monkeypatch: pytest.MonkeyPatch, variable: str, value: str) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(CommandError, match=f"^{variable}="):
        parse([])


def test_every_serve_flag_names_its_variable_in_help() -> None:
    from dreamstream.cli import build_parser

    serve = build_parser("serve")._subparsers._group_actions[0].choices["serve"]
    options = [action for action in serve._actions if action.option_strings and action.dest != "help"]
    assert len(options) > 10
    for action in options:
        assert f"[env DREAMSTREAM_{action.dest.upper()}]" in action.help, action.option_strings


def test_warm_start_runs_a_step_on_every_model_before_serving(start_server: Any, lite0_dir: Path) -> None:
    from dreamstream.server.models import ModelRepository

    cold = start_server(ModelRepository(lite0_dir.parent, device="cpu"))
    warm = start_server(ModelRepository(lite0_dir.parent, device="cpu"), warm_start=True)
    assert cold.server.engine.steps_run == 0
    assert warm.server.engine.steps_run == len(warm.server.models.names())


class ServeProcess:
    """`dreamstream serve` configured through the environment, on 127.0.0.1."""

    def __init__(self, models: Path, log: Path) -> None:
        self.port, self.metrics_port = port_free_on_every(["127.0.0.1"]), port_free_on_every(["127.0.0.1"])
        self.target = f"127.0.0.1:{self.port}"
        self.log = log
        environment = {
            "DREAMSTREAM_MODELS": str(models),
            "DREAMSTREAM_HOST": "127.0.0.1",
            "DREAMSTREAM_PORT": "1",  # the --port flag below wins
            "DREAMSTREAM_DEVICE": "cpu",
            "DREAMSTREAM_LOG_FORMAT": "json",
            "DREAMSTREAM_METRICS_PORT": str(self.metrics_port),
        }
        with open(log, "wb") as output:
            self.process = subprocess.Popen(
                [*CLI, "serve", "--port", str(self.port)],
                stdout=output,
                stderr=subprocess.STDOUT,
                env={**os.environ, **environment},
            )

    def stop(self) -> list[dict[str, Any]]:
        """SIGTERM, then every log line, parsed (each one must be JSON)."""
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=60)
        return [json.loads(line) for line in self.log.read_text().splitlines()]


@pytest.fixture(scope="module")
def served(lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    process = ServeProcess(lite0_dir.parent, tmp_path_factory.mktemp("serve") / "server.log")
    try:
        wait_until_serving(process.target)
        yield process
    finally:
        if process.process.poll() is None:
            process.process.kill()


def test_a_server_configured_by_environment_logs_one_json_line_per_dream(served: ServeProcess) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.client.events import Started

    with DreamClient(served.target) as client:
        list(client.dream(width=64, height=48, octaves=2, steps_per_octave=3, request_id="order-42"))
        # Leaving the stream after its first event cancels the second dream.
        started = next(
            event
            for event in client.dream(width=128, height=128, octaves=1, steps_per_octave=1000)
            if isinstance(event, Started)
        )
    # The server learns of the cancel at its next write: wait for it (bounded).
    deadline = time.monotonic() + 30
    while dreams_total(metrics := scrape(f"http://127.0.0.1:{served.metrics_port}/metrics"), "CANCELLED") < 1:
        assert time.monotonic() < deadline, "the cancelled dream was never counted"
        time.sleep(0.1)
    assert dreams_total(metrics, "OK") == 1
    lines = served.stop()

    dreams = {line["request_id"]: line for line in lines if line["logger"] == "dreamstream.server.access"}
    assert set(dreams) == {"order-42", started.request_id}
    line = dreams["order-42"]
    assert (line["model"], line["width"], line["height"]) == ("efficientnet-lite0", 64, 48)
    assert (line["octaves"], line["steps_per_octave"], line["steps"], line["status"]) == (2, 3, 6, "OK")
    assert line["seconds"] > 0 and line["queue_wait_seconds"] >= 0
    assert {"time", "level", "message"} <= set(line)
    assert dreams[started.request_id]["status"] == "CANCELLED"
    messages = [line["message"] for line in lines]
    warmed = next(i for i, message in enumerate(messages) if message.startswith("warmed up efficientnet-lite0"))
    serving = next(i for i, message in enumerate(messages) if message.startswith("serving"))
    assert warmed < serving
