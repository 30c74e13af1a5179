"""Process runtime settings of the kernels: heap reuse inside Dask workers, torch threads.

**Heap** (glibc only; else no-op).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (to hand memory back
to the OS). Setting that also switches off glibc's dynamic mmap threshold, so every
array above 128 KiB is a fresh ``mmap`` and every page of it is faulted in and zeroed on
first touch. The score kernels work in cache-sized row slices of about 1 MiB and build
the dual matrix slice by slice (the model allocates its own arrays), so in a worker they
spent most of their time in page faults: measured on the benchmark block (84k × 51),
pass 1 / pass 2 of glm:swish scores took 63 / 78 ms CPU with the worker setting and 21 / 30
ms with this context (22 / 28 ms in a plain process). See bench/RESULTS.md.

:func:`reuse_freed_memory` raises the mmap and trim thresholds while a kernel runs, so
freed slices are reused from the heap, then restores the worker's settings and trims the
heap (``malloc_trim(0)``), so memory still goes back to the OS after every task. It only
acts where ``MALLOC_TRIM_THRESHOLD_`` is set (a plain process keeps glibc's adaptive
behaviour) and nests across threads (the settings are restored when the last one leaves).

**Threads**: :func:`use_worker_threads` runs torch with one thread on a Dask worker (the
worker's threads are the cores).

**Chunk progress**: :func:`chunk_progress` installs, for the current context (a pipeline
stage), a listener ``(done, total)`` that :mod:`nldist.graph` calls as the tasks of a pass
over the chunks finish; :func:`chunk_listener` reads it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["chunk_listener", "chunk_progress", "reuse_freed_memory", "use_worker_threads"]

_CHUNKS: ContextVar[Callable[[int, int], None] | None] = ContextVar("nldist_chunk_progress",
                                                                    default=None)


@contextmanager
def chunk_progress(listener: Callable[[int, int], None] | None) -> Iterator[None]:
    """Call ``listener(done, total)`` as the chunk tasks of the passes run inside finish."""
    token = _CHUNKS.set(listener)
    try:
        yield
    finally:
        _CHUNKS.reset(token)


def chunk_listener() -> Callable[[int, int], None] | None:
    """The chunk-progress listener in force (None: nobody is listening)."""
    return _CHUNKS.get()

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_DEFAULT = 128 * 1024  # glibc's initial M_MMAP_THRESHOLD
_MMAP_WHILE = 64 * 2**20
_TRIM_WHILE = 2**30

_lock = threading.Lock()
_depth = 0
_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        lib = None
        try:
            if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
                name = ctypes.util.find_library("c") or "libc.so.6"
                cand = ctypes.CDLL(name)
                if hasattr(cand, "mallopt") and hasattr(cand, "malloc_trim"):
                    lib = cand
        except OSError:  # pragma: no cover - no loadable libc
            lib = None
        _libc = lib
    return _libc or None


def _trim_setting() -> int | None:
    raw = os.environ.get("MALLOC_TRIM_THRESHOLD_")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


@contextmanager
def reuse_freed_memory() -> Iterator[None]:
    """Context: freed allocations are reused instead of unmapped (Dask workers, glibc)."""
    global _depth
    trim = _trim_setting()
    lib = _glibc() if trim is not None else None
    if lib is None:
        yield
        return
    with _lock:
        if _depth == 0:
            lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_WHILE)
            lib.mallopt(_M_TRIM_THRESHOLD, _TRIM_WHILE)
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                lib.mallopt(_M_TRIM_THRESHOLD, trim)
                lib.mallopt(_M_MMAP_THRESHOLD, _MMAP_DEFAULT)
                lib.malloc_trim(0)


def use_worker_threads() -> None:
    """On a Dask worker, run torch with one thread (the worker's threads are the cores)."""
    dist = sys.modules.get("distributed")
    if dist is None:
        return
    try:
        dist.get_worker()
    except Exception:  # noqa: BLE001 - not on a worker
        return
    import torch

    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)
