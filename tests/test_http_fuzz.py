"""Fuzzing the HTTP gateway as the gRPC fuzz suite fuzzes Dream: a real serve process, hypothesis' requests.

Field names (DreamRequest's, misspelt ones, any text), values of every shape, the fuzz
suite's broken pictures, form or raw bodies under any content type, broken multipart
bodies. Every answer must be a dream or a refusal (200 with a stream that ends in `done`
or in a refusal's `error`, or a 4xx with the JSON body), never a 5xx; the server stays up.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from health import serving_status
from http_gateway import GatewayProcess, server_events
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_fuzz import GOOD_PICTURES, LONG, SERVE_FLAGS, pictures

from dreamstream.server.http_requests import OPTION_NAMES, PICTURE_FIELDS

CASES = int(os.environ.get("DREAMSTREAM_HTTP_FUZZ_CASES", 2_000 if LONG else 120))
REFUSALS = {400, 404, 413, 429}
# What a stream that started may still end with: a refusal's code, never INTERNAL.
STREAM_ENDS = {"INVALID_ARGUMENT", "NOT_FOUND", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED"}

names = st.one_of(st.sampled_from([*OPTION_NAMES, *PICTURE_FIELDS]), st.text(max_size=16))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=12)),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=6,
)
values = st.one_of(
    st.sampled_from(
        [
            "1",
            "2",
            "0",
            "-1",
            "0.5",
            "true",
            "false",
            "nan",
            "Infinity",
            "1e40",
            "IMAGE_FORMAT_JPEG",
            '{"block3": 1}',
            '{"block3": "x"}',
            '{"block3": [1, 2]}',
            "[]",
            "{}",
            "",
            " ",
        ]
    ),  # fmt: skip
    st.integers(-(2**64), 2**64).map(str),
    json_values.map(lambda value: json.dumps(value, allow_nan=True)),
    st.text(max_size=40),
)
# A small legal dream, so that the dreaming path is reached too.
LEGAL = {"max_size": "48", "octaves": "1", "steps_per_octave": "1"}
content_types = st.sampled_from(
    [
        "image/png",
        "application/octet-stream",
        "text/plain",
        "application/json",
        "multipart/form-data",
        "multipart/form-data; boundary=zz",
        "multipart/form-data; boundary=",
        "",
        "image/png; charset=\u00e9",
    ]  # fmt: skip
)


@st.composite
def requests(draw: st.DrawFn) -> dict:
    """One POST /api/dreams: a form, a raw body, or a broken multipart body; options in the form or query."""
    nearly_legal = draw(st.booleans())  # a legal dream with at most one field fuzzed: past planning, into the ascent
    options = {**LEGAL, **draw(st.dictionaries(names, values, max_size=1))} if nearly_legal else {}
    options.update({} if nearly_legal else draw(st.dictionaries(names, values, max_size=4)))
    shape = "form" if nearly_legal else draw(st.sampled_from(["form", "raw", "broken"]))
    query = options if shape != "form" or draw(st.booleans()) else {}
    request: dict = {"params": {key: value for key, value in query.items() if "\0" not in key + value}}
    if shape == "form":
        fields = {} if query else options
        image = draw(st.sampled_from(GOOD_PICTURES) if nearly_legal else pictures)
        files = {"image": ("p", image)} if nearly_legal or draw(st.integers(0, 4)) else {}
        if draw(st.integers(0, 5)) == 0:
            files["guide"] = ("g", draw(st.sampled_from(GOOD_PICTURES)))
        request.update(data=fields, files=files or None)
    elif shape == "raw":
        request.update(content=draw(pictures), headers={"content-type": draw(content_types)})
    else:
        body = draw(st.binary(max_size=300))
        if draw(st.booleans()):
            body = b'--zz\r\nContent-Disposition: form-data; name="image"; filename="a"\r\n\r\n' + body
        request.update(content=body, headers={"content-type": "multipart/form-data; boundary=zz"})
    return request


@pytest.fixture(scope="module")
def fuzzed_gateway(lite0_dir: Path) -> Iterator[GatewayProcess]:
    server = GatewayProcess(lite0_dir.parent, *SERVE_FLAGS)
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log


def test_no_http_request_gets_a_5xx_and_the_server_stays_up(fuzzed_gateway: GatewayProcess) -> None:
    statuses: collections.Counter[str] = collections.Counter()
    wrong: list[tuple[str, str]] = []
    client = httpx.Client(base_url=fuzzed_gateway.url, timeout=60)

    @settings(
        max_examples=CASES,
        deadline=None,
        database=None,
        derandomize=not LONG,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests())
    def one_request(request: dict) -> None:
        try:
            with client.stream("POST", "/api/dreams", **request) as response:
                body = response.read().decode(errors="replace")
        except (httpx.InvalidURL, UnicodeEncodeError):  # a request httpx itself cannot write
            return
        outcome = str(response.status_code)
        if response.status_code == 200:
            ends = [event for event in server_events(body.splitlines()) if event.name in ("done", "error")]
            outcome = ends[-1].data.get("code", "OK") if ends else "no end"
            if outcome != "OK" and outcome not in STREAM_ENDS:
                wrong.append((outcome, body[-300:]))
        elif response.status_code not in REFUSALS or "reason" not in response.json():
            wrong.append((outcome, body[:300]))
        statuses[outcome] += 1

    try:
        one_request()
        cancel = client.delete("/api/dreams/" + "%2F..%00" * 20)
        assert cancel.status_code == 404
    finally:
        client.close()
    print(f"http fuzz: {sum(statuses.values())} requests, outcomes {dict(statuses)}, wrong {len(wrong)}")
    assert wrong == []
    assert statuses["OK"] > 0 and statuses["400"] > 0  # both paths were exercised
    assert fuzzed_gateway.process.poll() is None
    assert serving_status(fuzzed_gateway.target, timeout=10) == 1  # SERVING
