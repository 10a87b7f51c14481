"""The HTTP gateway from plain HTTP: a real `serve --http-port` process, curl and httpx on loopback.

The JSON/SSE API streams a dream's events in order, refuses as gRPC refuses (the reason
and message, the HTTP status from the gRPC one), bounds the upload before reading it,
queues and cancels through the same data plane as gRPC (its metrics and access lines),
and serves TLS and bearer tokens from the same flags.
"""

from __future__ import annotations

import base64
import io
import json
import re
import select
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from certificates import make_certificates
from conftest import shared_image
from google.protobuf import json_format
from http_gateway import Event, GatewayProcess, metric_sum, server_events
from PIL import Image
from replicas import scrape
from serve_process import CLI
from system_packages import require_programs

from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import MAX_MESSAGE_BYTES

SMALL = {"octaves": "2", "steps_per_octave": "2", "max_size": "64"}
# A dream long enough to be cancelled while it runs (a few seconds on 2 busy cores).
LONG = {"octaves": "3", "steps_per_octave": "200", "max_size": "128"}


@pytest.fixture(scope="module")
def gateway(lite0_dir: Path) -> Iterator[GatewayProcess]:
    """One dream at a time and one more in line, pictures up to 1 Mpx, clients idle for 4 s dropped."""
    server = GatewayProcess(
        lite0_dir.parent,
        *("--max-concurrent", "1", "--max-queue", "1", "--max-input-pixels", "1000000", "--reader-timeout", "4"),
        metrics=True,
    )
    yield server
    assert server.stop() == 0
    assert "Traceback" not in server.log


@pytest.fixture(scope="module")
def coffee_png() -> bytes:
    return shared_image("coffee.png").read_bytes()


def picture(fmt: str, size: tuple[int, int] = (80, 60)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (90, 140, 200)).save(buffer, format=fmt)
    return buffer.getvalue()


def dream(url: str, image: bytes, fields: dict[str, str], **options) -> tuple[httpx.Response, list[Event]]:
    """POST one dream as a form and read its whole event stream."""
    with httpx.stream("POST", f"{url}/api/dreams", files={"image": ("photo.png", image)}, data=fields,
                      timeout=120, **options) as response:  # fmt: skip
        if response.headers["content-type"].startswith("application/json"):
            response.read()
            return response, []
        return response, list(server_events(response.iter_lines()))


def test_the_models_and_their_layers_are_the_grpc_listing_as_json(gateway: GatewayProcess) -> None:
    answer = httpx.get(f"{gateway.url}/api/models", timeout=30)
    with grpc.insecure_channel(gateway.target) as channel:
        listing = dream_pb2_grpc.DreamServiceStub(channel).ListModels(dream_pb2.ListModelsRequest(), timeout=30)
    expected = json_format.MessageToDict(
        listing, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert answer.status_code == 200
    assert answer.json() == expected
    model = answer.json()["models"][0]
    assert model["name"] == "efficientnet-lite0" and {"name": "block10", "channels": 112, "stride": 16} in [
        {key: layer[key] for key in ("name", "channels", "stride")} for layer in model["layers"]
    ]


def test_a_dream_streams_to_curl_started_progress_every_octave_in_order_then_done(
    gateway: GatewayProcess, tmp_path: Path
) -> None:
    require_programs({"curl": "curl"})
    photo = tmp_path / "coffee.png"
    photo.write_bytes(shared_image("coffee.png").read_bytes())
    options = {**SMALL, "octaves": "3", "seed": "7"}
    fields = [arg for name, value in options.items() for arg in ("-F", f"{name}={value}")]
    command = ["curl", "-sSN", "--fail-with-body", "-H", "x-request-id: curl-dream-1", "-F", f"image=@{photo}",
               *fields, f"{gateway.url}/api/dreams"]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr + result.stdout
    events = list(server_events(result.stdout.splitlines()))
    names = [event.name for event in events]
    assert names[0] == "started" and names[-1] == "done"
    started = events[0].data
    assert started["request_id"] == "curl-dream-1" and started["seed"] == "7" and len(started["octave_sizes"]) == 3
    frames = [event.data for event in events if event.name == "frame"]
    assert [frame["octave"] for frame in frames] == [1, 2, 3]
    assert [frame["final"] for frame in frames] == [False, False, True]
    for frame, size in zip(frames, started["octave_sizes"], strict=True):
        decoded = Image.open(io.BytesIO(base64.b64decode(frame["image"])))
        assert (decoded.format, decoded.size) == ("PNG", (size["width"], size["height"]))
    progress = [event.data for event in events if event.name == "progress"]
    assert len(progress) == 3 * 2 and [step["done"] for step in progress] == sorted(step["done"] for step in progress)
    # Each octave's frame comes right after its last step: the picture is seen as it is made.
    assert names.index("frame") < names.index("progress", names.index("frame"))


def test_a_raw_picture_body_with_the_options_in_the_query_dreams_too(gateway: GatewayProcess) -> None:
    answer = httpx.post(
        f"{gateway.url}/api/dreams",
        params={**SMALL, "octaves": "1", "layers": json.dumps({"block3": 1.0}), "format": "IMAGE_FORMAT_JPEG"},
        content=picture("PNG"),
        headers={"content-type": "image/png"},
        timeout=120,
    )
    events = list(server_events(answer.text.splitlines()))
    assert answer.status_code == 200 and answer.headers["x-accel-buffering"] == "no"
    assert [event.name for event in events if event.name != "progress"] == ["started", "frame", "done"]
    assert events[0].data["layers"] == {"block3": 1.0}
    assert Image.open(io.BytesIO(base64.b64decode(events[-2].data["image"]))).format == "JPEG"


def test_a_misspelt_field_is_refused_with_the_list_of_fields(gateway: GatewayProcess, coffee_png: bytes) -> None:
    answer, _ = dream(gateway.url, coffee_png, {"octave": "3"}, headers={"x-request-id": "misspelt-1"})
    body = answer.json()
    assert answer.status_code == 400
    assert body["reason"] == "UNKNOWN_FIELD" and body["field"] == "octave" and body["request_id"] == "misspelt-1"
    assert "did you mean 'octaves'?" in body["message"]
    assert "steps_per_octave" in body["message"] and "tile_overlap" in body["message"]


@pytest.mark.parametrize(
    ("fields", "image", "status", "reason", "field"),
    [
        ({"layers": '{"block99": 1}'}, None, 400, "UNKNOWN_LAYER", "layers"),
        ({"model": "no-such-model"}, None, 404, "UNKNOWN_MODEL", "model"),
        ({"octaves": "many"}, None, 400, "INVALID_REQUEST", "octaves"),
        ({"layers": "block3"}, None, 400, "INVALID_REQUEST", "layers"),
        ({}, picture("BMP"), 400, "FORMAT_NOT_ALLOWED", "image"),
        ({}, picture("PNG", (1200, 1000)), 400, "IMAGE_TOO_LARGE", "image"),
    ],
)
def test_refusals_carry_the_grpc_reason_and_field_with_the_status_mapped_from_the_grpc_one(
    gateway: GatewayProcess, coffee_png: bytes, fields: dict, image: bytes | None, status: int, reason: str, field: str
) -> None:
    answer, _ = dream(gateway.url, image or coffee_png, {**SMALL, **fields})
    body = answer.json()
    assert (answer.status_code, body["reason"], body.get("field")) == (status, reason, field), body
    assert body["message"] and answer.headers["x-request-id"] == body["request_id"]


def raw_upload(url: str, head: str, chunks: Iterator[bytes]) -> tuple[str, int]:
    """Send `head` and then `chunks` until the server answers; its answer and the body bytes sent by then.

    A plain socket, because an HTTP client library sends the whole body before it reads the
    answer, which would hide when the server answered.
    """
    host, port = url.removeprefix("http://").split(":")
    sent = 0
    with socket.create_connection((host, int(port)), timeout=30) as connection:
        connection.sendall(head.encode())
        for chunk in chunks:
            if select.select([connection], [], [], 0)[0]:
                break
            connection.sendall(chunk)
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < _content_length(answer):
            received = connection.recv(65536)
            if not received:
                break
            answer += received
    return answer.decode(errors="replace"), sent


def _content_length(answer: bytes) -> int:
    found = re.search(rb"(?im)^content-length: *(\d+)", answer)
    return int(found.group(1)) if found else 0


def test_an_upload_declared_above_the_message_limit_is_refused_before_its_body(gateway: GatewayProcess) -> None:
    head = (
        "POST /api/dreams HTTP/1.1\r\nHost: dreamstream\r\nContent-Type: image/png\r\n"
        f"Content-Length: {MAX_MESSAGE_BYTES + 1}\r\n\r\n"
    )
    answer, sent = raw_upload(gateway.url, head, iter(()))
    assert answer.startswith("HTTP/1.1 413") and "UPLOAD_TOO_LARGE" in answer and f"{MAX_MESSAGE_BYTES:,}" in answer
    assert sent == 0


def test_an_upload_that_stalls_is_dropped_after_the_reader_timeout(gateway: GatewayProcess) -> None:
    head = "POST /api/dreams HTTP/1.1\r\nHost: dreamstream\r\nContent-Type: image/png\r\nContent-Length: 1000\r\n\r\n"
    answer, sent = raw_upload(gateway.url, head, iter([b"\x89PNG\r\n\x1a\n"]))
    assert answer.startswith("HTTP/1.1 408") and "UPLOAD_IDLE" in answer and "sent nothing for 4 s" in answer
    assert sent == 8


@pytest.mark.parametrize("content_type", ["image/png", "multipart/form-data; boundary=xyz"])
def test_a_streamed_upload_is_refused_once_it_passes_the_message_limit(
    gateway: GatewayProcess, content_type: str
) -> None:
    head = f"POST /api/dreams HTTP/1.1\r\nHost: dreamstream\r\nContent-Type: {content_type}\r\n"
    head += "Transfer-Encoding: chunked\r\n\r\n"
    prefix = b"--xyz\r\nContent-Disposition: form-data; name=image; filename=a.png\r\n\r\n"
    megabyte = b"\0" * 2**20

    def chunks() -> Iterator[bytes]:
        yield b"%x\r\n%s\r\n" % (len(prefix), prefix)
        for _ in range(MAX_MESSAGE_BYTES // 2**20 + 32):
            yield b"%x\r\n%s\r\n" % (len(megabyte), megabyte)

    answer, sent = raw_upload(gateway.url, head, chunks())
    assert answer.startswith("HTTP/1.1 413") and "UPLOAD_TOO_LARGE" in answer
    assert MAX_MESSAGE_BYTES <= sent <= MAX_MESSAGE_BYTES + 16 * 2**20  # refused within a few MB past the limit
    assert gateway.process.poll() is None


class StreamReader:
    """A dream streamed in a thread, its events collected as they arrive; `close()` leaves the stream."""

    def __init__(self, url: str, image: bytes, fields: dict[str, str], request_id: str) -> None:
        self.events: list[Event] = []
        self.status: int | None = None
        self._arrived = threading.Condition()
        self._leave = threading.Event()
        self._thread = threading.Thread(target=self._read, args=(url, image, fields, request_id), daemon=True)
        self._thread.start()

    def _read(self, url: str, image: bytes, fields: dict[str, str], request_id: str) -> None:
        headers = {"x-request-id": request_id}
        with httpx.stream("POST", f"{url}/api/dreams", files={"image": ("p.png", image)}, data=fields,
                          headers=headers, timeout=120) as response:  # fmt: skip
            self.status = response.status_code
            if response.status_code != 200:
                response.read()
                self.events.append(Event("refused", response.json()))
            else:
                for event in server_events(response.iter_lines()):
                    with self._arrived:
                        self.events.append(event)
                        self._arrived.notify_all()
                    if self._leave.is_set():
                        break
        with self._arrived:
            self.events.append(Event("closed", {}))
            self._arrived.notify_all()

    def wait_for(self, name: str, timeout: float = 60) -> Event:
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for event in self.events:
                    if event.name == name:
                        return event
                assert self._arrived.wait(max(0.0, deadline - time.monotonic())), (name, self.events[-3:])

    def close(self) -> None:
        self._leave.set()
        self._thread.join(30)


def test_a_full_server_queues_then_refuses_and_cancel_and_leaving_stop_the_ascent(
    gateway: GatewayProcess, coffee_png: bytes
) -> None:
    running = StreamReader(gateway.url, coffee_png, LONG, "http-running")
    running.wait_for("progress")
    waiting = StreamReader(gateway.url, coffee_png, LONG, "http-waiting")
    assert waiting.wait_for("queued").data == {"place": 1, "waiting": 1}

    full, _ = dream(gateway.url, coffee_png, SMALL)
    assert full.status_code == 429 and full.json()["reason"] == "QUEUE_FULL"
    assert int(full.headers["retry-after"]) >= 0 and "retry_after_seconds" in full.json()

    assert httpx.delete(f"{gateway.url}/api/dreams/http-running", timeout=10).status_code == 204
    error = running.wait_for("error").data
    assert (error["code"], error["reason"], error["request_id"]) == ("CANCELLED", "CANCELLED", "http-running")
    gateway.wait_for(r"dream http-running CANCELLED")
    waiting.wait_for("progress")  # the next in line got the slot
    waiting.close()  # leaving the stream cancels the dream
    gateway.wait_for(r"dream http-waiting CANCELLED")
    before = metric_sum(gateway.metrics_url, "dreamstream_steps_total")
    time.sleep(1.0)
    assert metric_sum(gateway.metrics_url, "dreamstream_steps_total") == before  # the ascent stopped on the server
    assert metric_sum(gateway.metrics_url, "dreamstream_inflight_dreams") == 0
    assert metric_sum(gateway.metrics_url, "dreamstream_queued_dreams") == 0
    ended = httpx.delete(f"{gateway.url}/api/dreams/http-running", timeout=10)
    assert ended.status_code == 404 and ended.json()["reason"] == "UNKNOWN_DREAM"


def test_a_client_that_stops_reading_the_stream_is_dropped_and_its_slot_freed(
    gateway: GatewayProcess, coffee_png: bytes
) -> None:
    # Noise does not compress: its frames (20 rounds of one small octave) are megabytes in all,
    # far more than the socket buffers of a client that asked for a 4 KB window and reads nothing.
    noise = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (360, 360, 3), dtype=np.uint8)).save(noise, "PNG")
    query = "octaves=1&steps_per_octave=1&repeat=20"
    head = (
        f"POST /api/dreams?{query} HTTP/1.1\r\nHost: dreamstream\r\nx-request-id: stalled-reader\r\n"
        f"Content-Type: image/png\r\nContent-Length: {len(noise.getvalue())}\r\n\r\n"
    )
    host, port = gateway.url.removeprefix("http://").split(":")
    with socket.socket() as reader:
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.connect((host, int(port)))
        reader.sendall(head.encode() + noise.getvalue())
        assert reader.recv(64).startswith(b"HTTP/1.1 200")  # the stream started; nothing more is read
        gateway.wait_for(r"dream stalled-reader RESOURCE_EXHAUSTED", timeout=60)
    assert gateway.count(r"dream stalled-reader RESOURCE_EXHAUSTED: .*, 2[01] steps") == 0  # stopped early
    answer, events = dream(gateway.url, coffee_png, SMALL)  # the slot is free again
    assert answer.status_code == 200 and events[-1].name == "done"


def test_http_dreams_are_counted_by_the_data_plane_metrics_and_access_log(
    gateway: GatewayProcess, coffee_png: bytes
) -> None:
    def counted() -> float:
        return sum(
            value
            for (name, labels), value in scrape(gateway.metrics_url).items()
            if name == "dreamstream_dreams_total" and dict(labels)["code"] == "OK" and dict(labels)["kind"] == "dream"
        )  # fmt: skip

    before = counted()
    answer, events = dream(gateway.url, coffee_png, SMALL, headers={"x-request-id": "counted-1"})
    assert answer.status_code == 200 and events[-1].name == "done"
    assert counted() == before + 1
    gateway.wait_for(r"dream counted-1 OK")


def test_the_page_and_its_files_are_served(gateway: GatewayProcess) -> None:
    page = httpx.get(f"{gateway.url}/", timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for asset in ("app.js", "style.css"):
        assert httpx.get(f"{gateway.url}/{asset}", timeout=10).status_code == 200, asset
    # Nothing from elsewhere: no CDN, no font service; the page works on a machine without internet.
    for text in (page.text, httpx.get(f"{gateway.url}/app.js", timeout=10).text):
        assert "http://" not in text and "https://" not in text


@pytest.fixture(scope="module")
def secure_gateway(lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Path]]:
    folder = tmp_path_factory.mktemp("http-tls")
    certificates = make_certificates(folder)
    tokens = folder / "tokens"
    tokens.write_text("old-token\nnew-token\n")
    flags = ("--tls-cert", str(certificates.server_cert), "--tls-key", str(certificates.server_key))
    server = GatewayProcess(lite0_dir.parent, *flags, "--auth-token-file", str(tokens), scheme="https")
    yield server, certificates.ca
    assert server.stop() == 0


@pytest.mark.parametrize(
    ("authorization", "status", "reason"),
    [
        (None, 401, "MISSING_TOKEN"),
        ("Bearer wrong-token", 401, "WRONG_TOKEN"),
        ("Basic bmV3LXRva2Vu", 401, "MISSING_TOKEN"),
        ("Bearer new-token", 200, None),
        ("Bearer old-token", 200, None),
    ],
)
def test_tls_and_bearer_tokens_guard_the_api_as_they_guard_grpc(
    secure_gateway: tuple[GatewayProcess, Path], authorization: str | None, status: int, reason: str | None
) -> None:
    server, ca = secure_gateway
    headers = {"authorization": authorization} if authorization else {}
    trusted = ssl.create_default_context(cafile=ca)
    with httpx.Client(verify=trusted, timeout=30) as client:
        models = client.get(f"{server.url}/api/models", headers=headers)
        refused, _ = dream(server.url, picture("PNG"), SMALL, headers=headers, verify=trusted)
        assert client.get(f"{server.url}/").status_code == 200  # the page itself holds no secret
    assert models.status_code == status
    if reason is not None:
        assert models.json()["reason"] == reason and models.headers["www-authenticate"] == "Bearer"
        assert refused.status_code == 401 and refused.json()["reason"] == reason


def test_rewritten_tls_files_are_served_from_the_next_connection_on(
    lite0_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    first = make_certificates(tmp_path_factory.mktemp("http-tls-first"))
    second = make_certificates(tmp_path_factory.mktemp("http-tls-second"))
    flags = ("--tls-cert", str(first.server_cert), "--tls-key", str(first.server_key))
    server = GatewayProcess(lite0_dir.parent, *flags, scheme="https")
    try:
        assert httpx.get(f"{server.url}/", verify=ssl.create_default_context(cafile=first.ca)).status_code == 200
        first.server_key.write_bytes(b"")  # half-written: the certificate in force stays
        server.wait_for("HTTPS: TLS files not reloaded")
        first.server_cert.write_bytes(second.server_cert.read_bytes())
        first.server_key.write_bytes(second.server_key.read_bytes())
        server.wait_for("HTTPS: TLS files reloaded")
        trusted = ssl.create_default_context(cafile=second.ca)
        assert httpx.get(f"{server.url}/api/models", verify=trusted, timeout=30).status_code == 200
        with pytest.raises(httpx.ConnectError):  # the old CA no longer vouches for the server
            httpx.get(f"{server.url}/", verify=ssl.create_default_context(cafile=first.ca), timeout=30)
    finally:
        assert server.stop() == 0


def test_a_plain_http_client_gets_no_answer_from_the_tls_port(secure_gateway: tuple[GatewayProcess, Path]) -> None:
    server, _ = secure_gateway
    with pytest.raises(httpx.HTTPError):
        httpx.get(server.url.replace("https://", "http://") + "/api/models", timeout=10)


def test_the_http_port_may_come_from_the_environment_as_every_serve_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    from dreamstream.cli import build_parser

    monkeypatch.setenv("DREAMSTREAM_HTTP_PORT", "8181")
    assert build_parser("serve").parse_args(["serve"]).http_port == 8181
    assert build_parser("serve").parse_args(["serve", "--http-port", "9191"]).http_port == 9191  # the flag wins
    monkeypatch.delenv("DREAMSTREAM_HTTP_PORT")
    assert build_parser("serve").parse_args(["serve"]).http_port is None  # no gateway unless asked


def test_a_taken_http_port_is_one_line_and_exit_status_2(lite0_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [*CLI, "serve", "--models", str(lite0_dir.parent), "--port", "0", "--http-port", str(port)],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("dreamstream: error: cannot serve HTTP on 127.0.0.1:")
    assert "Traceback" not in result.stderr


def test_on_sigterm_new_http_dreams_are_refused_while_the_running_one_finishes(
    lite0_dir: Path, coffee_png: bytes
) -> None:
    server = GatewayProcess(lite0_dir.parent, "--shutdown-grace", "60")
    try:
        running = StreamReader(server.url, coffee_png, {**SMALL, "steps_per_octave": "30"}, "draining-1")
        running.wait_for("progress")
        server.terminate()
        server.wait_for("draining")
        refused, _ = dream(server.url, coffee_png, SMALL)
        assert refused.status_code == 503 and refused.json()["reason"] == "DRAINING"
        assert refused.headers["retry-after"] == "0"
        running.wait_for("done")
        assert server.exit_status() == 0
    finally:
        server.stop()
