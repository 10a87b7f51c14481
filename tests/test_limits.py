"""Every cost bounded before the work, and the small defects: real servers on loopback, the real client."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image

from dreamstream.client import DreamClient, Frame, InvalidRequest, ModelNotFound, ServerBusy
from dreamstream.server.admission import Admission
from dreamstream.server.engine import DreamEngine
from dreamstream.server.engine.limits import Limits
from dreamstream.server.refusals import Busy, Draining

NOISE = {"width": 64, "height": 48, "octaves": 1, "steps_per_octave": 1}


def encoded(picture: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    return buffer.getvalue()


def limited_server(start_server, repository, **limits):
    return start_server(repository, engine=DreamEngine(repository, limits=Limits(**limits)))


@pytest.mark.parametrize("seed", [-5, -(2**63), 2**63 - 1])
def test_any_int64_seed_dreams_and_the_same_seed_dreams_the_same(client: DreamClient, seed: int) -> None:
    first = [e for e in client.dream(None, seed=seed, **NOISE) if isinstance(e, Frame)][-1]
    again = [e for e in client.dream(None, seed=seed, **NOISE) if isinstance(e, Frame)][-1]
    assert first.final and first.data == again.data


def test_a_misspelt_layer_or_model_gets_did_you_mean(client: DreamClient) -> None:
    with pytest.raises(InvalidRequest, match=r"unknown layer 'blok10' \(did you mean 'block10'\?\)"):
        list(client.dream(None, layers={"blok10": 1.0}, **NOISE))
    with pytest.raises(ModelNotFound, match=r"\(did you mean 'efficientnet-lite0'\?\)"):
        list(client.dream(None, model="efficientnet-lite", **NOISE))


@pytest.mark.parametrize("field", ["model", "layers"])
def test_a_100_kb_name_is_cut_short_in_the_message(client: DreamClient, field: str) -> None:
    name = "x" * 100_000
    options = {"model": name} if field == "model" else {"layers": {name: 1.0}}
    with pytest.raises((InvalidRequest, ModelNotFound)) as refused:
        list(client.dream(None, **NOISE, **options))
    assert "(100000 characters)" in refused.value.message
    assert len(refused.value.message) < 2_000


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "TIFF", "EPS"])
def test_only_png_jpeg_and_webp_are_decoded(client: DreamClient, fmt: str) -> None:
    picture = encoded(Image.new("RGB", (64, 48), (90, 120, 200)), fmt)
    with pytest.raises(InvalidRequest, match=f"{fmt} pictures are not accepted: send PNG, JPEG or WebP") as refused:
        list(client.dream(picture, max_size=64))
    assert "object at 0x" not in refused.value.message


def test_a_10000_px_png_bomb_is_refused_from_its_header(client: DreamClient) -> None:
    bomb = encoded(Image.new("1", (10_000, 10_000)), "PNG")
    assert len(bomb) < 400_000
    with pytest.raises(InvalidRequest, match="10000x10000 px, too many pixels to decode"):
        list(client.dream(bomb, max_size=4096))
    with pytest.raises(InvalidRequest, match="too many pixels"):
        list(client.dream(bomb))


def test_max_input_pixels_is_the_servers_to_set(start_server, repository) -> None:
    server = limited_server(start_server, repository, max_input_pixels=3_000)
    picture = encoded(Image.new("RGB", (64, 48)), "PNG")  # 3,072 px
    with DreamClient(server.target) as client, pytest.raises(InvalidRequest, match=r"at most 0.003 Mpx"):
        list(client.dream(picture))


def test_a_dream_above_the_cost_cap_is_refused_with_the_numbers(start_server, repository) -> None:
    server = limited_server(start_server, repository, max_cost=10_000)
    with DreamClient(server.target) as client:
        with pytest.raises(InvalidRequest, match=r"costs 12,288 pixel-steps .* limit of 10,000: lower steps"):
            list(client.dream(None, width=64, height=48, octaves=1, steps_per_octave=4))
        assert list(client.dream(None, width=64, height=48, octaves=1, steps_per_octave=3))[-1].final


def test_a_dream_past_the_time_limit_is_stopped_with_the_numbers(start_server, repository) -> None:
    server = limited_server(start_server, repository, max_dream_seconds=1e-9)
    with DreamClient(server.target) as client, pytest.raises(ServerBusy, match=r"limit of 1e-09 s per dream"):
        list(client.dream(None, **NOISE))


def test_a_dream_alone_above_the_memory_budget_is_refused(start_server, repository) -> None:
    server = limited_server(start_server, repository, memory_budget=2**20)
    with DreamClient(server.target) as client, pytest.raises(InvalidRequest, match=r"memory budget of 1 MiB"):
        list(client.dream(None, **NOISE))


def test_admission_waits_for_memory_first_come_first_served_and_drains_waiters() -> None:
    async def scenario() -> None:
        admission = Admission(running=3, waiting=2, memory_budget=100)
        await admission.acquire(60)
        big = asyncio.ensure_future(admission.acquire(60))  # fits a slot, not the memory: waits
        small = asyncio.ensure_future(admission.acquire(10))  # would fit, but comes after `big`
        await asyncio.sleep(0)
        assert not big.done() and not small.done()
        with pytest.raises(Busy):
            await admission.acquire(1)  # two are waiting already
        admission.release(60)
        await asyncio.sleep(0)
        assert big.done() and small.done() and admission.running == 2
        waiting = asyncio.ensure_future(admission.acquire(60))
        await asyncio.sleep(0)
        admission.drain()
        with pytest.raises(Draining):
            await waiting
        with pytest.raises(Draining):
            await admission.acquire(1)

    asyncio.run(scenario())
