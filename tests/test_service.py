"""The gRPC service end to end: a real server on loopback, real sessions, the real clients."""

from __future__ import annotations

import asyncio
import io
import shutil
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import wait_until_still
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from PIL import Image

from dreamstream.client import (
    AsyncDreamClient,
    DreamClient,
    Frame,
    InvalidRequest,
    ModelNotFound,
    Progress,
    ServerBusy,
    ServerUnavailable,
    Started,
)
from dreamstream.client.errors import DeadlineExceeded, DreamstreamError
from dreamstream.server.models import DEFAULT_MODEL, ModelRepository

SMALL = {"max_size": 64, "octaves": 2, "steps_per_octave": 2}


def frames_of(events: list) -> list[Frame]:
    return [event for event in events if isinstance(event, Frame)]


def test_the_stream_is_started_then_each_octaves_steps_then_its_frame(client: DreamClient, coffee: Path) -> None:
    events = list(client.dream(coffee, max_size=96, octaves=3, steps_per_octave=2))

    kinds = [type(event).__name__ for event in events]
    assert kinds == ["Started"] + ["Progress", "Progress", "Frame"] * 3
    frames = frames_of(events)
    assert [frame.octave for frame in frames] == [1, 2, 3]
    assert [frame.final for frame in frames] == [False, False, True]
    assert all(frame.octaves == 3 for frame in frames)
    assert [(p.octave, p.step) for p in events if isinstance(p, Progress)] == [
        (1, 1), (1, 2), (2, 1), (2, 2), (3, 1), (3, 2),
    ]  # fmt: skip
    widths = [frame.width for frame in frames]
    assert widths == sorted(widths) and widths[0] < widths[-1]


def test_the_final_frame_has_the_output_size(client: DreamClient, coffee: Path) -> None:
    frames = frames_of(list(client.dream(coffee, max_size=96, octaves=2, steps_per_octave=1)))
    final = frames[-1]
    assert (final.width, final.height) == (96, 64)  # coffee.png is 600x400
    assert final.image().size == (96, 64)
    for frame in frames:
        assert frame.image().size == (frame.width, frame.height)


@pytest.mark.parametrize(("fmt", "pillow_format"), [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")])
def test_frames_come_in_the_requested_format(client: DreamClient, coffee: Path, fmt: str, pillow_format: str) -> None:
    final = frames_of(list(client.dream(coffee, format=fmt, **SMALL)))[-1]
    assert final.format == fmt
    assert final.image().format == pillow_format


def test_without_an_image_the_server_dreams_on_noise_of_the_given_size(client: DreamClient) -> None:
    final = frames_of(list(client.dream(None, width=80, height=48, octaves=2, steps_per_octave=2)))[-1]
    assert (final.width, final.height) == (80, 48)


def test_the_health_service_says_serving_once_models_are_loaded(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "dreamstream.v1.DreamService"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_before_its_models_load_the_server_is_not_serving_and_refuses_dreams(
    start_server, lite0_dir: Path, coffee: Path
) -> None:
    unloaded = start_server(ModelRepository(lite0_dir.parent, device="cpu"), load=False)
    with grpc.insecure_channel(unloaded.target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    with DreamClient(unloaded.target) as client:
        with pytest.raises(ServerUnavailable, match="still loading"):
            list(client.dream(coffee, **SMALL))

    unloaded.run(unloaded.server.load())
    with grpc.insecure_channel(unloaded.target) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_dream_and_health_services(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        services = ProtoReflectionDescriptorDatabase(channel).get_services()
    assert "dreamstream.v1.DreamService" in services
    assert "grpc.health.v1.Health" in services


def test_list_models_gives_layers_and_default_layers(client: DreamClient) -> None:
    models = {model.name: model for model in client.models()}
    lite0 = models[DEFAULT_MODEL]
    assert lite0.default
    assert lite0.layers[0].name == "stem" and lite0.layers[0].channels == 32
    assert set(lite0.default_layers) <= {layer.name for layer in lite0.layers}
    assert lite0.max_size >= lite0.min_size >= 1


@pytest.mark.parametrize(
    ("request_options", "error", "message"),
    [
        ({"layers": {"no_such_layer": 1.0}}, InvalidRequest, "its layers are stem, block0"),
        ({"octaves": 13}, InvalidRequest, "octaves 13 is out of range"),
        ({"octaves": -1}, InvalidRequest, "octaves -1 is out of range"),
        ({"steps_per_octave": 5000}, InvalidRequest, "steps per octave 5000 is out of range"),
        ({"octave_scale": 9.0}, InvalidRequest, "octave_scale 9.0 is out of range"),
        ({"max_size": -5}, InvalidRequest, "max_size -5 is negative"),
        (
            {"model": "nope"},
            ModelNotFound,
            f"unknown model 'nope': this server has .*{DEFAULT_MODEL}",
        ),
    ],
)
def test_bad_parameters_get_the_right_status_and_say_what_to_change(
    client: DreamClient, coffee: Path, request_options: dict, error: type, message: str
) -> None:
    with pytest.raises(error, match=message) as raised:
        list(client.dream(coffee, **{**SMALL, **request_options}))
    assert raised.value.code == error.code


def test_an_undecodable_image_is_invalid_argument(client: DreamClient) -> None:
    with pytest.raises(InvalidRequest, match="cannot decode the image"):
        list(client.dream(b"this is not a picture", **SMALL))


def test_too_many_pixels_is_invalid_argument(client: DreamClient) -> None:
    with pytest.raises(InvalidRequest, match="too many pixels"):
        list(client.dream(None, width=9000, height=64))  # above the 8192 px a tiled dream may have


def test_an_image_and_a_noise_size_together_are_refused(client: DreamClient, coffee: Path) -> None:
    with pytest.raises(InvalidRequest, match="not both"):
        list(client.dream(coffee, width=64, height=64))


def test_a_refused_request_disturbs_nothing(client: DreamClient, coffee: Path) -> None:
    with pytest.raises(InvalidRequest):
        list(client.dream(b"garbage", **SMALL))
    assert frames_of(list(client.dream(coffee, **SMALL)))[-1].final


def test_a_dream_that_fails_on_the_server_is_internal_and_the_next_is_served(
    start_server, lite0_dir: Path, tmp_path: Path, coffee: Path
) -> None:
    model_dir = tmp_path / "models" / lite0_dir.name
    shutil.copytree(lite0_dir, model_dir)
    repository = ModelRepository(model_dir.parent, device="cpu")
    repository.load()
    # Damaged after loading: the graph's session is opened on its first dream, and fails.
    (model_dir / repository.get().step_graph_for({"block2": 1.0})).write_bytes(b"not onnx")
    damaged = start_server(repository)
    with DreamClient(damaged.target) as client:
        with pytest.raises(DreamstreamError, match="the dream failed") as raised:
            list(client.dream(coffee, layers={"block2": 1.0}, **SMALL))
        assert raised.value.code == grpc.StatusCode.INTERNAL
        assert raised.value.reason == "DREAM_FAILED" and raised.value.request_id
        assert frames_of(list(client.dream(coffee, **SMALL)))[-1].final


def test_a_cancelled_dream_stops_within_a_step_and_the_next_is_served_at_once(
    server, client: DreamClient, coffee: Path
) -> None:
    engine = server.server.engine
    events = client.dream(coffee, max_size=64, octaves=1, steps_per_octave=1000)
    assert isinstance(next(events), Started)
    for _ in range(3):
        assert isinstance(next(events), Progress)
    events.close()  # leaving the stream cancels the call
    cancelled_at = engine.steps_run

    stopped_at = wait_until_still(lambda: engine.steps_run)
    # The server may have run a few steps ahead of what the client had read, plus the
    # one in flight when the cancel arrived: nowhere near the 1000 asked for.
    assert stopped_at - cancelled_at <= 5

    started = time.monotonic()
    first = next(client.dream(coffee, **SMALL))
    assert isinstance(first, Started)  # sent once the dream has its slot
    assert time.monotonic() - started < 5


def test_a_passed_deadline_stops_the_ascent(server, client: DreamClient, coffee: Path) -> None:
    engine = server.server.engine
    before = engine.steps_run
    with pytest.raises(DeadlineExceeded):
        list(client.dream(coffee, max_size=64, octaves=1, steps_per_octave=1000, timeout=1.0))
    stopped_at = wait_until_still(lambda: engine.steps_run)
    assert 0 < stopped_at - before < 1000


def test_two_clients_at_once_both_get_their_whole_dream(server, coffee: Path) -> None:
    results: dict[int, list] = {}

    def dream(seed: int) -> None:
        with DreamClient(server.target) as client:
            results[seed] = frames_of(list(client.dream(coffee, seed=seed, **SMALL)))

    threads = [threading.Thread(target=dream, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(results) == [1, 2]
    for frames in results.values():
        assert [frame.octave for frame in frames] == [1, 2] and frames[-1].final
    assert results[1][-1].data != results[2][-1].data


def test_beyond_the_running_dreams_and_the_queue_the_server_is_busy(start_server, repository, coffee: Path) -> None:
    tight = start_server(repository, max_concurrent=1, max_queue=0)
    with DreamClient(tight.target) as first, DreamClient(tight.target) as second:
        running = first.dream(coffee, max_size=64, octaves=1, steps_per_octave=1000)
        assert isinstance(next(running), Started)  # it holds the one slot
        with pytest.raises(ServerBusy, match="busy"):
            list(second.dream(coffee, **SMALL))
        running.close()
        wait_until_still(lambda: tight.server.engine.steps_run)
        assert frames_of(list(second.dream(coffee, **SMALL)))[-1].final


def test_frames_of_several_megabytes_pass_both_ways(client: DreamClient) -> None:
    # Noise does not compress: a 1200x1200 PNG is over 4 MB, gRPC's default limit, on
    # the way in and (dreamed on a shallow layer for one step) on the way out.
    noise = np.random.default_rng(0).integers(0, 256, (1200, 1200, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 4 * 1024 * 1024
    events = client.dream(buffer.getvalue(), layers={"stem": 1.0}, octaves=1, steps_per_octave=1, max_size=1200)
    final = frames_of(list(events))[-1]
    assert len(final.data) > 4 * 1024 * 1024
    assert final.image().size == (1200, 1200)


def test_the_async_client_streams_the_same_dream(server, client: DreamClient, coffee: Path) -> None:
    async def dream() -> tuple[list, list]:
        async with AsyncDreamClient(server.target) as async_client:
            events = [event async for event in async_client.dream(coffee, seed=4, **SMALL)]
            return events, await async_client.models()

    events, models = asyncio.run(dream())
    expected = list(client.dream(coffee, seed=4, **SMALL))
    assert [type(event) for event in events] == [type(event) for event in expected]
    assert frames_of(events)[-1].data == frames_of(expected)[-1].data
    assert [model.name for model in models] == [model.name for model in client.models()]


def test_an_unreachable_server_is_one_clear_error_naming_the_address() -> None:
    with DreamClient("127.0.0.1:1") as client:
        with pytest.raises(ServerUnavailable, match="cannot reach a dreamstream server at 127.0.0.1:1"):
            client.models(timeout=10)
