"""The daemon's heap: large buffers given back when freed, the standing table kept out
of the cyclic GC, and freed memory returned after a sync."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc

M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed


def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def tune_malloc() -> None:
    """Serve every block of 128 KiB or more with its own mmap, returned when freed.

    Each sync renders the whole file into one bytes object (3 MB at 100,000 names),
    in a sink's thread. glibc starts with that threshold but raises it to the size
    of the first such block freed, after which those blocks come from the heap or a
    thread's arena and stay resident when freed: measured, 20 MB of the agent's RSS
    at 100,000 names (130.7 -> 109.9 MiB, bench/memory.py). Setting the threshold
    explicitly turns that adjustment off. Call it before the big allocations start.
    """
    libc = _libc()
    mallopt = getattr(libc, "mallopt", None)  # glibc; musl has none
    if mallopt is not None:
        mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)


def _malloc_trim() -> None:
    # A reload frees as much as the table holds (the parsed TOML document, the new
    # config's copies), mostly in large blocks that glibc keeps for reuse: without
    # this, RSS after a reload stays at the reload's peak for good.
    trim = getattr(_libc(), "malloc_trim", None)  # not glibc (musl has no malloc_trim)
    if trim is not None:
        trim(0)


def settle_heap() -> None:
    """Exclude what is alive now (config, snapshots, table) from future GC scans.

    The table is made of many small long-lived objects, and a config reload
    allocates tens of thousands more: without this, the cyclic GC rescans
    the whole standing table again and again during a reload (measured: a
    third of a 10,000-name reload). Freed objects are still freed by
    reference counting; namesync's records hold no reference cycles.
    """
    gc.collect()
    gc.freeze()
    _malloc_trim()
