"""Keep freed memory in the process for the next run instead of handing it back to the OS.

A replication allocates a few dozen arrays of one value per request. By default glibc maps each
array over 128 KiB fresh from the OS and unmaps it when freed, so every run page-faults all of
its memory in again; on virtual machines a page fault can cost microseconds, which made a
200,000-request run three times slower than its simulation. Raising the mmap and trim
thresholds lets glibc reuse the same memory run after run. Only the command line, sweep
workers and benchmarks call this: a library import does not change its host's allocator.
"""

from __future__ import annotations

import ctypes
import ctypes.util

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory(mmap_mib: int = 32, trim_mib: int = 512) -> bool:
    """Serve allocations up to ``mmap_mib`` from the heap and keep up to ``trim_mib`` freed there.

    Returns True when the C library took the settings (glibc); elsewhere it does nothing.
    """
    global _done
    if _done:
        return True
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = bool(mallopt(_M_MMAP_THRESHOLD, mmap_mib << 20)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_mib << 20))
    _done = ok
    return ok
