"""Allocator settings that keep a long streaming step's memory flat.

The embeddings step streams a partition through Arrow, parquet and delta-rs a record batch at a
time, so its live data is bounded; what grows with the partition's size, left alone, is memory the
allocators keep after it was freed. Measured on a 100k-chunk partition (benchmarks/memory.py):

- glibc malloc raises its mmap threshold after the first large free (up to 32 MB), so every later
  column buffer of a few MB comes from a heap arena, and the freed arenas stay resident;
  a fixed 1 MiB threshold maps large buffers and returns them on free.
- Arrow's default pool (mimalloc) keeps freed pages for reuse; the system pool follows glibc's
  settings above.
- delta-rs' own jemalloc keeps dirty pages for 10 s, which during a fast write is hundreds of MB.
  Its decay is read from `_RJEM_MALLOC_CONF` once, when deltalake's library loads, so it cannot be
  set from here (an earlier import of deltalake would silently ignore it): the process environment
  sets it (Makefile, Dockerfile, k8s values): `_RJEM_MALLOC_CONF=dirty_decay_ms:250,muzzy_decay_ms:0`.

The first two are set at run time by `configure_for_streaming`. Each setting is process-wide and
applies to allocations made after it; none changes results.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20
TRIM_THRESHOLD_BYTES = 8 << 20

_configured = False


def _glibc():
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        libc = ctypes.CDLL(name)
        return libc if hasattr(libc, "mallopt") else None
    except OSError:
        return None


def configure_for_streaming() -> str:
    """Applies the glibc and Arrow settings above once per process (an explicit environment setting wins).

    Returns the Arrow memory pool in use, for the step's metadata.
    """
    global _configured
    import pyarrow as pa

    if not _configured:
        _configured = True
        libc = _glibc()
        # mallopt returns 1 on success; a fixed threshold also turns off glibc's dynamic raise.
        if libc is not None and "MALLOC_MMAP_THRESHOLD_" not in os.environ and libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1:
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
        if "ARROW_DEFAULT_MEMORY_POOL" not in os.environ:
            pa.set_memory_pool(pa.system_memory_pool())
    return pa.default_memory_pool().backend_name
