"""Giving memory back to the OS after a burst (a full scan, a full inventory report).

CPython frees the objects of a burst, but glibc keeps the pages of its heap arenas unless asked:
an idle daemon would sit on the peak of its last rescan or report (tens of MB at 10,000 users).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
from typing import Final

_GLIBC: Final = "libc.so.6"


def release_free_memory() -> None:
    """Collect cycles, then return free heap pages to the OS (glibc's malloc_trim; elsewhere a no-op)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL(_GLIBC).malloc_trim(0)
