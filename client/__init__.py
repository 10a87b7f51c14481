"""The dreamstream client: call a dreamstream server from Python or the command line.

from dreamstream import DreamClient, Frame

with DreamClient("localhost:50051") as client:
    for event in client.dream("photo.jpg", octaves=4):
        if isinstance(event, Frame) and event.final:
            event.image().save("dream.png")
"""

from dreamstream.client.animation import AnimationFrame
from dreamstream.client.client import AsyncDreamClient, DreamClient, DreamOptions, ImageInput
from dreamstream.client.errors import (
    Cancelled,
    DeadlineExceeded,
    DreamstreamError,
    FieldViolation,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    ServerBusy,
    ServerUnavailable,
    Unauthenticated,
)
from dreamstream.client.events import (
    ClassProbability,
    DreamEvent,
    Frame,
    LayerInfo,
    ModelInfo,
    ModelListing,
    Progress,
    Started,
    UnavailableModelInfo,
)

__all__ = [
    "AnimationFrame",
    "AsyncDreamClient",
    "Cancelled",
    "ClassProbability",
    "DeadlineExceeded",
    "DreamClient",
    "DreamEvent",
    "DreamOptions",
    "DreamstreamError",
    "FieldViolation",
    "Frame",
    "ImageInput",
    "InvalidRequest",
    "LayerInfo",
    "ModelInfo",
    "ModelListing",
    "ModelNotFound",
    "ModelUnavailable",
    "Progress",
    "ServerBusy",
    "ServerUnavailable",
    "Started",
    "Unauthenticated",
    "UnavailableModelInfo",
]
