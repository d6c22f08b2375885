"""glibc's allocator set up for repeated forward passes: freed tensor buffers stay in the heap.

glibc serves large allocations with fresh pages from the kernel (mmap, or a heap it trims back
after every free), so a forward pass whose activations are megabytes page-faults its memory in
anew each time. Its thresholds adapt on their own, but not reliably: the same Lite0 forward took
27 ms in one fresh process and 20 ms in another, or after fixing the thresholds (bench/RESULTS.md,
"Serving latency and the allocator"). Fixing them keeps freed buffers for reuse; the heap then
holds on to at most ``trim_threshold`` unused bytes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

__all__ = ["keep_freed_memory"]

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 128 << 20) -> bool:
    """Allocations under ``mmap_threshold`` bytes come from the heap, which keeps up to
    ``trim_threshold`` free bytes instead of returning them to the kernel. For the whole process,
    from now on. Returns False, changing nothing, where the C library has no ``mallopt`` (not glibc).
    Each of glibc's heaps (about one per thread that allocates) may keep ``trim_threshold`` unused."""
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if not 0 < int(value) < 2**31:
            raise ValueError(f"{name} must be between 1 and 2**31 - 1 bytes (a C int), got {value}")
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, int(mmap_threshold)) == 1 and mallopt(M_TRIM_THRESHOLD, int(trim_threshold)) == 1
    if ok:
        log.debug("malloc: mmap threshold %d, trim threshold %d bytes", mmap_threshold, trim_threshold)
    return ok
