"""SIGTERM drains: a real `dreamstream serve` process, real signals, real clients on loopback."""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from serve_process import CLI, ServeProcess

from dreamstream.client import AsyncDreamClient, DreamClient, Frame, ServerUnavailable, Started

# Long enough on any machine to be still running while the test signals and probes the
# drain (the test waits for its first step before signalling; its end is awaited, not
# timed). 2 x 40 steps took 1.2 s on an idle 2-core machine once the CPU arena came back:
# the drain then finished before the probe and the probe met a server on its way out.
LONG = {"width": 192, "height": 192, "octaves": 2, "steps_per_octave": 400}


class Dreamer(threading.Thread):
    """One dream in a thread: its events, and the error that ended it, if any."""

    def __init__(self, target: str, **options) -> None:
        super().__init__(daemon=True)
        self.target, self.options = target, options
        self.events: list = []
        self.error: Exception | None = None
        self.started_event = threading.Event()
        self.stepped = threading.Event()

    def run(self) -> None:
        try:
            with DreamClient(self.target) as client:
                for event in client.dream(None, **self.options):
                    self.events.append(event)
                    (self.started_event if isinstance(event, Started) else self.stepped).set()
        except Exception as error:
            self.error = error

    @property
    def finished(self) -> bool:
        return bool(self.events) and isinstance(self.events[-1], Frame) and self.events[-1].final


def health_status(target: str) -> int:
    with grpc.insecure_channel(target) as channel:
        request = health_pb2.HealthCheckRequest(service="")
        return health_pb2_grpc.HealthStub(channel).Check(request, timeout=10).status


def wait_for_health(target: str, wanted: int, tries: int = 200) -> None:
    for _ in range(tries):
        if health_status(target) == wanted:
            return
        threading.Event().wait(0.05)
    raise AssertionError(f"health never became {wanted}")


@pytest.fixture
def served(lite0_dir: Path):
    started: list[ServeProcess] = []

    def serve(*flags: str) -> ServeProcess:
        process = ServeProcess(lite0_dir.parent, "--max-concurrent", "1", "--max-queue", "2", *flags)
        started.append(process)
        return process

    yield serve
    for process in started:
        process.stop()


def test_sigterm_drains_running_dreams_finish_waiting_and_new_ones_are_unavailable(served) -> None:
    server = served("--shutdown-grace", "120")
    running = Dreamer(server.target, **LONG)
    running.start()
    assert running.stepped.wait(120), running.error
    waiting = Dreamer(server.target, width=64, height=64, octaves=1, steps_per_octave=1)
    waiting.start()
    server.wait_for(r"dream waits for a slot: 1 running, 1 waiting")

    server.terminate()
    # Still listening, but no longer serving: balancers take the replica out.
    wait_for_health(server.target, health_pb2.HealthCheckResponse.NOT_SERVING)
    with DreamClient(server.target) as client, pytest.raises(ServerUnavailable, match="shutting down") as refused:
        list(client.dream(None, width=64, height=64))
    assert refused.value.reason == "DRAINING"
    waiting.join(60)
    assert isinstance(waiting.error, ServerUnavailable) and waiting.error.reason == "DRAINING"
    assert not waiting.started_event.is_set()

    running.join(300)
    assert running.error is None and running.finished  # the accepted dream is not lost
    assert server.exit_status() == 0
    assert "Traceback" not in server.log and " ERROR " not in server.log, server.log
    assert "drained: every running dream finished" in server.log


def test_a_second_sigterm_while_draining_changes_nothing(served) -> None:
    server = served("--shutdown-grace", "120")
    running = Dreamer(server.target, **LONG)
    running.start()
    assert running.stepped.wait(120), running.error
    server.terminate()
    wait_for_health(server.target, health_pb2.HealthCheckResponse.NOT_SERVING)
    server.terminate()  # an impatient supervisor
    running.join(300)
    assert running.error is None and running.finished
    server.terminate()  # and once more, while the process is on its way out
    assert server.exit_status() == 0
    assert "Traceback" not in server.log, server.log


def test_dreams_still_running_after_the_grace_are_stopped_with_unavailable_and_the_exit_is_clean(served) -> None:
    server = served("--shutdown-grace", "1")
    running = Dreamer(server.target, width=192, height=192, octaves=1, steps_per_octave=1000)
    running.start()
    assert running.stepped.wait(120), running.error
    server.terminate()
    running.join(120)
    assert isinstance(running.error, ServerUnavailable), running.error
    assert running.error.reason == "DRAINING" and "shut down before the dream finished" in running.error.message
    assert server.exit_status() == 0
    assert "Traceback" not in server.log, server.log
    assert "dreams still running after 1 s were stopped" in server.log


def test_a_zoom_still_running_after_the_grace_is_stopped_with_unavailable_like_a_dream(served) -> None:
    """Drain is the data plane's: it stops every kind of running call, not only dreams."""
    server = served("--shutdown-grace", "1")
    first_frame = threading.Event()
    outcome: list[Exception] = []

    def zoom() -> None:
        try:
            with DreamClient(server.target) as client:
                for _ in client.zoom(None, frames=1000, width=96, height=96, octaves=1, steps_per_octave=20):
                    first_frame.set()
        except Exception as error:
            outcome.append(error)

    zooming = threading.Thread(target=zoom, daemon=True)
    zooming.start()
    assert first_frame.wait(120), outcome
    server.terminate()
    zooming.join(120)
    assert len(outcome) == 1 and isinstance(outcome[0], ServerUnavailable), outcome
    assert outcome[0].reason == "DRAINING" and "shut down before the dream finished" in outcome[0].message
    assert server.exit_status() == 0
    assert "Traceback" not in server.log, server.log
    assert "dreams still running after 1 s were stopped" in server.log


# Each probe's own deadline, and what the test allows past it: a call must END by then.
PROBE_TIMEOUT = 5.0
PROBE_MARGIN = 3.0
PROBE = {"width": 64, "height": 64, "octaves": 1, "steps_per_octave": 1}


class Probe(threading.Thread):
    """One call with a deadline in a thread: how long it took to end, and how it ended."""

    def __init__(self, call) -> None:
        super().__init__(daemon=True)
        self.call = call
        self.began = self.took = 0.0
        self.error: Exception | None = None

    def run(self) -> None:
        self.began = time.monotonic()
        try:
            self.call()
        except Exception as error:
            self.error = error
        self.took = time.monotonic() - self.began

    def end_within_deadline(self) -> None:
        """Wait until the deadline plus the margin has passed (from the call's start) at most."""
        self.join(max(0.0, self.began + PROBE_TIMEOUT + PROBE_MARGIN - time.monotonic()))


def sync_probe(target: str, request_id: str) -> Probe:
    def call() -> None:
        with DreamClient(target) as client:
            list(client.dream(None, timeout=PROBE_TIMEOUT, request_id=request_id, **PROBE))

    return Probe(call)


def async_probe(target: str, request_id: str) -> Probe:
    async def dream() -> None:
        async with AsyncDreamClient(target) as client:
            async for _ in client.dream(None, timeout=PROBE_TIMEOUT, request_id=request_id, **PROBE):
                pass

    return Probe(lambda: asyncio.run(dream()))


def test_calls_sent_as_a_drain_ends_fail_within_their_deadline_whichever_client_sends_them(
    served, tmp_path: Path
) -> None:
    """Calls refused DRAINING, then tried again by the client while the server exits, end in time.

    Before the fix they never ended (not at their deadline, not on cancel()): gRPC's own
    retries (a retryPolicy in the client's service config) wedged every call that was
    waiting to be retried when its server's connection went away.
    """
    server = served("--shutdown-grace", "120")
    leave = threading.Event()

    def running_dream() -> None:  # runs until told to leave: its end ends the drain
        with DreamClient(server.target) as client:
            for event in client.dream(None, **LONG):
                if not isinstance(event, Started) and leave.wait(120):
                    return

    threading.Thread(target=running_dream, daemon=True).start()
    server.wait_for(r"dream \S+ on efficientnet-lite0: 192x192")
    server.terminate()
    wait_for_health(server.target, health_pb2.HealthCheckResponse.NOT_SERVING)

    command = subprocess.Popen(
        [*CLI, "dream", "--noise", "64x64", "--steps", "1", "--octaves", "1", "-o", str(tmp_path / "out.png"),
         "--server", server.target, "--timeout", str(PROBE_TIMEOUT), "--quiet"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    command_began = time.monotonic()
    server.wait_for(r"refused \S+ \(UNAVAILABLE\)")  # the command's first try
    probes = {f"sync-{n}": sync_probe(server.target, f"sync-{n}") for n in range(3)}
    probes |= {f"async-{n}": async_probe(server.target, f"async-{n}") for n in range(2)}
    for request_id, probe in probes.items():
        probe.start()
        server.wait_for(rf"refused {request_id} \(UNAVAILABLE\)")
    # Every probe has been refused once and waits to try again: now the drain ends and the
    # server closes its port and exits while they wait.
    leave.set()
    late = [sync_probe(server.target, f"late-{n}") for n in range(4)]
    for probe in late:  # and calls sent in the instant the server closes its listener and exits
        probe.start()
        time.sleep(0.05)
    assert server.exit_status() == 0
    for name, probe in [*probes.items(), *((f"late-{n}", probe) for n, probe in enumerate(late))]:
        probe.end_within_deadline()
        assert not probe.is_alive(), f"{name} still runs {PROBE_TIMEOUT + PROBE_MARGIN:g} s after it was sent"
        assert isinstance(probe.error, ServerUnavailable), f"{name}: {probe.error!r}"
        assert probe.error.reason == "DRAINING" or "cannot reach" in probe.error.message, f"{name}: {probe.error}"
        assert probe.took < PROBE_TIMEOUT, f"{name} took {probe.took:.1f} s"
    command_ends_by = command_began + PROBE_TIMEOUT + PROBE_MARGIN
    try:
        _, stderr = command.communicate(timeout=max(0.1, command_ends_by - time.monotonic()))
    except subprocess.TimeoutExpired:
        command.kill()
        raise AssertionError(f"`dreamstream dream --timeout {PROBE_TIMEOUT:g}` still runs") from None
    assert command.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "draining" in lines[0] or "cannot reach" in lines[0], lines[0]


def test_a_server_killed_mid_dream_ends_the_command_within_its_deadline_in_one_line(served, tmp_path: Path) -> None:
    server = served()
    command = subprocess.Popen(
        [*CLI, "dream", "--noise", "192x192", "--steps", "400", "--octaves", "2", "-o", str(tmp_path / "out.png"),
         "--server", server.target, "--timeout", "30", "--quiet"],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    server.wait_for(r"dream \S+ on efficientnet-lite0: 192x192")
    server.process.kill()  # no drain, no GOAWAY: the connection just breaks
    try:
        _, stderr = command.communicate(timeout=30 + PROBE_MARGIN)
    except subprocess.TimeoutExpired:
        command.kill()
        raise AssertionError("`dreamstream dream --timeout 30` outlived its deadline") from None
    assert command.returncode != 0
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    assert lines[0].startswith("dreamstream: UNAVAILABLE: ") and server.target in lines[0], lines[0]
