"""glibc's allocator set up for repeated forward passes: freed tensor buffers stay in the heap.

glibc serves large allocations with fresh pages from the kernel (mmap, or a heap it trims back
after every free), so a forward pass whose activations are megabytes page-faults its memory in
anew each time. Its thresholds adapt on their own, but not reliably: the same forward pass is a
third slower in some fresh processes than in others or with the thresholds fixed (bench/RESULTS.md,
"Serving latency"). Fixing them keeps freed buffers for reuse; each heap then holds on to at most
4x the mmap threshold unused.

An upload's buffers are another matter: a large decoded image must not stay in the heap after its
request. Pillow allocates an image in blocks; :func:`keep_freed_memory` makes them at least the
mmap threshold, so a large image's blocks are mapped and unmapped whole, and
:func:`release_freed_memory` (after a large request) hands back what freed pages the heaps hold.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

__all__ = ["keep_freed_memory", "release_freed_memory", "DEFAULT_MMAP_THRESHOLD_MIB", "MAX_MIB"]

M_TRIM_THRESHOLD = -1  # glibc's malloc.h
M_MMAP_THRESHOLD = -3
MAX_MIB = 256  # 4x that, in bytes, must fit mallopt's C int
DEFAULT_MMAP_THRESHOLD_MIB = 32


def keep_freed_memory(mmap_threshold_mib: int = DEFAULT_MMAP_THRESHOLD_MIB) -> bool:
    """Allocations under ``mmap_threshold_mib`` MiB come from the heap, which keeps up to 4x that
    free instead of returning it to the kernel (each of glibc's heaps: about one per thread that
    allocates). For the whole process, from now on. Returns False, changing nothing, where the C
    library has no ``mallopt`` (not glibc)."""
    if not 1 <= int(mmap_threshold_mib) <= MAX_MIB:
        raise ValueError(f"mmap_threshold_mib must be 1-{MAX_MIB}, got {mmap_threshold_mib}")
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mmap, trim = int(mmap_threshold_mib) << 20, 4 * (int(mmap_threshold_mib) << 20)
    ok = mallopt(M_MMAP_THRESHOLD, mmap) == 1 and mallopt(M_TRIM_THRESHOLD, trim) == 1
    if ok:
        from PIL import Image

        # an image larger than one block is mapped, and unmapped when freed, block by block
        Image.core.set_block_size(max(Image.core.get_block_size(), mmap))
        log.debug("malloc: mmap threshold %d, trim threshold %d bytes", mmap, trim)
    return ok


def release_freed_memory() -> bool:
    """Return the free pages glibc's heaps hold to the kernel (``malloc_trim(0)``, every arena);
    a few milliseconds. Returns whether it ran (glibc only)."""
    try:
        trim = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return False
    trim(0)
    return True
