"""Constants both ends of the wire agree on: the port, the message size limit, the image formats.

The client, the server and the command line all read them from here, so a
format or a limit is added in one place. The API itself is
`proto/dreamstream/v1/dream.proto`; these are the facts about using it that
the .proto cannot say.
"""

from __future__ import annotations

from dataclasses import dataclass

from dreamstream.v1 import dream_pb2

DEFAULT_PORT = 50051
DEFAULT_TARGET = f"localhost:{DEFAULT_PORT}"

# Frames of a large picture are several MB, well over gRPC's 4 MB default; both ends
# raise their send and receive limits to this.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)

# The metadata key of a call's request id: the caller may send one, the server returns the one
# it used in the call's trailing metadata (and in DreamStarted, and in every error's RequestInfo).
REQUEST_ID_METADATA = "x-request-id"


@dataclass(frozen=True)
class ImageFormat:
    """One encoding a frame can travel in."""

    name: str  # what users write: "png", "jpeg", "webp"
    enum: int  # the dreamstream.v1.ImageFormat value
    suffixes: tuple[str, ...]  # file name suffixes, the usual one first
    mime: str

    @property
    def suffix(self) -> str:
        return self.suffixes[0]


IMAGE_FORMATS = (
    ImageFormat("png", dream_pb2.IMAGE_FORMAT_PNG, (".png",), "image/png"),
    ImageFormat("jpeg", dream_pb2.IMAGE_FORMAT_JPEG, (".jpg", ".jpeg"), "image/jpeg"),
    ImageFormat("webp", dream_pb2.IMAGE_FORMAT_WEBP, (".webp",), "image/webp"),
)
DEFAULT_FORMAT = IMAGE_FORMATS[0]
FORMAT_NAMES = tuple(fmt.name for fmt in IMAGE_FORMATS)


class UnknownFormat(ValueError):
    """A format name, enum value or file suffix that is none of IMAGE_FORMATS."""


def format_named(name: str) -> ImageFormat:
    """The format called `name` ("png", "jpeg" or "jpg", "webp"), case-insensitive."""
    wanted = name.lower().lstrip(".")
    for fmt in IMAGE_FORMATS:
        if wanted == fmt.name or f".{wanted}" in fmt.suffixes:
            return fmt
    raise UnknownFormat(f"unknown image format {name!r}: use {', '.join(FORMAT_NAMES)}")


def format_of_enum(value: int) -> ImageFormat:
    """The format of a dreamstream.v1.ImageFormat value; UNSPECIFIED means the default (PNG)."""
    if value == dream_pb2.IMAGE_FORMAT_UNSPECIFIED:
        return DEFAULT_FORMAT
    for fmt in IMAGE_FORMATS:
        if fmt.enum == value:
            return fmt
    raise UnknownFormat(f"unknown image format {value}: use PNG, JPEG or WEBP")


def format_of_suffix(suffix: str) -> ImageFormat:
    """The format a file name suffix (".png", ".JPG", ...) stands for."""
    for fmt in IMAGE_FORMATS:
        if suffix.lower() in fmt.suffixes:
            return fmt
    suffixes = ", ".join(s for fmt in IMAGE_FORMATS for s in fmt.suffixes)
    raise UnknownFormat(f"cannot tell an image format from {suffix or 'no suffix'!r}: use {suffixes}")
