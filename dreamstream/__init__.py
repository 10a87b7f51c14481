"""dreamstream: DeepDream as a gRPC microservice.

The names here are the client library, the part other Python programs use:

    from dreamstream import DreamClient, Frame

    with DreamClient("localhost:50051") as client:
        for event in client.dream("photo.jpg", steps_per_octave=5):
            if isinstance(event, Frame) and event.final:
                event.save("dream.png")

They are loaded on first use, so that the server (`dreamstream.server`, extra
`server`) and the export tool (`dreamstream.export`, extra `export`), which
share this package, do not load the client when they start.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.2.0"

if TYPE_CHECKING:
    from dreamstream.client import (
        AsyncDreamClient,
        Cancelled,
        DeadlineExceeded,
        DreamClient,
        DreamEvent,
        DreamOptions,
        DreamstreamError,
        Frame,
        ImageInput,
        InvalidRequest,
        LayerInfo,
        ModelInfo,
        ModelNotFound,
        Progress,
        ServerBusy,
        ServerUnavailable,
    )

__all__ = [
    "AsyncDreamClient",
    "Cancelled",
    "DeadlineExceeded",
    "DreamClient",
    "DreamEvent",
    "DreamOptions",
    "DreamstreamError",
    "Frame",
    "ImageInput",
    "InvalidRequest",
    "LayerInfo",
    "ModelInfo",
    "ModelNotFound",
    "Progress",
    "ServerBusy",
    "ServerUnavailable",
    "__version__",
]
_CLIENT_NAMES = frozenset(__all__) - {"__version__"}


def __getattr__(name: str) -> Any:
    if name in _CLIENT_NAMES:
        return getattr(importlib.import_module("dreamstream.client"), name)
    raise AttributeError(f"module 'dreamstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
