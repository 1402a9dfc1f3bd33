"""Keep freed memory in the process, for the learner's next update.

By default glibc hands the pages of each large freed block back to the OS (blocks over its mmap
threshold are unmapped; the heap top is trimmed), and the next update's tensors of the same
sizes fault every page in again. A learner update at batch 256 allocates and frees dozens of
blocks of 1-13 MB: measured here, 9200 page faults and 20 ms of system time per state update,
against 180 and 4 ms with the settings below. The price: the process keeps its peak heap (it
would reach it again at the next update anyway). ``TDMPC_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import os
import sys

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # glibc's malloc.h
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size come from the heap (glibc's largest allowed threshold on 64 bits)."""
_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to keep freed blocks (once per process); False where this is not
    glibc (another libc, macOS) or it is turned off, and malloc behaves as before."""
    global _done
    if _done is None:
        _done = False
        if (sys.platform.startswith("linux")
                and os.environ.get("TDMPC_KEEP_FREED_MEMORY", "1") != "0"):
            try:
                libc = ctypes.CDLL("libc.so.6")
                _done = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                             and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                             and libc.mallopt(_M_TOP_PAD, 64 << 20))
            except (OSError, AttributeError):
                _done = False
    return _done
