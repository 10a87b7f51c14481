"""The data plane alone, with no transport: a real engine over the real efficientnet-lite0, real
worker threads, and `send` functions standing in for a caller's stream (the interface every
transport implements). The same rules hold for every kind of call: queue places, the cancel
handle, the slow-reader rule, drain, and one record per call."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import replace
from typing import Any

import pytest
from conftest import shared_image

from dreamstream.server.dataplane import (
    CallCancelled,
    CallKind,
    DataPlane,
    EncodedFrame,
    EncodedOctave,
    Queued,
    Started,
    outcome_of,
)
from dreamstream.server.engine import DreamSpec, Step
from dreamstream.server.engine.video import VideoSpec
from dreamstream.server.engine.zoom import ZoomSpec
from dreamstream.server.refusals import Busy, Draining, InvalidRequest, Refusal, RefusalKind, SlowReader
from dreamstream.server.telemetry import DreamListener, DreamRecord, Telemetry

SMALL = DreamSpec(noise_size=(64, 64), octaves=2, steps_per_octave=3)
LONG = DreamSpec(noise_size=(128, 128), octaves=1, steps_per_octave=1000)
TINY_FRAME = DreamSpec(max_size=64, octaves=1, steps_per_octave=2)


class Ended(DreamListener):
    """The records of the calls that ended, in order."""

    def __init__(self) -> None:
        self.records: list[DreamRecord] = []

    def ended(self, record: DreamRecord) -> None:
        self.records.append(record)


def in_plane(engine: Any, scenario: Callable[[DataPlane, Ended], Coroutine[Any, Any, Any]], **options: Any) -> Any:
    """Run `scenario(plane, ended)` on a fresh event loop with a data plane of its own."""
    ended = Ended()

    async def run() -> Any:
        plane = DataPlane(engine, telemetry=Telemetry([ended]), **options)
        try:
            return await asyncio.wait_for(scenario(plane, ended), 120)
        finally:
            plane.close()

    return asyncio.run(run())


class Collect:
    """A `send` that keeps every event; `first_step` is set at the first Step."""

    def __init__(self) -> None:
        self.events: list[object] = []
        self.first_step = asyncio.Event()

    async def __call__(self, event: object) -> None:
        self.events.append(event)
        if isinstance(event, Step):
            self.first_step.set()


async def run_call(plane: DataPlane, kind: CallKind, work: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    async with plane.call(kind, f"{kind.value}-test") as call:
        return await work(call)


def test_a_dream_sends_started_then_its_steps_and_octaves_in_order_and_is_recorded(engine: Any) -> None:
    async def scenario(plane: DataPlane, ended: Ended) -> list[object]:
        send = Collect()
        await run_call(plane, CallKind.DREAM, lambda call: call.dream(SMALL, send))
        return send.events

    events = in_plane(engine, scenario)
    assert isinstance(events[0], Started) and events[0].kind is CallKind.DREAM
    assert events[0].request_id == "dream-test"
    kinds = [type(event).__name__ for event in events[1:]]
    assert kinds == ["Step"] * 3 + ["EncodedOctave"] + ["Step"] * 3 + ["EncodedOctave"]
    octaves = [event for event in events if isinstance(event, EncodedOctave)]
    assert [octave.octave.final for octave in octaves] == [False, True]
    assert all(octave.data.startswith(b"\x89PNG") for octave in octaves)


def test_each_call_ends_in_one_record_with_its_kind_and_outcome(engine: Any) -> None:
    coffee = shared_image("coffee.png").read_bytes()

    async def frames() -> AsyncIterator[bytes]:
        for _ in range(2):
            yield coffee

    async def scenario(plane: DataPlane, ended: Ended) -> list[tuple[str, str, str, int]]:
        await run_call(plane, CallKind.DREAM, lambda call: call.dream(SMALL, Collect()))
        await run_call(plane, CallKind.VIDEO, lambda call: call.video(VideoSpec(dream=TINY_FRAME), frames(), Collect()))
        zoom = ZoomSpec(replace(TINY_FRAME, image=coffee), frames=2)
        await run_call(plane, CallKind.ZOOM, lambda call: call.zoom(zoom, Collect()))
        await run_call(plane, CallKind.CLASSIFY, lambda call: call.classify(shared_image("chelsea.png").read_bytes()))
        with pytest.raises(InvalidRequest):
            await run_call(plane, CallKind.ZOOM, lambda call: call.zoom(ZoomSpec(TINY_FRAME, frames=0), Collect()))
        assert plane.admission.running == 0
        return [
            (record.kind, record.model, record.code, record.steps_done, record.frames_sent) for record in ended.records
        ]

    # Steps: 2 octaves x 3 for the dream, 2 frames x 1 octave x 2 for each animation.
    assert in_plane(engine, scenario) == [
        ("dream", "efficientnet-lite0", "OK", 6, 2),
        ("video", "efficientnet-lite0", "OK", 4, 2),
        ("zoom", "efficientnet-lite0", "OK", 4, 2),
        ("classify", "efficientnet-lite0", "OK", 0, 0),
        ("zoom", "", "INVALID_ARGUMENT", 0, 0),
    ]


def test_a_waiting_call_hears_its_place_and_its_cancel_handle_takes_it_out_of_line(engine: Any) -> None:
    async def scenario(plane: DataPlane, ended: Ended) -> tuple[list[object], list[object], list[str]]:
        running, waiting = Collect(), Collect()
        first = plane.call(CallKind.DREAM, "first")
        second = plane.call(CallKind.ZOOM, "second")

        async def first_call() -> None:
            async with first:
                await first.dream(LONG, running)

        async def second_call() -> None:
            async with second:
                await second.zoom(ZoomSpec(DreamSpec(noise_size=(64, 64), octaves=1, steps_per_octave=1), 3), waiting)

        dreaming = asyncio.create_task(first_call())
        await running.first_step.wait()
        queued = asyncio.create_task(second_call())
        while not waiting.events:  # the second call hears its place before anything else
            await asyncio.sleep(0.01)
        second.cancel()
        with pytest.raises(CallCancelled):
            await queued
        first.cancel()
        with pytest.raises(CallCancelled):
            await dreaming
        return running.events, waiting.events, [record.code for record in ended.records]

    running, waiting, codes = in_plane(engine, scenario, max_concurrent=1, max_queue=1)
    assert waiting == [Queued(place=1, waiting=1)]  # never started
    assert isinstance(running[0], Started) and isinstance(running[-1], Step)  # stopped mid-octave
    assert len(running) < 1 + 1000
    assert codes == ["CANCELLED", "CANCELLED"]


def test_a_full_line_refuses_as_busy_and_the_line_moves_up(engine: Any) -> None:
    async def scenario(plane: DataPlane, ended: Ended) -> tuple[list[object], str]:
        running, second, third = Collect(), Collect(), Collect()
        calls = [plane.call(CallKind.DREAM, name) for name in ("a", "b", "c", "d")]

        async def dream(call: Any, spec: DreamSpec, send: Collect) -> None:
            async with call:
                await call.dream(spec, send)

        dreaming = asyncio.create_task(dream(calls[0], LONG, running))
        await running.first_step.wait()
        waiting_b = asyncio.create_task(dream(calls[1], SMALL, second))
        waiting_c = asyncio.create_task(dream(calls[2], SMALL, third))
        while not (second.events and len(third.events) == 1):
            await asyncio.sleep(0.01)
        with pytest.raises(Busy):
            await dream(calls[3], SMALL, Collect())
        calls[1].cancel()  # the second leaves the line: the third moves up
        with pytest.raises(CallCancelled):
            await waiting_b
        while len(third.events) < 2:
            await asyncio.sleep(0.01)
        calls[0].cancel()
        with pytest.raises(CallCancelled):
            await dreaming
        await waiting_c
        return third.events, ended.records[-1].code

    third, code = in_plane(engine, scenario, max_concurrent=1, max_queue=2)
    assert third[:2] == [Queued(place=2, waiting=2), Queued(place=1, waiting=1)]
    assert isinstance(third[2], Started)
    assert code == "OK"


@pytest.mark.parametrize("kind", [CallKind.DREAM, CallKind.VIDEO])
def test_a_reader_that_takes_nothing_ends_the_call_as_slow_and_frees_its_slot(engine: Any, kind: CallKind) -> None:
    coffee = shared_image("coffee.png").read_bytes()

    async def endless() -> AsyncIterator[bytes]:
        for _ in itertools.count():
            yield coffee

    async def stuck(event: object) -> None:
        if not isinstance(event, Started):
            await asyncio.Event().wait()  # a caller that never reads again

    async def scenario(plane: DataPlane, ended: Ended) -> tuple[int, str]:
        with pytest.raises(SlowReader, match="read nothing for 0.5 s"):
            async with plane.call(kind, "slow") as call:
                if kind is CallKind.DREAM:
                    await call.dream(LONG, stuck)
                else:
                    await call.video(VideoSpec(dream=TINY_FRAME), endless(), stuck)
        while plane.admission.running:  # the slot frees once the worker has really stopped
            await asyncio.sleep(0.01)
        return plane.admission.running, ended.records[-1].code

    assert in_plane(engine, scenario, reader_timeout=0.5) == (0, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize("kind", [CallKind.DREAM, CallKind.VIDEO, CallKind.ZOOM])
def test_drain_stops_every_kind_of_running_call_after_the_grace(engine: Any, kind: CallKind) -> None:
    coffee = shared_image("coffee.png").read_bytes()

    async def endless() -> AsyncIterator[bytes]:
        for _ in itertools.count():
            yield coffee

    async def scenario(plane: DataPlane, ended: Ended) -> tuple[bool, str]:
        send = Collect()
        call = plane.call(kind, "drained")

        async def work() -> None:
            async with call:
                if kind is CallKind.DREAM:
                    await call.dream(LONG, send)
                elif kind is CallKind.VIDEO:
                    await call.video(VideoSpec(dream=TINY_FRAME), endless(), send)
                else:
                    spec = DreamSpec(noise_size=(64, 64), octaves=1, steps_per_octave=5)
                    await call.zoom(ZoomSpec(spec, frames=1000), send)

        running = asyncio.create_task(work())
        while not any(isinstance(event, Started) for event in send.events):
            await asyncio.sleep(0.01)
        finished = await plane.drain(grace=0.2)
        with pytest.raises(Draining, match="shut down before the dream finished"):
            await running
        with pytest.raises(Draining, match="takes no new dream"):
            async with plane.call(CallKind.DREAM, "late") as late:
                await late.dream(SMALL, Collect())
        return finished, ended.records[0].code

    assert in_plane(engine, scenario) == (False, "UNAVAILABLE")


def test_a_call_runs_only_the_work_of_its_kind(engine: Any) -> None:
    async def scenario(plane: DataPlane, ended: Ended) -> None:
        with pytest.raises(TypeError, match="a classify call cannot run a dream"):
            async with plane.call(CallKind.CLASSIFY, "mixed") as call:
                await call.dream(SMALL, Collect())

    in_plane(engine, scenario)


def test_a_zoom_starts_with_its_frame_count_and_sends_its_frames_in_order(engine: Any) -> None:
    async def scenario(plane: DataPlane, ended: Ended) -> list[object]:
        send = Collect()
        spec = ZoomSpec(DreamSpec(noise_size=(64, 64), octaves=1, steps_per_octave=1), frames=2)
        await run_call(plane, CallKind.ZOOM, lambda call: call.zoom(spec, send))
        return send.events

    events = in_plane(engine, scenario)
    assert isinstance(events[0], Started) and events[0].frames == 2
    # Each frame's steps come before it, as the frame is dreamed.
    assert [type(event).__name__ for event in events[1:]] == ["Step", "EncodedFrame"] * 2
    frames = [event for event in events[1:] if isinstance(event, EncodedFrame)]
    assert [frame.frame.index for frame in frames] == [0, 1]
    assert all(frame.format.name == "png" and frame.data.startswith(b"\x89PNG") for frame in frames)


@pytest.mark.parametrize("kind", list(RefusalKind))
def test_a_refusal_is_recorded_by_the_name_of_the_status_the_grpc_adapter_answers(kind: RefusalKind) -> None:
    from dreamstream.server.error_status import status_of

    refusal = Refusal("refused")
    refusal.kind = kind
    assert outcome_of(refusal) == status_of(refusal).name


def test_busy_while_a_zoom_runs_says_when_it_is_expected_to_end(engine: Any) -> None:
    """A zoom knows how many frames it makes: its frames done so far estimate its time left."""

    async def scenario(plane: DataPlane, ended: Ended) -> float | None:
        send = Collect()
        zoom = plane.call(CallKind.ZOOM, "long zoom")

        async def work() -> None:
            async with zoom:
                spec = DreamSpec(noise_size=(64, 64), octaves=1, steps_per_octave=2)
                await zoom.zoom(ZoomSpec(spec, frames=1000), send)

        running = asyncio.create_task(work())
        while not any(isinstance(event, EncodedFrame) for event in send.events):
            await asyncio.sleep(0.01)
        with pytest.raises(Busy) as refused:
            async with plane.call(CallKind.CLASSIFY, "refused") as call:
                await call.classify(shared_image("chelsea.png").read_bytes())
        zoom.cancel()
        with pytest.raises(CallCancelled):
            await running
        return refused.value.retry_after

    retry_after = in_plane(engine, scenario, max_concurrent=1, max_queue=0)
    assert retry_after is not None and retry_after > 0
