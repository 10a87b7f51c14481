"""`dreamstream serve` in production: every flag from a DREAMSTREAM_* variable (the flag wins),
one JSON log line per dream, metrics, and the warm start before SERVING."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from replicas import dreams_total, port_free_on_every, scrape
from serve_process import ServeProcess

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


@pytest.fixture(scope="module")
def served(lite0_dir: Path) -> Iterator[tuple[ServeProcess, int]]:
    """`dreamstream serve` configured through the environment; yields it and its metrics port."""
    metrics_port = port_free_on_every(["127.0.0.1"])
    with pytest.MonkeyPatch.context() as environment:
        environment.setenv("DREAMSTREAM_LOG_FORMAT", "json")
        environment.setenv("DREAMSTREAM_METRICS_PORT", str(metrics_port))
        environment.setenv("DREAMSTREAM_PORT", "1")  # ServeProcess's --port 0 wins
        process = ServeProcess(lite0_dir.parent)
    try:
        yield process, metrics_port
    finally:
        process.stop()


def test_a_server_configured_by_environment_logs_one_json_line_per_dream(served: tuple[ServeProcess, int]) -> None:
    from dreamstream.client import DreamClient
    from dreamstream.client.events import Started

    process, metrics_port = served
    with DreamClient(process.target) as client:
        list(client.dream(width=64, height=48, octaves=2, steps_per_octave=3, request_id="order-42"))
        # Leaving the stream after its first event cancels the second dream.
        started = next(
            event
            for event in client.dream(width=128, height=128, octaves=1, steps_per_octave=1000)
            if isinstance(event, Started)
        )
    # The server learns of the cancel at its next write: wait for it (bounded).
    deadline = time.monotonic() + 30
    while dreams_total(metrics := scrape(f"http://127.0.0.1:{metrics_port}/metrics"), "CANCELLED") < 1:
        assert time.monotonic() < deadline, "the cancelled dream was never counted"
        time.sleep(0.1)
    assert dreams_total(metrics, "OK") == 1
    assert process.stop() == 0
    lines = [json.loads(line) for line in process.log.splitlines()]

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
