"""DreamClient and AsyncDreamClient: the same calls, blocking or asyncio.

Both build requests with `build_request` and turn responses into the events of
`dreamstream.client.events`; failed calls raise the exceptions of
`dreamstream.client.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import TypedDict, Unpack

import grpc
import numpy as np
from google.protobuf.message import Message
from PIL import Image

from dreamstream.client.animation import AnimationCalls, AsyncAnimationCalls
from dreamstream.client.balancing import CLIENT_CHANNEL_OPTIONS
from dreamstream.client.connection import Connection
from dreamstream.client.errors import from_rpc_error
from dreamstream.client.events import (
    ClassProbability,
    DreamEvent,
    ModelInfo,
    ModelListing,
    classes_from_response,
    event_from_response,
    listing_from_response,
)
from dreamstream.client.retries import Attempts, RetryListener, RetryPolicy, stream_attempts, stream_attempts_async
from dreamstream.v1 import dream_pb2, dream_pb2_grpc
from dreamstream.wire import DEFAULT_TARGET, REQUEST_ID_METADATA, format_named

ImageInput = str | os.PathLike[str] | bytes | Image.Image | np.ndarray
"""A picture to dream on: a file path, encoded bytes, a Pillow image, or an HxW[x3|x4] array
(uint8, or float in [0, 1])."""


class DreamOptions(TypedDict, total=False):
    """How to dream; anything left out takes the server's default.

    The names are DreamRequest's fields in dream.proto, which documents each one.
    """

    model: str
    layers: Mapping[str, float]  # layer name -> weight
    octaves: int
    octave_scale: float
    steps_per_octave: int
    step_size: float
    jitter: int  # 0 turns jitter off
    seed: int
    max_size: int  # longer side of the picture before dreaming
    width: int  # with height, and no image: dream on seeded noise
    height: int
    format: str  # of the frames: "png" (default), "jpeg" or "webp"
    guide: ImageInput  # a guide picture: dream towards what the network sees in it
    channels: Mapping[str, Sequence[int]]  # layer name -> the channels of it to dream on
    channel_mode: str  # "strongest", "weakest" or "average": choose channel_count channels per layer
    channel_count: int
    rank_channels_per_octave: bool
    original_colors: bool  # keep the picture's colours, take the dream's luminance
    lap_levels: int  # Laplacian pyramid gradient normalisation, 0 for none
    tv_weight: float  # total variation regularisation, 0 for none
    octaves_above: int  # octaves past the picture's size
    return_largest: bool  # with octaves_above: the result at the largest octave's size
    repeat: int  # dream the result again this many times
    tile_size: int  # compute the gradient in tiles of this many pixels (0: the server decides)
    tile_overlap: int  # pixels of context each tile reads past what it keeps


CHANNEL_MODES = {
    "strongest": dream_pb2.CHANNEL_MODE_STRONGEST,
    "weakest": dream_pb2.CHANNEL_MODE_WEAKEST,
    "average": dream_pb2.CHANNEL_MODE_AVERAGE,
}

DREAM_OPTIONS = tuple(DreamOptions.__annotations__)


class ConnectionOptions(TypedDict, total=False):
    """How to reach the server: the fields of `Connection`."""

    tls: bool
    ca_file: str | os.PathLike[str]
    cert_file: str | os.PathLike[str]
    key_file: str | os.PathLike[str]
    token: str
    token_file: str | os.PathLike[str]


def image_bytes(image: ImageInput) -> bytes:
    """Encoded bytes for any ImageInput; files and bytes are sent as they are."""
    if isinstance(image, bytes):
        return image
    if isinstance(image, str | os.PathLike):
        with open(image, "rb") as file:
            return file.read()
    if isinstance(image, np.ndarray):
        array = image
        if array.dtype != np.uint8:
            array = (np.clip(array, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
        image = Image.fromarray(array)
    if isinstance(image, Image.Image):
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        return buffer.getvalue()
    raise TypeError(f"cannot send a {type(image).__name__} as a picture: use a path, bytes, PIL or numpy")


def build_request(image: ImageInput | None, options: DreamOptions) -> dream_pb2.DreamRequest:
    """The DreamRequest for `image` (None to dream on noise) and `options`."""
    unknown = set(options) - set(DREAM_OPTIONS)
    if unknown:
        raise TypeError(
            f"unknown dream option(s): {', '.join(sorted(unknown))}; the options are {', '.join(DREAM_OPTIONS)}"
        )
    fmt = format_named(options.get("format", "png"))
    mode = options.get("channel_mode")
    if mode is not None and mode not in CHANNEL_MODES:
        raise ValueError(f"unknown channel_mode {mode!r}: use {', '.join(CHANNEL_MODES)}")
    request = dream_pb2.DreamRequest(
        image=b"" if image is None else image_bytes(image),
        model=options.get("model", ""),
        layers=dict(options.get("layers", {})),
        octaves=options.get("octaves", 0),
        octave_scale=options.get("octave_scale", 0.0),
        steps_per_octave=options.get("steps_per_octave", 0),
        step_size=options.get("step_size", 0.0),
        seed=options.get("seed", 0),
        max_size=options.get("max_size", 0),
        width=options.get("width", 0),
        height=options.get("height", 0),
        format=fmt.enum,
        guide=image_bytes(options["guide"]) if options.get("guide") is not None else b"",
        channels={
            layer: dream_pb2.ChannelList(channels=list(channels))
            for layer, channels in options.get("channels", {}).items()
        },
        channel_mode=CHANNEL_MODES[mode] if mode is not None else dream_pb2.CHANNEL_MODE_UNSPECIFIED,
        channel_count=options.get("channel_count", 0),
        rank_channels_per_octave=options.get("rank_channels_per_octave", False),
        original_colors=options.get("original_colors", False),
        lap_levels=options.get("lap_levels", 0),
        tv_weight=options.get("tv_weight", 0.0),
        octaves_above=options.get("octaves_above", 0),
        return_largest=options.get("return_largest", False),
        repeat=options.get("repeat", 0),
        tile_size=options.get("tile_size", 0),
    )
    # Optional in the proto: an explicit 0 turns them off.
    for optional in ("jitter", "tile_overlap"):
        if optional in options:
            setattr(request, optional, options[optional])
    return request


def build_classify_request(image: ImageInput, model: str = "", top: int = 0) -> dream_pb2.ClassifyRequest:
    """The ClassifyRequest for `image`; `model` "" and `top` 0 take the server's defaults."""
    return dream_pb2.ClassifyRequest(image=image_bytes(image), model=model, top=top)


def _metadata(request_id: str | None) -> tuple[tuple[str, str], ...]:
    """The call's metadata: the caller's request id, which the server then uses in its logs."""
    return ((REQUEST_ID_METADATA, request_id),) if request_id else ()


class DreamClient(AnimationCalls):
    """A blocking client of a dreamstream server at `target` ("host:port"); `dream_video` and
    `zoom` come from AnimationCalls.

    A call the server refuses for now (queue full, still loading) is tried again up to
    `retries` times, after the delay the server asks for (RetryInfo); `on_retry(error,
    seconds)` hears of each retry. TLS and the token are set by keyword (see `Connection`):
    `ca_file=` (or `tls=True` for the system's CAs), `cert_file=` and `key_file=` for mutual
    TLS, `token=` or `token_file=` (default: $DREAMSTREAM_TOKEN). Use it as a context
    manager, or call `close()`.
    """

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        retries: int = 0,
        on_retry: RetryListener | None = None,
        **connection: Unpack[ConnectionOptions],
    ) -> None:
        self.target = target
        self._retry = RetryPolicy(retries, on_retry)
        settings = Connection(**connection)
        self._auth = settings.metadata()
        if settings.uses_tls:
            self._channel = grpc.secure_channel(target, settings.credentials(), options=CLIENT_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS)
        self._stub = dream_pb2_grpc.DreamServiceStub(self._channel)

    def dream(
        self,
        image: ImageInput | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[DreamOptions],
    ) -> Iterator[DreamEvent]:
        """Dream on `image` and yield the Started event, then Progress and Frame events as the
        server sends them.

        The request is built at once (a missing file raises here); the call starts on
        the first `next()`. Stopping the iteration early cancels the dream on the server.
        `request_id` (sent as `x-request-id`) names the dream in the server's logs; the
        server makes one up otherwise. `timeout` applies to each try: a server refusing for now
        (UNAVAILABLE) is tried again on the next one within it, the `retries` get a new one.
        Raises a DreamstreamError subclass when the server refuses or fails.
        """
        return self._events(build_request(image, options), timeout, self._auth + _metadata(request_id))

    def _events(
        self, request: dream_pb2.DreamRequest, timeout: float | None, metadata: tuple[tuple[str, str], ...]
    ) -> Iterator[DreamEvent]:
        def open_call(timeout: float | None) -> grpc.Call:
            return self._stub.Dream(request, timeout=timeout, metadata=metadata)

        with contextlib.closing(stream_attempts(open_call, Attempts(self._retry, timeout), self.target)) as responses:
            for response in responses:
                if (event := event_from_response(response)) is not None:
                    yield event

    def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server can dream with."""
        return self.model_listing(timeout=timeout).models

    def model_listing(self, *, timeout: float | None = None) -> ModelListing:
        """The models the server can dream with, and the model folders it refused to load."""
        return listing_from_response(self._unary(self._stub.ListModels, dream_pb2.ListModelsRequest(), timeout))

    def classify(
        self, image: ImageInput, *, model: str = "", top: int = 0, timeout: float | None = None
    ) -> list[ClassProbability]:
        """What `model`'s network sees in `image`: its `top` (default 5) most probable ImageNet
        classes, most probable first. The model must have a classifier (ModelInfo.can_classify)."""
        request = build_classify_request(image, model, top)
        return classes_from_response(self._unary(self._stub.Classify, request, timeout))

    def _unary(self, method: Callable, request: Message, timeout: float | None) -> Message:
        """One unary call, tried again as the retry policy says."""
        attempts = Attempts(self._retry, timeout)
        while True:
            try:
                return method(request, timeout=attempts.time_left(), metadata=self._auth)
            except grpc.RpcError as rpc_error:
                delay = attempts.delay_or_raise(from_rpc_error(rpc_error, self.target), started=False)
            time.sleep(delay)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> DreamClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncDreamClient(AsyncAnimationCalls):
    """The asyncio twin of DreamClient: `dream()`, `dream_video()` and `zoom()` are async iterators,
    `models()` a coroutine."""

    def __init__(
        self,
        target: str = DEFAULT_TARGET,
        *,
        retries: int = 0,
        on_retry: RetryListener | None = None,
        **connection: Unpack[ConnectionOptions],
    ) -> None:
        self.target = target
        self._retry = RetryPolicy(retries, on_retry)
        settings = Connection(**connection)
        self._auth = settings.metadata()
        if settings.uses_tls:
            self._channel = grpc.aio.secure_channel(target, settings.credentials(), options=CLIENT_CHANNEL_OPTIONS)
        else:
            self._channel = grpc.aio.insecure_channel(target, options=CLIENT_CHANNEL_OPTIONS)
        self._stub = dream_pb2_grpc.DreamServiceStub(self._channel)

    def dream(
        self,
        image: ImageInput | None = None,
        *,
        timeout: float | None = None,
        request_id: str | None = None,
        **options: Unpack[DreamOptions],
    ) -> AsyncIterator[DreamEvent]:
        """Dream on `image`; `async for` the Started, Progress and Frame events. See DreamClient.dream."""
        return self._events(build_request(image, options), timeout, self._auth + _metadata(request_id))

    async def _events(
        self, request: dream_pb2.DreamRequest, timeout: float | None, metadata: tuple[tuple[str, str], ...]
    ) -> AsyncIterator[DreamEvent]:
        def open_call(timeout: float | None) -> grpc.aio.Call:
            return self._stub.Dream(request, timeout=timeout, metadata=metadata)

        responses = stream_attempts_async(open_call, Attempts(self._retry, timeout), self.target)
        try:
            async for response in responses:
                if (event := event_from_response(response)) is not None:
                    yield event
        finally:
            await responses.aclose()

    async def models(self, *, timeout: float | None = None) -> list[ModelInfo]:
        """The models the server can dream with."""
        return (await self.model_listing(timeout=timeout)).models

    async def model_listing(self, *, timeout: float | None = None) -> ModelListing:
        """The models the server can dream with, and the model folders it refused to load."""
        request = dream_pb2.ListModelsRequest()
        return listing_from_response(await self._unary(self._stub.ListModels, request, timeout))

    async def classify(
        self, image: ImageInput, *, model: str = "", top: int = 0, timeout: float | None = None
    ) -> list[ClassProbability]:
        """What `model`'s network sees in `image`. See DreamClient.classify."""
        request = build_classify_request(image, model, top)
        return classes_from_response(await self._unary(self._stub.Classify, request, timeout))

    async def _unary(self, method: Callable, request: Message, timeout: float | None) -> Message:
        """One unary call, tried again as the retry policy says."""
        attempts = Attempts(self._retry, timeout)
        while True:
            try:
                return await method(request, timeout=attempts.time_left(), metadata=self._auth)
            except grpc.RpcError as rpc_error:
                delay = attempts.delay_or_raise(from_rpc_error(rpc_error, self.target), started=False)
            await asyncio.sleep(delay)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> AsyncDreamClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
