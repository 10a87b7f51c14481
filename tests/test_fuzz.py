"""Fuzzing the Dream call: every DreamRequest field and mutated picture bytes, against a real serve process.

Hypothesis builds requests from the .proto's own descriptor, so fields added later
are fuzzed too. Each request must end with OK or with a refusal, never INTERNAL or
UNKNOWN; the server must stay up and serving; its peak memory must stay under its
memory budget. A few hundred cases run in the normal suite; DREAMSTREAM_LONG_TESTS=1
runs the long mode (DREAMSTREAM_FUZZ_CASES sets the count in either mode).
"""

from __future__ import annotations

import collections
import io
import os
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from serve_process import ServeProcess

from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import CHANNEL_OPTIONS

LONG = os.environ.get("DREAMSTREAM_LONG_TESTS") == "1"
CASES = int(os.environ.get("DREAMSTREAM_FUZZ_CASES", 5_000 if LONG else 300))
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


@pytest.fixture(scope="module")
def fuzzed_server(lite0_dir: Path):
    server = ServeProcess(lite0_dir.parent, *SERVE_FLAGS)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log


def test_no_request_gets_internal_or_unknown_and_the_server_stays_up_within_its_memory(fuzzed_server) -> None:
    statuses: collections.Counter[str] = collections.Counter()
    wrong: list[tuple[str, str]] = []
    fuzzed_server.reset_peak()
    baseline = fuzzed_server.status("VmRSS")
    channel = grpc.insecure_channel(fuzzed_server.target, options=CHANNEL_OPTIONS)
    stub = dream_pb2_grpc.DreamServiceStub(channel)

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        derandomize=not LONG,  # the normal suite runs the same cases every time
        suppress_health_check=list(HealthCheck),
    )
    @given(st.one_of(message_of(dream_pb2.DreamRequest.DESCRIPTOR), nearly_legal()))
    def one_request(values: dict) -> None:
        request = dream_pb2.DreamRequest()
        try:
            build(request, values)
        except (ValueError, TypeError):  # a value protobuf itself refuses to hold (cannot be sent)
            return
        call = stub.Dream(request, timeout=120)
        try:
            for _ in call:
                pass
            code, details = grpc.StatusCode.OK, ""
        except grpc.RpcError as error:
            code, details = error.code(), error.details() or ""
        statuses[code.name] += 1
        if code not in ALLOWED:
            wrong.append((code.name, details[:300]))

    try:
        one_request()
    finally:
        channel.close()
    peak_mib = (fuzzed_server.status("VmHWM") - baseline) / 1024
    print(f"fuzz: {sum(statuses.values())} requests, statuses {dict(statuses)}, wrong {len(wrong)}, "
          f"peak +{peak_mib:.0f} MiB (budget {BUDGET_MIB} MiB)")  # fmt: skip
    assert wrong == []
    assert statuses["OK"] > 0 and statuses["INVALID_ARGUMENT"] > 0  # both paths were exercised
    assert fuzzed_server.process.poll() is None
    with grpc.insecure_channel(fuzzed_server.target) as health_channel:
        health = health_pb2_grpc.HealthStub(health_channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert peak_mib <= BUDGET_MIB
