"""What a program can read from a refusal: the google.rpc.Status details of every error status
(ErrorInfo, RequestInfo, BadRequest, RetryInfo), the request id, the first DreamStarted event,
and the client's retries after the server's RetryInfo delay. Real servers on loopback."""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path

import grpc
import pytest
from conftest import wait_until_still

from dreamstream.client import (
    AsyncDreamClient,
    DreamClient,
    DreamstreamError,
    FieldViolation,
    Frame,
    InvalidRequest,
    ModelNotFound,
    ServerBusy,
    ServerUnavailable,
    Started,
)
from dreamstream.client.errors import ErrorDetails, details_of
from dreamstream.client.events import event_from_response
from dreamstream.client.retries import BACKOFF_SECONDS, FAILOVER_ATTEMPTS, Attempts, RetryPolicy
from dreamstream.server.engine import Step
from dreamstream.server.error_status import error_status, status_of
from dreamstream.server.models import DEFAULT_MODEL, ModelRepository
from dreamstream.server.refusals import Draining
from dreamstream.server.request_ids import request_id_of
from dreamstream.server.running import RunningDreams
from dreamstream.v1 import dream_pb2, dream_pb2_grpc

REPO = Path(__file__).resolve().parents[1]
PICTURE = REPO / "samples" / "coffee.jpg"
SMALL = {"max_size": 64, "octaves": 2, "steps_per_octave": 2}


@pytest.mark.parametrize(
    ("options", "error", "reason", "field"),
    [
        ({"layers": {"no_such_layer": 1.0}}, InvalidRequest, "UNKNOWN_LAYER", "layers"),
        ({"layers": {"stem": 0.0}}, InvalidRequest, "NO_LAYER_WEIGHT", "layers"),
        ({"octaves": 13}, InvalidRequest, "OUT_OF_RANGE", "octaves"),
        ({"steps_per_octave": 5000}, InvalidRequest, "OUT_OF_RANGE", "steps_per_octave"),
        ({"octave_scale": 9.0}, InvalidRequest, "OUT_OF_RANGE", "octave_scale"),
        ({"max_size": 100_000}, InvalidRequest, "OUT_OF_RANGE", "max_size"),
        ({"image": b"not a picture"}, InvalidRequest, "BAD_IMAGE", "image"),
        ({"image": None, "width": 9000, "height": 64}, InvalidRequest, "IMAGE_TOO_LARGE", "max_size"),
        ({"model": "nope"}, ModelNotFound, "UNKNOWN_MODEL", "model"),
    ],
)
def test_every_refusal_carries_its_reason_field_and_request_id(
    client: DreamClient, options: dict, error: type, reason: str, field: str
) -> None:
    image = options.pop("image", PICTURE)
    with pytest.raises(error) as raised:
        list(client.dream(image, request_id="caller-42", **{**SMALL, **options}))

    refusal = raised.value
    assert refusal.reason == reason
    assert refusal.request_id == "caller-42"
    assert refusal.retry_delay is None  # nothing will change by waiting
    if error is InvalidRequest:
        assert refusal.field_violations == (FieldViolation(field, refusal.message),)
    else:
        assert refusal.field_violations == ()  # BadRequest is for INVALID_ARGUMENT only


def test_a_full_server_says_when_to_retry(start_server, repository) -> None:
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    with DreamClient(tight.target) as first, DreamClient(tight.target) as second:
        running = first.dream(PICTURE, max_size=64, octaves=1, steps_per_octave=1000)
        for _ in range(4):  # Started, then steps: the server can estimate the time left
            next(running)
        with pytest.raises(ServerBusy) as raised:
            list(second.dream(PICTURE, **SMALL))
        running.close()
        wait_until_still(lambda: tight.server.engine.steps_run)

    assert raised.value.reason == "QUEUE_FULL"
    assert raised.value.retry_delay is not None and raised.value.retry_delay > 0
    assert re.fullmatch(r"[0-9a-f]{32}", raised.value.request_id)  # made up by the server


def test_a_loading_server_says_unavailable_with_a_retry_delay(start_server, lite0_dir: Path) -> None:
    loading = start_server(ModelRepository(lite0_dir.parent, device="cpu"), load=False)
    with DreamClient(loading.target) as client:
        with pytest.raises(ServerUnavailable) as dreaming:
            list(client.dream(PICTURE, **SMALL))
        with pytest.raises(ServerUnavailable) as listing:
            client.models()
    for refusal in (dreaming.value, listing.value):
        assert refusal.reason == "LOADING"
        assert refusal.retry_delay == 1.0
        assert refusal.request_id


def test_a_draining_server_says_retry_at_once_elsewhere() -> None:
    refusal = Draining("the server is draining (shutting down) and takes no new dream: retry (another replica)")

    status = error_status(status_of(refusal), str(refusal), refusal, "req-9")

    assert status.code == grpc.StatusCode.UNAVAILABLE
    details = details_of(status.trailing_metadata)
    assert (details.reason, details.retry_delay, details.request_id) == ("DRAINING", 0.0, "req-9")


def test_the_client_retries_a_full_server_after_the_delay_it_asks_for(start_server, repository) -> None:
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    retries: list[tuple[str | None, float, float | None]] = []
    with DreamClient(tight.target) as first:
        running = first.dream(PICTURE, max_size=64, octaves=1, steps_per_octave=200)
        next(running)  # holds the one slot

        def on_retry(error: DreamstreamError, delay: float) -> None:
            retries.append((error.reason, delay, error.retry_delay))
            running.close()  # the slot frees while the client waits

        with DreamClient(tight.target, retries=3, on_retry=on_retry) as patient:
            events = list(patient.dream(PICTURE, **SMALL))

    assert isinstance(events[0], Started) and isinstance(events[-1], Frame) and events[-1].final
    assert retries, "the client never retried"
    assert all(reason == "QUEUE_FULL" and delay == asked for reason, delay, asked in retries)


def test_the_async_client_retries_a_loading_server_after_the_delay_it_asks_for(start_server, lite0_dir: Path) -> None:
    loading = start_server(ModelRepository(lite0_dir.parent, device="cpu"), load=False)
    waits: list[float] = []

    def on_retry(error: DreamstreamError, delay: float) -> None:
        assert error.reason == "LOADING"
        waits.append(delay)
        loading.run(loading.server.load())  # ready by the next try

    async def dream() -> list:
        async with AsyncDreamClient(loading.target, retries=2, on_retry=on_retry) as client:
            return [event async for event in client.dream(PICTURE, **SMALL)]

    events = asyncio.run(dream())

    assert waits == [1.0]
    assert events[-1].final


def test_a_started_dream_is_never_retried(server) -> None:
    with DreamClient(server.target, retries=5, on_retry=lambda *_: pytest.fail("retried")) as client:
        events = client.dream(PICTURE, max_size=64, octaves=1, steps_per_octave=1000, timeout=1.0)
        with pytest.raises(DreamstreamError) as raised:
            list(events)
    assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until_still(lambda: server.server.engine.steps_run)


def test_the_first_event_is_what_the_server_made_of_the_request(client: DreamClient) -> None:
    events = list(client.dream(PICTURE, request_id="trace-7", seed=7, **SMALL))

    started = events[0]
    assert isinstance(started, Started)
    assert started.request_id == "trace-7"
    assert started.model == DEFAULT_MODEL
    default_layers = {m.name: m for m in client.models()}[DEFAULT_MODEL].default_layers
    assert started.layers == pytest.approx(default_layers)
    frames = [event for event in events if isinstance(event, Frame)]
    assert started.octave_sizes == tuple((frame.width, frame.height) for frame in frames)
    assert started.output_size == (frames[-1].width, frames[-1].height)
    assert (started.seed, started.steps_per_octave, started.format) == (7, 2, "png")
    assert started.jitter == 32 and started.octave_scale == pytest.approx(1.4)


def test_started_tells_the_output_size_apart_from_the_octaves_above_the_picture(client: DreamClient) -> None:
    events = list(client.dream(PICTURE, octaves_above=1, **SMALL))

    started, final = events[0], events[-1]
    assert started.output_size == (final.width, final.height)  # scaled back to the picture's size
    assert max(started.octave_sizes[-1]) > max(started.output_size) == 64


def test_the_started_values_sent_back_dream_the_same_picture(client: DreamClient) -> None:
    first = list(client.dream(PICTURE, seed=3, **SMALL))
    started = first[0]
    again = list(
        client.dream(
            PICTURE,
            model=started.model,
            layers=started.layers,
            octaves=len(started.octave_sizes),
            octave_scale=started.octave_scale,
            steps_per_octave=started.steps_per_octave,
            step_size=started.step_size,
            jitter=started.jitter,
            seed=started.seed,
            max_size=max(started.octave_sizes[-1]),
            format=started.format,
        )
    )
    assert again[-1].data == first[-1].data


def test_the_request_id_comes_back_in_the_trailing_metadata(server) -> None:
    request = dream_pb2.DreamRequest(width=64, height=64, octaves=1, steps_per_octave=1)
    with grpc.insecure_channel(server.target) as channel:
        call = dream_pb2_grpc.DreamServiceStub(channel).Dream(request, metadata=(("x-request-id", "from-proxy"),))
        list(call)
        assert ("x-request-id", "from-proxy") in call.trailing_metadata()


def test_the_request_id_names_the_dream_and_the_refusal_in_the_server_log(
    client: DreamClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="dreamstream.server"):
        list(client.dream(PICTURE, request_id="logged-dream", **SMALL))
        with pytest.raises(InvalidRequest):
            list(client.dream(PICTURE, request_id="logged-refusal", octaves=99))
    lines = [record.getMessage() for record in caplog.records]
    assert any(line.startswith("dream logged-dream on ") for line in lines)
    assert any(line.startswith("refused logged-refusal (INVALID_ARGUMENT)") for line in lines)


def test_every_reason_the_server_gives_is_documented_in_the_proto() -> None:
    given = set()
    for source in (REPO / "server").rglob("*.py"):
        given |= set(re.findall(r'(?:reason|_REASON)\s*=\s*"([A-Z_]+)"', source.read_text()))
    proto = (REPO / "proto" / "dreamstream" / "v1" / "dream.proto").read_text()
    documented = set(re.findall(r"^//\s+([A-Z_]+)\s{2,}", proto, re.MULTILINE))
    assert {"UNKNOWN_LAYER", "QUEUE_FULL", "DREAM_FAILED"} <= given  # the search finds them
    assert given - documented == set(), "reasons missing from the Errors comment of dream.proto"


# --- The parts alone. ---


def test_a_usable_caller_request_id_is_kept_and_anything_else_replaced() -> None:
    assert request_id_of([("x-request-id", "abc-123")]) == "abc-123"
    for unusable in ("", "x" * 129, "new\nline", "spaces are not ids"):
        made_up = request_id_of([("x-request-id", unusable)])
        assert re.fullmatch(r"[0-9a-f]{32}", made_up)
    assert request_id_of(None) != request_id_of(None)


def test_the_time_until_a_slot_frees_is_the_shortest_time_left_of_the_running_dreams() -> None:
    now = [100.0]
    running = RunningDreams(clock=lambda: now[0])
    slow, fast, fresh = running.started(), running.started(), running.started()
    assert running.seconds_until_one_ends() is None  # no step yet: no estimate

    running.stepped(slow, Step(1, 1, 1, 10, 0.0, elapsed=10.0, done=0.1))  # 90 s left
    running.stepped(fast, Step(1, 1, 1, 10, 0.0, elapsed=6.0, done=0.5))  # 6 s left
    now[0] += 2.0
    assert running.seconds_until_one_ends() == pytest.approx(4.0)
    running.ended(fast)
    assert running.seconds_until_one_ends() == pytest.approx(88.0)
    running.ended(slow)
    running.ended(fresh)
    assert running.seconds_until_one_ends() is None


def busy(retry_delay: float | None) -> ServerBusy:
    return ServerBusy("busy", details=ErrorDetails(reason="QUEUE_FULL", retry_delay=retry_delay))


def test_the_retry_policy_waits_what_the_server_asks_else_backs_off_and_gives_up() -> None:
    heard: list[float] = []
    policy = RetryPolicy(retries=3, on_retry=lambda error, delay: heard.append(delay))

    assert policy.delay_or_raise(busy(2.5), attempt=0) == 2.5
    assert policy.delay_or_raise(busy(None), attempt=1) == BACKOFF_SECONDS * 2
    with pytest.raises(ServerBusy):
        policy.delay_or_raise(busy(2.5), attempt=3)  # retries spent
    with pytest.raises(InvalidRequest):
        policy.delay_or_raise(InvalidRequest("bad layer"), attempt=0)  # waiting changes nothing
    assert heard == [2.5, BACKOFF_SECONDS * 2]


def draining() -> ServerUnavailable:
    return ServerUnavailable("draining", details=ErrorDetails(reason="DRAINING", retry_delay=0.0))


def test_a_refusal_for_now_is_sent_again_within_the_deadline_then_the_retries_get_a_new_one() -> None:
    now = [100.0]
    heard: list[float] = []
    attempts = Attempts(RetryPolicy(retries=1, on_retry=lambda _, delay: heard.append(delay)), 5.0, lambda: now[0])

    assert attempts.time_left() == 5.0
    waits = []
    for _ in range(FAILOVER_ATTEMPTS - 1):  # the next replica, after 0.1, 0.2, 0.4, 0.8 s
        waits.append(attempts.delay_or_raise(draining(), started=False))
        now[0] += waits[-1]
    assert waits == pytest.approx([0.1, 0.2, 0.4, 0.8])
    assert attempts.time_left() == pytest.approx(3.5)  # one deadline for the try's attempts
    assert attempts.delay_or_raise(draining(), started=False) == 0.0  # failover spent: a retry, the server's delay
    assert heard == [0.0]
    now[0] += 10.0
    assert attempts.time_left() == 5.0  # a new try, a new deadline
    now[0] += 4.95
    with pytest.raises(ServerUnavailable):  # no backoff past the deadline, no retries left: raised at once
        attempts.delay_or_raise(draining(), started=False)


def test_a_started_call_or_a_final_refusal_is_not_sent_again_and_a_passed_deadline_is_said() -> None:
    now = [0.0]
    attempts = Attempts(RetryPolicy(retries=3), 1.0, lambda: now[0])
    attempts.time_left()
    with pytest.raises(ServerUnavailable):
        attempts.delay_or_raise(draining(), started=True)
    with pytest.raises(InvalidRequest):
        attempts.delay_or_raise(InvalidRequest("bad layer"), started=False)
    now[0] += 1.0
    with pytest.raises(DreamstreamError, match="timeout of 1 s") as passed:
        attempts.time_left()
    assert passed.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert Attempts(RetryPolicy(), None).time_left() is None


def test_an_event_this_client_does_not_know_is_skipped() -> None:
    # A DreamResponse from a newer server whose oneof member (field 15) this client lacks.
    newer = dream_pb2.DreamResponse.FromString(bytes([15 << 3 | 2, 0]))
    assert event_from_response(newer) is None
