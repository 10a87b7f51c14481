"""The id that ties one call's log lines, its DreamStarted message and its error details together.

A caller, or a proxy in front of the server, may send one as `x-request-id` metadata so that
the id follows the request across services; otherwise the server makes one up. The call's
trailing metadata returns it either way.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable

from dreamstream.wire import REQUEST_ID_METADATA

# A caller's id is taken when it is short and plain: it goes back into metadata and into logs.
_ACCEPTED = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")

Metadata = Iterable[tuple[str, str | bytes]]


def request_id_of(metadata: Metadata | None) -> str:
    """The caller's `x-request-id` when it sent a usable one, otherwise a new random id."""
    for key, value in metadata or ():
        if key == REQUEST_ID_METADATA and isinstance(value, str) and _ACCEPTED.fullmatch(value):
            return value
    return uuid.uuid4().hex
