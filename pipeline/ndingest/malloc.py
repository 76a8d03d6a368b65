"""glibc malloc settings for long-lived processes that move big arrays; no-ops off glibc.

`mallopt` (see malloc(3)) is the only interface: Python has no other way to tell glibc
how much freed memory to keep. Each setting is measured where it is used."""
from __future__ import annotations

import ctypes

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
HEAP_BLOCKS = 64 << 20  # blocks up to this come from the heap: a 256^3 cutout of up to 32-bit voxels


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(param, value))
    except (OSError, AttributeError):  # not glibc
        return False


def few_arenas(arenas: int = 2) -> bool:
    """At most `arenas` malloc arenas. glibc gives each thread that allocates its own arena
    and keeps what a block freed in it: with the reader, checksum and tensorstore threads
    of a pyramid ingest, that was 80 MiB of peak RSS (423 -> 345 MiB for 512 MiB of labels
    with three levels, same speed). Call it before those threads exist."""
    return _mallopt(M_ARENA_MAX, arenas)


def keep_freed(keep_bytes: int) -> bool:
    """Serve blocks up to HEAP_BLOCKS from the heap and keep up to `keep_bytes` of freed
    heap per arena. By default glibc maps big blocks afresh and unmaps them when freed, so
    every 16 MiB cutout a server encodes touches 4096 new pages, each a page fault: on
    these 2-CPU VMs that made a 256^3 blosc answer's read + encode 22 ms instead of 11."""
    return _mallopt(M_MMAP_THRESHOLD, HEAP_BLOCKS) and _mallopt(M_TRIM_THRESHOLD, keep_bytes)
