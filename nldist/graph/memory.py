"""X and y kept in worker memory (``cache_x``), worker memory limits, and lazy arrays of stored
outputs.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import dask
import dask.array as da

from nldist.store.remote import as_path, is_remote, storage_options

log = logging.getLogger("nldist")


def worker_memory_limits(c: Any) -> list[int]:
    """Memory limit in bytes of each worker of client ``c`` (0: none); [] without one."""
    if c is None:
        return []
    return [w.get("memory_limit") or 0 for w in c.scheduler_info().get("workers", {}).values()]


def worker_threads(c: Any) -> list[int]:
    """Threads of each worker of client ``c`` (tasks it runs at once); [] without one."""
    if c is None:
        return []
    return [int(w.get("nthreads") or 1)
            for w in c.scheduler_info().get("workers", {}).values()]

def persist_xy(X: da.Array, y: da.Array, client: Any = None) -> tuple[da.Array, da.Array]:
    """X, y computed once into worker memory (on ``client``, else the current scheduler)."""
    if client is not None:
        from distributed import wait

        X, y = client.persist([X, y])
        wait([X, y])
        return X, y
    return dask.persist(X, y)

def open_array(path: str | Path, component: str, chunks: Any = None) -> da.Array:
    """A lazy dask array of one Zarr array of a group (rechunked to ``chunks`` rows)."""
    a = da.from_zarr(str(as_path(path) / component),
                     storage_options=storage_options(str(path)) if is_remote(path) else None)
    return a if chunks is None else a.rechunk((chunks,))
