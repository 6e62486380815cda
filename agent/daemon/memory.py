"""Keeping a long-running daemon's heap small: glibc malloc tuning and giving memory back.

CPython frees the objects of a burst (a full scan, a full inventory report), but glibc keeps the
pages of its heap unless asked, and an idle daemon would sit on the peak of its last rescan or
report (tens of MB at 10,000 users). Two measures, both no-ops off glibc:

- a fixed mmap threshold (128 KiB, glibc's default starting value): glibc otherwise raises the
  threshold each time a large block is freed, so later multi-MB buffers (an inventory's JSON text,
  SQLite's copy of it) come from the heap, where their pages outlive them; mapped blocks go back
  to the OS when freed;
- malloc_trim after each burst, for the rest.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import gc
from typing import Final

_GLIBC: Final = "libc.so.6"
_M_MMAP_THRESHOLD: Final = -3  # <malloc.h>
MMAP_THRESHOLD_BYTES: Final = 128 * 1024


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(_GLIBC)
        libc.mallopt, libc.malloc_trim  # noqa: B018 - both exist only in glibc
    except (OSError, AttributeError):
        return None
    return libc


def tune_allocator() -> bool:
    """Fix glibc's mmap threshold (see the module docstring). True when it was applied."""
    libc = _glibc()
    return libc is not None and libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1


def release_free_memory() -> None:
    """Collect cycles, then return free heap pages to the OS (glibc's malloc_trim; elsewhere a no-op)."""
    gc.collect()
    libc = _glibc()
    if libc is not None:
        with contextlib.suppress(OSError):
            libc.malloc_trim(0)
