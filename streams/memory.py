"""Giving back to the system the memory the worker freed, after the moments that free a lot at once.

Restoring a million states from the changelog and indexing them (``Clock._rebuild``) allocate and free
hundreds of megabytes of short-lived objects: fetched records, decoded states, RocksDB iterator blocks.
glibc keeps what was freed inside its heaps for reuse (one heap, an "arena", per thread that allocated:
librdkafka's, RocksDB's and the executor's threads each get their own), so the worker's RSS stays at its
peak although nothing uses that memory any more. ``trim`` asks glibc to hand the free pages back
(``malloc_trim(0)``, which also releases free pages in the middle of a heap, not only at its top). It
walks the heaps once, so it is called after such a moment, never per batch. With a C library that has no
``malloc_trim`` (musl, macOS) it does nothing and says so by returning False.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("herald.memory")
_UNLOADED: Any = object()
_libc: Any = _UNLOADED


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where the C library has none."""
    global _libc
    if _libc is _UNLOADED:
        try:
            _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            _libc.malloc_trim.restype = ctypes.c_int
        except (OSError, AttributeError):
            _libc = None
    return None if _libc is None else _libc.malloc_trim


def rss_mb() -> float | None:
    """This process's resident memory in MB (Linux; None elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def trim(after: str) -> bool:
    """Return the heaps' free pages to the system; log how much, naming the moment (``after``).

    True when the C library could (glibc), False when it has no ``malloc_trim``."""
    function = _malloc_trim()
    if function is None:
        return False
    before = rss_mb()
    function(0)
    now = rss_mb()
    if before is not None and now is not None:
        log.info("after %s: %.0f MB of freed memory given back to the system; RSS %.0f MB", after, before - now, now)
    return True
