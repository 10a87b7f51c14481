"""A client that stops reading: the ascent waits for it (keeping its slot), and one idle too long is dropped."""

from __future__ import annotations

import io
from collections.abc import Iterator

import grpc
import numpy as np
import pytest
from conftest import wait_until_still
from PIL import Image

from dreamstream.client import DreamClient, ServerBusy
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import CHANNEL_OPTIONS

# Frames of noise hardly compress: ten of them, several MB in all, fill any transport
# window of a reader that takes nothing.
OCTAVES = 10
BIG_FRAMES = dream_pb2.DreamRequest(width=512, height=512, octaves=OCTAVES, octave_scale=1.05, steps_per_octave=1)
# No window growth: the client's transport takes only what its initial window allows.
SLOW_READER_OPTIONS = (*CHANNEL_OPTIONS, ("grpc.http2.bdp_probe", 0))


def slow_reader(target: str) -> tuple[grpc.Channel, Iterator[dream_pb2.DreamResponse]]:
    channel = grpc.insecure_channel(target, options=SLOW_READER_OPTIONS)
    return channel, dream_pb2_grpc.DreamServiceStub(channel).Dream(BIG_FRAMES, timeout=300)


def assert_dropped_and_its_slot_freed(server, steps_before: int, call: Iterator) -> None:
    """`call`'s reader reads nothing more (with --reader-timeout 1): the work stops before its
    end, its slot frees, and the call ends RESOURCE_EXHAUSTED READER_IDLE."""
    engine = server.server.engine
    stopped = wait_until_still(lambda: engine.steps_run, settle=2.0, timeout=120) - steps_before
    assert stopped < OCTAVES
    # The slot is free again: a new dream runs (it may have to wait for the worker to stop).
    with DreamClient(server.target, retries=20) as client:
        assert list(client.dream(None, width=64, height=64, octaves=1, steps_per_octave=1))[-1].final
    with pytest.raises(grpc.RpcError) as dropped:
        list(call)
    assert dropped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "read nothing for 1 s" in dropped.value.details()


def test_the_ascent_waits_for_a_reader_that_stops_and_goes_on_when_it_reads_again(start_server, repository) -> None:
    server = start_server(repository, max_concurrent=1, max_queue=0, reader_timeout=300)
    engine = server.server.engine
    before = engine.steps_run
    channel, call = slow_reader(server.target)
    with channel:
        assert next(call).WhichOneof("event") == "started"
        stalled = wait_until_still(lambda: engine.steps_run, settle=2.0, timeout=120) - before
        assert stalled < OCTAVES  # the ascent stopped before the end: it waits for the reader
        # The waiting dream keeps its slot: another is refused, not run beside it.
        with DreamClient(server.target) as client, pytest.raises(ServerBusy):
            list(client.dream(None, width=64, height=64))
        rest = list(call)
    frames = [response.frame for response in rest if response.WhichOneof("event") == "frame"]
    assert len(frames) == OCTAVES and frames[-1].final
    assert engine.steps_run - before == OCTAVES


def test_a_reader_idle_past_the_timeout_is_dropped_and_its_slot_freed(start_server, repository) -> None:
    server = start_server(repository, max_concurrent=1, max_queue=0, reader_timeout=1)
    before = server.server.engine.steps_run
    channel, call = slow_reader(server.target)
    with channel:
        assert next(call).WhichOneof("event") == "started"
        assert_dropped_and_its_slot_freed(server, before, call)


def test_a_video_whose_reader_is_idle_past_the_timeout_is_dropped_too(start_server, repository) -> None:
    """The slow-reader rule is the data plane's, the same for every streaming call."""
    server = start_server(repository, max_concurrent=1, max_queue=0, reader_timeout=1)
    before = server.server.engine.steps_run
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")  # noise: every dreamed frame is large too
    settings = dream_pb2.VideoSettings(dream=dream_pb2.DreamRequest(octaves=1, steps_per_octave=1), window=OCTAVES)
    requests = [dream_pb2.DreamVideoRequest(settings=settings)]
    requests += [dream_pb2.DreamVideoRequest(frame=buffer.getvalue())] * OCTAVES
    with grpc.insecure_channel(server.target, options=SLOW_READER_OPTIONS) as channel:
        call = dream_pb2_grpc.DreamServiceStub(channel).DreamVideo(iter(requests), timeout=300)
        assert next(call).frame.index == 0
        assert_dropped_and_its_slot_freed(server, before, call)
