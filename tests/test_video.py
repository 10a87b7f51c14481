"""Video and zoom animations: the engine's frame loop, and the DreamVideo and Zoom calls end to end
through a real server on loopback, with clips made from the real photographs."""

from __future__ import annotations

import asyncio
import io
import queue
from dataclasses import replace
from pathlib import Path

import grpc
import numpy as np
import pytest
from conftest import shared_image, wait_until_still
from PIL import Image

from benchmarks.clips import camera_frames
from benchmarks.flicker import as_array, flicker
from dreamstream.client import AsyncDreamClient, DreamClient, InvalidRequest
from dreamstream.server.animations import video_frames
from dreamstream.server.dataplane import read_frames
from dreamstream.server.engine import DreamSpec
from dreamstream.server.engine.motion import dense_flow, warp
from dreamstream.server.engine.video import (
    BlendMode,
    VideoDreamer,
    VideoSpec,
    final_image,
    plan_video,
    starting_from,
)
from dreamstream.server.engine.zoom import ZoomSpec, plan_zoom, zoom_frames
from dreamstream.server.refusals import InvalidRequest as Refused
from dreamstream.v1 import dream_pb2, dream_pb2_grpc

TINY = {"max_size": 64, "octaves": 1, "steps_per_octave": 2}


def png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def clip() -> list[Image.Image]:
    """Six 64x48 views of a camera panning over the coffee photograph."""
    return camera_frames(shared_image("coffee.png"), 6, (64, 48))


@pytest.fixture(scope="module")
def clip_frames(clip: list[Image.Image]) -> list[bytes]:
    return [png(view) for view in clip]


def dream_video(engine, frames: list[bytes], **video) -> list:
    plan = plan_video(VideoSpec(dream=DreamSpec(**TINY), **video), engine)
    return list(VideoDreamer(engine, plan).dream_frames(frames))


# --- The engine ---


def test_with_blend_zero_every_frame_is_the_dream_of_that_frame_alone(engine, clip_frames: list[bytes]) -> None:
    dreamed = dream_video(engine, clip_frames[:3], blend=0.0)
    for frame, data in zip(dreamed, clip_frames[:3], strict=True):
        alone = final_image(engine.run(engine.plan(DreamSpec(image=data, **TINY))))
        np.testing.assert_array_equal(frame.image, alone)
        assert frame.blend == 0.0


def test_a_blended_frame_starts_from_its_input_mixed_with_the_previous_dream(engine, clip_frames: list[bytes]) -> None:
    first, second = dream_video(engine, clip_frames[:2], blend=0.5)
    plan = engine.plan(DreamSpec(image=clip_frames[1], **TINY))
    start = 0.5 * first.image + 0.5 * plan.start.pixels(np.random.default_rng(0))
    expected = final_image(engine.run(starting_from(plan, start.astype(np.float32))))
    np.testing.assert_allclose(second.image, expected, atol=1e-6)
    assert (first.blend, second.blend) == (0.0, 0.5)


def test_with_flow_the_previous_dream_is_warped_onto_the_new_frame_first(engine, clip_frames: list[bytes]) -> None:
    first, second = dream_video(engine, clip_frames[:2], blend=0.5, flow=True)
    plans = [engine.plan(DreamSpec(image=data, **TINY)) for data in clip_frames[:2]]
    inputs = [plan.start.pixels(np.random.default_rng(0)) for plan in plans]
    carried = warp(first.image, dense_flow(inputs[0], inputs[1]))
    expected = final_image(engine.run(starting_from(plans[1], (0.5 * carried + 0.5 * inputs[1]).astype(np.float32))))
    np.testing.assert_allclose(second.image, expected, atol=1e-6)


def test_flow_moves_the_dream_with_the_scene(engine, clip: list[Image.Image], clip_frames: list[bytes]) -> None:
    stronger = {"step_size": 0.05}
    inputs = [as_array(view) for view in clip]

    def flicker_of(**video) -> float:
        plan = plan_video(VideoSpec(dream=DreamSpec(**TINY, **stronger), **video), engine)
        return flicker(inputs, [frame.image for frame in VideoDreamer(engine, plan).dream_frames(clip_frames)])

    assert flicker_of(blend=0.5, flow=True) < flicker_of(blend=0.5, flow=False)


def test_loop_moves_the_blend_between_zero_and_a_half_and_back(engine, clip_frames: list[bytes]) -> None:
    frames = [clip_frames[0]] * 12
    blends = [frame.blend for frame in dream_video(engine, frames, blend_mode=BlendMode.LOOP)]
    assert blends == pytest.approx([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0, 0.1])


def test_random_blends_are_drawn_up_to_a_half_from_the_seed(engine, clip_frames: list[bytes]) -> None:
    frames = clip_frames[:4]
    blends = [frame.blend for frame in dream_video(engine, frames, blend_mode=BlendMode.RANDOM)]
    again = [frame.blend for frame in dream_video(engine, frames, blend_mode=BlendMode.RANDOM)]
    assert blends == again
    assert blends[0] == 0.0 and all(0.0 <= blend <= 0.5 for blend in blends) and len(set(blends[1:])) == 3


def test_any_int64_seeds_a_video_as_it_seeds_a_dream(engine, clip_frames: list[bytes]) -> None:
    """A negative seed (found by the fuzz suite: it failed INTERNAL) seeds the blends and the frames."""
    plan = plan_video(VideoSpec(dream=DreamSpec(**{**TINY, "seed": -(2**63)}), blend_mode=BlendMode.RANDOM), engine)
    frames = list(VideoDreamer(engine, plan).dream_frames(clip_frames[:2]))
    assert [frame.index for frame in frames] == [0, 1] and 0.0 <= frames[1].blend <= 0.5


def test_a_layer_schedule_dreams_frame_i_on_its_ith_layer_round_and_round(engine, clip_frames: list[bytes]) -> None:
    dreamed = dream_video(engine, clip_frames[:5], layer_schedule=("block2", "block4"))
    assert [dict(frame.layers) for frame in dreamed] == [
        {"block2": 1.0}, {"block4": 1.0}, {"block2": 1.0}, {"block4": 1.0}, {"block2": 1.0},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("video", "field"),
    [
        ({"blend": 0.99}, "settings.blend"),
        ({"blend": float("nan")}, "settings.blend"),
        ({"window": 33}, "settings.window"),
        ({"layer_schedule": ("block2", "no_such_layer")}, "layers"),
    ],
)
def test_bad_video_settings_are_refused_before_any_frame(engine, video: dict, field: str) -> None:
    with pytest.raises(Refused) as refused:
        plan_video(VideoSpec(dream=DreamSpec(**TINY), **video), engine)
    assert refused.value.field == field


def test_video_settings_carrying_a_picture_are_refused(engine, clip_frames: list[bytes]) -> None:
    with pytest.raises(Refused, match="leave image, width and height empty"):
        plan_video(VideoSpec(dream=DreamSpec(image=clip_frames[0], **TINY)), engine)


def test_a_frame_of_another_size_is_refused(engine, clip: list[Image.Image]) -> None:
    frames = [png(clip[0]), png(clip[1].resize((48, 64)))]
    with pytest.raises(Refused, match="same size") as refused:
        dream_video(engine, frames, blend=0.5)
    assert refused.value.reason == "FRAME_SIZE_CHANGED"


def test_each_zoom_frame_is_the_last_dream_moved_and_dreamed_again(engine, coffee: Path) -> None:
    spec = ZoomSpec(dream=DreamSpec(image=coffee.read_bytes(), **TINY), frames=3, zoom=1.1, rotate=2.0)
    frames = list(zoom_frames(engine, plan_zoom(spec, engine)))
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert all(frame.image.shape == (43, 64, 3) for frame in frames)
    first_alone = final_image(engine.run(engine.plan(spec.dream)))
    np.testing.assert_array_equal(frames[0].image, first_alone)
    assert not np.allclose(frames[1].image, frames[0].image, atol=0.05)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"frames": 0}, "frames"),
        ({"zoom": 3.0}, "zoom"),
        ({"rotate": 200.0}, "rotate"),
        ({"shift": (70, 0)}, "shift_x"),
    ],
)
def test_bad_zoom_requests_are_refused(engine, coffee: Path, change: dict, field: str) -> None:
    spec = replace(ZoomSpec(dream=DreamSpec(image=coffee.read_bytes(), **TINY), frames=2), **change)
    with pytest.raises(Refused) as refused:
        plan_zoom(spec, engine)
    assert refused.value.field == field


# --- The calls, through a real server ---


def test_a_video_comes_back_one_dreamed_frame_per_frame_in_order(client: DreamClient, clip: list[Image.Image]) -> None:
    dreamed = list(client.dream_video(clip, blend=0.5, flow=True, **TINY))
    assert [frame.index for frame in dreamed] == list(range(len(clip)))
    assert all((frame.width, frame.height) == (64, 48) for frame in dreamed)
    assert all(frame.image().size == (64, 48) for frame in dreamed)
    assert [frame.blend for frame in dreamed] == [0.0] + [0.5] * (len(clip) - 1)
    assert dreamed[0].layers == {"block10": 1.0, "block12": 0.5}


def test_the_client_keeps_at_most_window_frames_unanswered(client: DreamClient, clip: list[Image.Image]) -> None:
    pulled = 0

    def frames():
        nonlocal pulled
        for view in clip * 2:
            pulled += 1
            yield view

    ahead = []
    for received, _ in enumerate(client.dream_video(frames(), window=2, **TINY), start=1):
        ahead.append(pulled - received)
    assert len(ahead) == 12
    # The iterator is read one frame before there is room to send it.
    assert max(ahead) <= 2 + 1


def test_the_server_reads_a_frame_only_when_the_window_has_room() -> None:
    async def scenario() -> list[int]:
        async def messages():
            for index in range(10):
                yield dream_pb2.DreamVideoRequest(frame=bytes([index]))

        inbox: queue.SimpleQueue = queue.SimpleQueue()
        window = asyncio.Semaphore(3)
        reader = asyncio.create_task(read_frames(video_frames(messages()), inbox, window))
        sizes = []
        for released in (0, 2, 10):
            for _ in range(released):
                window.release()
            for _ in range(50):  # let the reader run as far as it can
                await asyncio.sleep(0)
            sizes.append(inbox.qsize())
        await reader
        return sizes

    # 3 frames, then 2 more once two were answered; then all ten and the end mark.
    assert asyncio.run(scenario()) == [3, 5, 11]


def test_a_cancelled_video_stops_the_server_and_frees_its_slot(
    server, client: DreamClient, clip: list[Image.Image], coffee: Path
) -> None:
    engine = server.server.engine
    endless = (clip[index % len(clip)] for index in range(10_000))
    dreamed = client.dream_video(endless, **TINY)
    next(dreamed)
    next(dreamed)
    dreamed.close()  # leaving the stream cancels the call
    cancelled_at = engine.steps_run
    stopped_at = wait_until_still(lambda: engine.steps_run)
    # The frames in the window may still be dreamed, 2 steps each: nowhere near 10,000 frames.
    assert stopped_at - cancelled_at <= 2 * (4 + 2)
    assert list(client.dream(coffee, **TINY))[-1].final


def test_a_frame_that_is_no_picture_ends_the_video_with_invalid_argument(
    client: DreamClient, clip: list[Image.Image]
) -> None:
    received = []
    with pytest.raises(InvalidRequest, match="cannot decode the image"):
        for frame in client.dream_video([clip[0], clip[1], b"not a picture", clip[2]], window=1, **TINY):
            received.append(frame.index)
    assert received == [0, 1]


def test_each_frame_is_held_to_the_limits_of_a_dream(client: DreamClient) -> None:
    tiny = Image.new("RGB", (16, 16), "gray")
    with pytest.raises(InvalidRequest, match="needs at least 32 px"):
        list(client.dream_video([tiny], **TINY))


def test_a_video_call_must_start_with_its_settings(server) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = dream_pb2_grpc.DreamServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            list(stub.DreamVideo(iter([dream_pb2.DreamVideoRequest(frame=b"x")])))
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "starts with one message holding settings" in refused.value.details()


def test_bad_video_settings_are_refused_by_the_server(client: DreamClient, clip: list[Image.Image]) -> None:
    with pytest.raises(InvalidRequest, match="unknown layer"):
        list(client.dream_video(clip[:1], layer_schedule=["block2", "nope"], **TINY))
    with pytest.raises(InvalidRequest, match="blend 1.5 is out of range"):
        list(client.dream_video(clip[:1], blend=1.5, **TINY))


def test_a_zoom_streams_its_frames_as_they_are_made(client: DreamClient, coffee: Path) -> None:
    frames = list(client.zoom(coffee, frames=3, zoom=1.1, shift=(2, 0), **TINY))
    assert [frame.index for frame in frames] == [0, 1, 2]
    assert all(frame.image().size == (64, 43) for frame in frames)


def test_the_async_client_dreams_videos_and_zooms(server, clip: list[Image.Image], coffee: Path) -> None:
    async def scenario() -> tuple[list[int], list[int]]:
        async with AsyncDreamClient(server.target) as client:
            video = [frame.index async for frame in client.dream_video(clip[:3], blend="loop", **TINY)]
            zoom = [frame.index async for frame in client.zoom(coffee, frames=2, **TINY)]
        return video, zoom

    assert asyncio.run(scenario()) == ([0, 1, 2], [0, 1])


def test_the_flicker_benchmark_writes_its_table_and_frames(lite0_dir: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[1]
    photo = shared_image("brick.png")
    command = [sys.executable, "-m", "benchmarks.flicker", "--models", str(lite0_dir.parent), "--image", str(photo),
               "--frames", "3", "--size", "64", "--octaves", "1", "--steps", "1", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "flicker.md").read_text()
    for row in ("the input clip", "`--blend 0`", "`--blend 0.5`", "`--blend 0.5 --flow`"):
        assert row in table
    with Image.open(tmp_path / "flicker.jpg") as strip:
        assert strip.size == (4 * 128, 4 * 96)  # four frames a row (blank past the third), one row a way
