"""Fuzzing every call: Dream, DreamVideo, Zoom and Classify, against one real serve process.

Hypothesis builds requests from the .proto's own descriptor, so fields added later
are fuzzed too, with mutated picture bytes; DreamVideo streams have their settings
missing or repeated and frames of changing sizes, and one carries thousands of tiny
frames; Zoom asks for huge frame counts. Each call must end with OK or with a
refusal, never INTERNAL or UNKNOWN; the server must stay up and serving, its peak
memory under its memory budget, and its gauges of running and waiting dreams back at
0. A few hundred cases run in the normal suite; DREAMSTREAM_LONG_TESTS=1 runs the
long mode (DREAMSTREAM_FUZZ_CASES sets the count of each call's cases in either mode).
"""

from __future__ import annotations

import collections
import io
import itertools
import os
import socket
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from replicas import scrape
from serve_process import ServeProcess

from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import CHANNEL_OPTIONS

LONG = os.environ.get("DREAMSTREAM_LONG_TESTS") == "1"
CASES = int(os.environ.get("DREAMSTREAM_FUZZ_CASES", 5_000 if LONG else 300))
# The other calls take fewer cases: their requests reach the same planning as Dream's.
OTHER_CASES = int(os.environ.get("DREAMSTREAM_FUZZ_CASES", 2_000 if LONG else 60))
TINY_FRAMES = 5_000 if LONG else 1_000
BUDGET_MIB = 600
# Small limits keep a legal dream to milliseconds, so that hundreds of cases run fast.
SERVE_FLAGS = ("--max-cost", "200000", "--memory-budget", str(BUDGET_MIB), "--max-dream-seconds", "20")
# A request may end with OK or with a refusal; INTERNAL or UNKNOWN (or anything else) is a bug.
ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}
LAYERS = ("stem", "block0", "block10", "block15", "head")


def _picture(fmt: str, size: tuple[int, int] = (48, 32)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 80, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


GOOD_PICTURES = [_picture(fmt) for fmt in ("PNG", "JPEG", "WEBP")]
OTHER_PICTURES = [_picture(fmt) for fmt in ("BMP", "GIF", "TIFF")]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A good picture with bytes flipped, cut short or spliced: what a broken upload looks like."""
    data = bytearray(draw(st.sampled_from(GOOD_PICTURES)))
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


pictures = st.one_of(
    st.just(b""),
    st.sampled_from(GOOD_PICTURES),
    st.sampled_from(OTHER_PICTURES),
    mutated(),
    st.binary(max_size=256),
)
# The 100 KB name is built when drawn: as a literal it would bloat every strategy's repr.
huge_name = st.integers(100_000, 100_000).map(lambda length: "x" * length)
names = st.one_of(st.sampled_from(("", "efficientnet-lite0", *LAYERS)), st.text(max_size=20), huge_name)
small_ints = st.integers(-2, 70)
int32s = st.one_of(small_ints, st.integers(-(2**31), 2**31 - 1))
floats = st.one_of(st.floats(-2.0, 5.0, width=32), st.floats(width=32))


def scalar(field: FieldDescriptor) -> st.SearchStrategy:
    kinds = {
        FieldDescriptor.TYPE_BYTES: pictures,
        FieldDescriptor.TYPE_STRING: names,
        FieldDescriptor.TYPE_INT32: int32s,
        FieldDescriptor.TYPE_INT64: st.one_of(small_ints, st.integers(-(2**63), 2**63 - 1)),
        FieldDescriptor.TYPE_FLOAT: floats,
        FieldDescriptor.TYPE_DOUBLE: floats,
        FieldDescriptor.TYPE_BOOL: st.booleans(),
        FieldDescriptor.TYPE_ENUM: st.integers(-1, 6),  # open enums: unknown values travel too
    }
    return kinds[field.type]


def value_of(field: FieldDescriptor, depth: int) -> st.SearchStrategy:
    """A strategy for one field of any shape: scalar, repeated, map or message."""
    message = field.message_type
    if message is not None and message.GetOptions().map_entry:
        key, value = message.fields_by_name["key"], message.fields_by_name["value"]
        keys = st.one_of(st.sampled_from(LAYERS), names) if key.type == FieldDescriptor.TYPE_STRING else scalar(key)
        return st.dictionaries(keys, value_of(value, depth + 1), max_size=3)
    single = message_of(message, depth + 1) if message is not None else scalar(field)
    return st.lists(single, max_size=4) if field.is_repeated else single


def message_of(descriptor, depth: int = 0) -> st.SearchStrategy:
    """Messages of `descriptor` with each field set or left out."""
    if depth > 2:
        return st.just({})
    fields = {field.name: st.one_of(st.none(), value_of(field, depth)) for field in descriptor.fields}
    return st.fixed_dictionaries(fields)


@st.composite
def nearly_legal(draw: st.DrawFn) -> dict:
    """A small legal dream with up to two fields fuzzed: the path past planning, into the ascent."""
    values = {
        "image": draw(st.sampled_from(GOOD_PICTURES)),
        "max_size": draw(st.integers(32, 64)),
        "octaves": draw(st.integers(1, 2)),
        "steps_per_octave": draw(st.integers(1, 2)),
        "seed": draw(st.integers(-(2**63), 2**63 - 1)),
    }
    fields = list(dream_pb2.DreamRequest.DESCRIPTOR.fields)
    for field in draw(st.lists(st.sampled_from(fields), max_size=2, unique_by=lambda field: field.name)):
        values[field.name] = draw(value_of(field, 1))
    return values


def build(message, values: dict) -> None:
    for name, value in values.items():
        if value is None:
            continue
        field = message.DESCRIPTOR.fields_by_name[name]
        target = getattr(message, name) if field.message_type is not None or field.is_repeated else None
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for key, item in value.items():
                if field.message_type.fields_by_name["value"].message_type is not None:
                    build(target[key], item)
                else:
                    target[key] = item
        elif field.is_repeated and field.message_type is not None:
            for item in value:
                build(target.add(), item)
        elif field.is_repeated:
            target.extend(value)
        elif field.message_type is not None:
            build(target, value)
        else:
            setattr(message, name, value)


@st.composite
def nearly_legal_zoom(draw: st.DrawFn) -> dict:
    """A small legal zoom, its frame count anywhere up to the largest int32, up to two fields fuzzed."""
    values = {
        "dream": draw(nearly_legal()),
        "frames": draw(st.one_of(st.integers(-2, 4), st.integers(5, 2**31 - 1))),
        "zoom": draw(st.one_of(st.none(), floats)),
    }
    fields = list(dream_pb2.ZoomRequest.DESCRIPTOR.fields)
    for field in draw(st.lists(st.sampled_from(fields), max_size=2, unique_by=lambda field: field.name)):
        values[field.name] = draw(value_of(field, 1))
    return values


@st.composite
def nearly_legal_classify(draw: st.DrawFn) -> dict:
    return {
        "image": draw(pictures),
        "model": draw(st.sampled_from(("", "efficientnet-lite0", "nope"))),
        "top": draw(st.one_of(small_ints, int32s)),
    }


def sized_picture(width: int, height: int) -> bytes:
    return _picture("PNG", (width, height))


# One stream message: settings (legal, or fuzzed from the descriptor) or a frame (of any size, or broken).
video_settings = st.one_of(
    # A video's pictures are its frames: the settings' dream carries none.
    st.builds(lambda dream: {"dream": {**dream, "image": None}}, nearly_legal()),
    message_of(dream_pb2.VideoSettings.DESCRIPTOR),
)
video_frames = st.one_of(
    st.sampled_from(GOOD_PICTURES),
    st.builds(sized_picture, st.integers(1, 80), st.integers(1, 80)),  # sizes changing between frames
    pictures,
)


@st.composite
def video_streams(draw: st.DrawFn) -> list[tuple[str, object]]:
    """A DreamVideo stream: settings first (or missing, or repeated later), then frames."""
    stream: list[tuple[str, object]] = []
    if draw(st.integers(0, 9)) > 0:  # a tenth of the streams start without settings
        stream.append(("settings", draw(video_settings)))
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 7)) == 0:
            stream.append(("settings", draw(video_settings)))  # settings again, mid-stream
        else:
            stream.append(("frame", draw(video_frames)))
    return stream


def video_messages(stream: list[tuple[str, object]]):
    for kind, value in stream:
        if kind == "frame":
            yield dream_pb2.DreamVideoRequest(frame=value)
        else:
            settings = dream_pb2.VideoSettings()
            build(settings, value)
            yield dream_pb2.DreamVideoRequest(settings=settings)


class Outcomes:
    """The status of every call, and those that are bugs (anything but OK or a refusal)."""

    def __init__(self) -> None:
        self.statuses: collections.Counter[str] = collections.Counter()
        self.wrong: list[tuple[str, str]] = []

    def finish(self, call) -> None:
        """Make `call()` (a unary call, or a streaming one read to its end) and record how it ended."""
        try:
            responses = call()
            if not isinstance(responses, Message):
                for _ in responses:
                    pass
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        self.statuses[code.name] += 1
        if code not in ALLOWED:
            self.wrong.append((code.name, details[:300]))


def fuzz(strategy: st.SearchStrategy, cases: int, one_call) -> None:
    @settings(
        max_examples=cases,
        deadline=None,
        database=None,
        derandomize=not LONG,  # the normal suite runs the same cases every time
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def one_case(values) -> None:
        one_call(values)

    one_case()


@pytest.fixture(scope="module")
def fuzzed_server(lite0_dir: Path):
    metrics_port = free_port()
    server = ServeProcess(lite0_dir.parent, *SERVE_FLAGS, "--metrics-port", str(metrics_port))
    server.metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def stub(fuzzed_server):
    channel = grpc.insecure_channel(fuzzed_server.target, options=CHANNEL_OPTIONS)
    yield dream_pb2_grpc.DreamServiceStub(channel)
    channel.close()


@pytest.fixture
def watched(fuzzed_server):
    """The server's peak memory from now; after the test, it must be up, serving, within its budget,
    with no dream running or waiting."""
    fuzzed_server.reset_peak()
    baseline = fuzzed_server.status("VmRSS")
    yield fuzzed_server
    peak_mib = (fuzzed_server.status("VmHWM") - baseline) / 1024
    print(f"peak +{peak_mib:.0f} MiB (budget {BUDGET_MIB} MiB)")
    assert fuzzed_server.process.poll() is None
    with grpc.insecure_channel(fuzzed_server.target) as health_channel:
        health = health_pb2_grpc.HealthStub(health_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert peak_mib <= BUDGET_MIB
    samples = scrape(fuzzed_server.metrics_url)
    for gauge in ("dreamstream_inflight_dreams", "dreamstream_queued_dreams"):  # every kind of call
        values = {labels: value for (name, labels), value in samples.items() if name == gauge}
        assert values and set(values.values()) == {0}, (gauge, values)


def report(call: str, outcomes: Outcomes) -> None:
    print(f"fuzz {call}: {sum(outcomes.statuses.values())} calls, statuses {dict(outcomes.statuses)}, "
          f"wrong {len(outcomes.wrong)}")  # fmt: skip


# Each call of one request: its request message, its nearly legal requests, its case count.
CALLS = {
    "Dream": (dream_pb2.DreamRequest, nearly_legal(), CASES),
    "Zoom": (dream_pb2.ZoomRequest, nearly_legal_zoom(), OTHER_CASES),
    "Classify": (dream_pb2.ClassifyRequest, nearly_legal_classify(), OTHER_CASES),
}


@pytest.mark.parametrize("call", list(CALLS))
def test_no_request_gets_internal_or_unknown_and_the_server_stays_up_within_its_memory(
    stub, watched, call: str
) -> None:
    message, nearly_legal_request, cases = CALLS[call]
    strategy = st.one_of(message_of(message.DESCRIPTOR), nearly_legal_request)  # any request, or a legal one bent
    method = getattr(stub, call)
    outcomes = Outcomes()

    def one_request(values: dict) -> None:
        request = message()
        try:
            build(request, values)
        except (ValueError, TypeError):  # a value protobuf itself refuses to hold (cannot be sent)
            return
        outcomes.finish(lambda: method(request, timeout=120))

    fuzz(strategy, cases, one_request)
    report(call, outcomes)
    assert outcomes.wrong == []
    assert outcomes.statuses["OK"] > 0 and outcomes.statuses["INVALID_ARGUMENT"] > 0  # both paths were exercised


def test_video_streams_with_missing_or_repeated_settings_and_changing_frames_never_get_internal(stub, watched) -> None:
    outcomes = Outcomes()

    def one_stream(stream: list) -> None:
        try:
            messages = list(video_messages(stream))
        except (ValueError, TypeError):
            return
        outcomes.finish(lambda: stub.DreamVideo(iter(messages), timeout=120))

    fuzz(video_streams(), OTHER_CASES, one_stream)
    report("DreamVideo", outcomes)
    assert outcomes.wrong == []
    assert outcomes.statuses["OK"] > 0 and outcomes.statuses["INVALID_ARGUMENT"] > 0


def test_a_video_of_thousands_of_tiny_frames_runs_within_its_memory(stub, watched) -> None:
    settings = dream_pb2.VideoSettings(blend=0.5)
    build(settings.dream, {"max_size": 32, "octaves": 1, "steps_per_octave": 1})
    frame = sized_picture(32, 32)
    messages = itertools.chain(
        [dream_pb2.DreamVideoRequest(settings=settings)],
        (dream_pb2.DreamVideoRequest(frame=frame) for _ in range(TINY_FRAMES)),
    )
    responses = list(stub.DreamVideo(messages, timeout=1200))
    print(f"fuzz DreamVideo: {len(responses)} tiny frames dreamed")
    assert [response.frame.index for response in responses] == list(range(TINY_FRAMES))
