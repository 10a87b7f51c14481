"""Giving freed memory back to the operating system between dreams.

glibc keeps one malloc arena per thread that allocated, and keeps what is freed
in each for later use by that thread. A server whose dreams run on several
worker threads in turn would then hold the leftovers of every thread's largest
dream at once, and its memory budget (see engine.limits) would not hold.
`malloc_trim(0)` hands the free pages of every arena back; it costs a few
milliseconds, once per dream. Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def give_back_free_memory() -> None:
    """Return the allocator's free pages to the operating system (glibc), or do nothing."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
