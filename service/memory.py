"""Give freed memory back to the operating system after a large request.

glibc's malloc returns blocks above its mmap threshold to the system when they are freed, but the
threshold rises (up to 32 MiB) as such blocks are freed, and smaller blocks stay in its heaps: a
process that decoded a large image or video once would keep much of that memory for good.
``release_memory`` calls glibc's ``malloc_trim(0)``, which hands the free parts of every heap back;
on a C library without it (musl, macOS) it does nothing. The core calls it after a request that
decoded more than ``RELEASE_AFTER_PIXELS``: a trim costs a few milliseconds that small requests need
not pay. (Fixing the mmap threshold low instead would return memory at once, but makes the detector
fault in its buffers on every run: about 75% more CPU per detection.)
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache

RELEASE_AFTER_PIXELS = 4_000_000  # about a 2560x1600 image: below it a request's buffers are small enough to keep


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    return getattr(ctypes.CDLL(None), "malloc_trim", None)  # the process's own symbols: its C library's


def release_memory() -> None:
    """Return the free memory of the C heaps to the system (glibc); a no-op elsewhere."""
    if (trim := _malloc_trim()) is not None:
        trim(0)
