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

if TYPE_CHECKING:  # the client's public names, for type checkers and editors
    from dreamstream.client import *  # noqa: F403


def __getattr__(name: str) -> Any:
    """The client's public names, imported on first use (`from dreamstream import *` too)."""
    if name != "__all__" and not name[:1].isupper():
        # Probes for dunders or submodules must not load the client into the server.
        raise AttributeError(f"module 'dreamstream' has no attribute {name!r}")
    client = importlib.import_module("dreamstream.client")
    if name == "__all__":
        return [*client.__all__, "__version__"]
    if name in client.__all__:
        return getattr(client, name)
    raise AttributeError(f"module 'dreamstream' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__getattr__("__all__")])
