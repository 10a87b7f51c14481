"""The HTTP gateway: the JSON and Server-Sent Events API and the web page, over the data plane.

It is the gRPC servicer's twin for browsers and curl, and decides as little: a dream's
request is converted (`http_requests`), handed to the same `DataPlane` as every gRPC
call (admission, limits, telemetry, the stream buffer and the slow-reader rule, drain),
and its events are written back as SSE (`event: started`, `progress`, `frame`, ...).

- `GET /api/models`: the models and their layers (ListModelsResponse as JSON).
- `POST /api/dreams`: a dream of the uploaded picture (multipart/form-data with an
  `image` file, and optionally `guide`; or the picture as the raw body), with the fields
  of DreamRequest as form fields or query parameters. A refusal before the first event
  is an HTTP error (the status from the gRPC one, `http_errors`); after it, an `error`
  event. Closing the stream cancels the dream.
- `DELETE /api/dreams/{request_id}`: cancels a running dream of this gateway.
- `/`: the page (`web/`, shipped with the package), which uses only the above.

The upload is bounded before it is read whole (the gRPC message limit; at most
UPLOADS_AT_ONCE are read at once, and one that stalls for the reader timeout is dropped), bearer tokens
are checked as gRPC checks them, and the picture's own limits are the engine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from dreamstream.server.dataplane import Call, CallerLeft, CallKind, DataPlane, Queued
from dreamstream.server.http_errors import UploadStalled, UploadTooLarge, error_body, error_response
from dreamstream.server.http_requests import PICTURE_FIELDS, as_json, dream_request
from dreamstream.server.messages import dream_response, models_message, spec_from_request
from dreamstream.server.refusals import InvalidRequest, Refusal, RefusalKind, Unauthenticated, shown
from dreamstream.server.request_ids import request_id_of
from dreamstream.wire import MAX_MESSAGE_BYTES, REQUEST_ID_METADATA

log = logging.getLogger(__name__)

WEB_PAGE = Path(__file__).parent / "web"
# Checks one offered bearer token (the bytes after "Bearer ").
TokenCheck = Callable[[bytes], bool]
_BEARER = "bearer "
# Uploads read at the same time (each up to the message limit); more wait for their turn.
UPLOADS_AT_ONCE = 8
# Form fields a dream may have: every option once, and the two pictures.
_MAX_FORM_FIELDS = 64
_UNAUTHENTICATED = "send a valid token as an `Authorization: Bearer <token>` header (the server's --auth-token-file)"


def gateway_app(plane: DataPlane, *, token_check: TokenCheck | None = None, max_body: int = MAX_MESSAGE_BYTES):
    """The ASGI application of the gateway over `plane`; `token_check` None lets every call in."""
    gateway = Gateway(plane, token_check, max_body)
    routes = [
        Route("/api/models", gateway.models, methods=["GET"]),
        Route("/api/dreams", gateway.dream, methods=["POST"]),
        Route("/api/dreams/{request_id:path}", gateway.cancel, methods=["DELETE"]),
        Mount("/", StaticFiles(directory=WEB_PAGE, html=True)),
    ]
    return Starlette(routes=routes)


class Gateway:
    """The endpoints; `running` holds this gateway's dreams by request id, for the cancel endpoint."""

    def __init__(self, plane: DataPlane, token_check: TokenCheck | None, max_body: int) -> None:
        self._plane = plane
        self._token_check = token_check
        self._max_body = max_body
        self._uploads = asyncio.Semaphore(UPLOADS_AT_ONCE)
        self.running: dict[str, set[Call]] = {}

    async def models(self, request: Request) -> Response:
        request_id = request_id_of(request.headers.items())
        try:
            self._authenticate(request)
            listing = models_message(self._plane.models(), self._plane.engine.untiled_limit)
        except Refusal as refusal:
            return error_response(refusal, request_id)
        return JSONResponse(as_json(listing), headers={REQUEST_ID_METADATA: request_id})

    async def cancel(self, request: Request) -> Response:
        request_id = request_id_of(request.headers.items())
        try:
            self._authenticate(request)
        except Refusal as refusal:
            return error_response(refusal, request_id)
        wanted = request.path_params["request_id"]
        calls = self.running.get(wanted)
        if not calls:
            return error_response(UnknownDream(wanted), request_id)
        for call in list(calls):
            call.cancel()
        log.info("dream %s cancelled over HTTP", wanted)
        return Response(status_code=204)

    async def dream(self, request: Request) -> Response:
        request_id = request_id_of(request.headers.items())
        try:
            self._authenticate(request)
            async with self._uploads:  # bounds the memory of the uploads read at once
                options, pictures = await self._read_dream(request)
        except Refusal as refusal:
            return error_response(refusal, request_id)
        except ClientDisconnect:
            return Response(status_code=499)
        return DreamEvents(self._plane, self.running, request_id, options, pictures)

    def _authenticate(self, request: Request) -> None:
        if self._token_check is None:
            return
        header = request.headers.get("authorization", "")
        if not header.lower().startswith(_BEARER):
            raise Unauthenticated(_UNAUTHENTICATED)
        if not self._token_check(header[len(_BEARER) :].strip().encode()):
            raise Unauthenticated(_UNAUTHENTICATED, reason="WRONG_TOKEN")

    async def _read_dream(self, request: Request) -> tuple[dict[str, str], dict[str, bytes]]:
        """The dream's text options and pictures, the body read no further than the limit."""
        options = _single_values(request.query_params.multi_items(), "query parameter")
        body = _bounded(request, self._max_body, self._plane.reader_timeout)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form_options, pictures = await _read_form(request, body)
            twice = sorted(set(options) & set(form_options))
            if twice:
                raise InvalidRequest(f"{', '.join(twice)} given both in the query and in the form: give each once")
            options.update(form_options)
            return options, pictures
        image = b"".join([chunk async for chunk in body])
        return options, {"image": image} if image else {}


class UnknownDream(Refusal):
    """The cancel endpoint named no dream running on this gateway."""

    kind = RefusalKind.NOT_FOUND
    reason = "UNKNOWN_DREAM"

    def __init__(self, request_id: str) -> None:
        super().__init__(f"no dream {shown(request_id)} is running here (it ended, or never started on this server)")


def _single_values(items: list[tuple[str, str]], what: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for name, value in items:
        if name in values:
            raise InvalidRequest(f"{what} {name[:64]!r} given twice: give each option once", field=name[:64])
        values[name] = value
    return values


async def _bounded(request: Request, limit: int, idle_timeout: float) -> AsyncIterator[bytes]:
    """The body's chunks, refused (UploadTooLarge) as soon as it is known to pass `limit` bytes, and
    (UploadStalled) when the client sends nothing for `idle_timeout` seconds."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise UploadTooLarge(_too_large(int(declared), limit))
    total = 0
    chunks = aiter(request.stream())
    while True:
        try:
            chunk = await asyncio.wait_for(anext(chunks), idle_timeout)
        except StopAsyncIteration:
            return
        except TimeoutError:
            raise UploadStalled(
                f"the client sent nothing for {idle_timeout:g} s of its upload ({total:,} bytes came): send it again"
            ) from None
        total += len(chunk)
        if total > limit:
            raise UploadTooLarge(_too_large(total, limit, at_least=True))
        yield chunk


def _too_large(size: int, limit: int, at_least: bool = False) -> str:
    return (
        f"the upload is {'more than ' if at_least else ''}{size:,} bytes, above the server's limit of {limit:,}: "
        "send a smaller picture (its pixels are what count: JPEG or WebP are smaller)"
    )


async def _read_form(request: Request, body: AsyncIterator[bytes]) -> tuple[dict[str, str], dict[str, bytes]]:
    parser = MultiPartParser(request.headers, body, max_files=len(PICTURE_FIELDS), max_fields=_MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as error:
        raise InvalidRequest(f"the form cannot be read: {error.message}") from None
    options: list[tuple[str, str]] = []
    pictures: dict[str, bytes] = {}
    try:
        for name, value in form.multi_items():
            if name in PICTURE_FIELDS:
                if name in pictures:
                    raise InvalidRequest(f"{name} given twice: upload one picture as {name}", field=name)
                pictures[name] = await value.read() if isinstance(value, UploadFile) else value.encode()
            elif isinstance(value, UploadFile):
                raise InvalidRequest(
                    f"{name[:64]!r} is a file: upload only {' and '.join(PICTURE_FIELDS)} as files, "
                    "and give the options as text fields",
                    field=name[:64],
                )
            else:
                options.append((name, value))
    finally:
        await form.close()
    return _single_values(options, "form field"), pictures


def sse(event: str, data: dict[str, Any]) -> bytes:
    """One Server-Sent Event: its name and its JSON, on one data line (JSON holds no newline)."""
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class DreamEvents(Response):
    """One dream through the data plane, answered as Server-Sent Events.

    The response starts with the dream's first event, so that a refusal before it (a bad
    field, an unknown layer, a full queue) is an HTTP error with its status; a refusal
    after it ends the stream with an `error` event. The client's leaving cancels the dream.
    """

    media_type = "text/event-stream"

    def __init__(
        self,
        plane: DataPlane,
        running: dict[str, set[Call]],
        request_id: str,
        options: dict[str, str],
        pictures: dict[str, bytes],
    ) -> None:
        super().__init__(media_type=self.media_type)
        self._plane = plane
        self._running = running
        self._request_id = request_id
        self._options = options
        self._pictures = pictures

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        call = self._plane.call(CallKind.DREAM, self._request_id)
        self._running.setdefault(self._request_id, set()).add(call)
        started = False

        async def write(chunk: bytes) -> None:
            nonlocal started
            try:
                if not started:
                    await send({"type": "http.response.start", "status": 200, "headers": self._stream_headers()})
                    started = True
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            except OSError as error:  # the server's ClientDisconnected: the connection is gone
                raise CallerLeft(f"the caller left: {error}") from error

        async def deliver(event: object) -> None:
            await write(event_bytes(event))

        watcher = asyncio.create_task(_cancel_on_disconnect(receive, call))
        try:
            async with call:
                spec = spec_from_request(dream_request(self._options, self._pictures))
                self._pictures = {}  # the picture's bytes are the plan's now
                await call.dream(spec, deliver)
            last = sse("done", {"request_id": self._request_id})
        except CallerLeft:
            return  # nobody to tell
        except Exception as error:
            if not started:
                await error_response(error, self._request_id)(scope, receive, send)
                return
            last = sse("error", error_body(error, self._request_id))
        finally:
            watcher.cancel()
            calls = self._running.get(self._request_id, set())
            calls.discard(call)
            if not calls:
                self._running.pop(self._request_id, None)
        # The last event and the end of the stream wait no longer for the reader than events do:
        # a client that stopped reading (READER_IDLE) must not hold the connection for ever.
        with contextlib.suppress(CallerLeft, OSError, TimeoutError):
            await asyncio.wait_for(write(last), self._plane.reader_timeout)
            end = {"type": "http.response.body", "body": b"", "more_body": False}
            await asyncio.wait_for(send(end), self._plane.reader_timeout)

    def _stream_headers(self) -> list[tuple[bytes, bytes]]:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "cache-control": "no-cache",
            "x-accel-buffering": "no",  # nginx (and its Ingress) pass each event on at once
            REQUEST_ID_METADATA: self._request_id,
        }
        return [(name.encode(), value.encode()) for name, value in headers.items()]


def event_bytes(event: object) -> bytes:
    """One data plane event as SSE: `queued`, or the gRPC message's oneof name (`started`, `progress`,
    `frame`) with that message as JSON."""
    if isinstance(event, Queued):
        return sse("queued", {"place": event.place, "waiting": event.waiting})
    response = dream_response(event)
    name = response.WhichOneof("event")
    return sse(name, as_json(getattr(response, name)))


async def _cancel_on_disconnect(receive: Receive, call: Call) -> None:
    """Cancel `call` when the client closes the connection (the body was read already)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            call.cancel()
            return
