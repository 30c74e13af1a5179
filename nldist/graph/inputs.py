"""X and y as row-chunked dask arrays (from Zarr, NumPy or dask), the row blocks every pass
maps over, computing them with chunk progress, the tree reduction, and the reads counted by
the store.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
from dask.base import get_scheduler
from dask.callbacks import Callback

from nldist._checks import check_xy
from nldist._runtime import chunk_listener
from nldist.errors import NldistError
from nldist.store import counting
from nldist.store.dataset import open_dataset

log = logging.getLogger("nldist")


SPLIT_EVERY = 8

def open_zarr_xy(path: str | Path, count: str | None = None
                 ) -> tuple[da.Array, da.Array | None]:
    """Lazy X (n, d) and y (n,) of a Zarr dataset group written by ``nldist ingest``
    (``count``: X's chunk reads counted under that token, :func:`store_reads`)."""
    X, y = open_dataset(path, count=count)
    return da.from_zarr(X), (None if y is None else da.from_zarr(y))

def store_reads(token: str) -> int:
    """Chunk reads of X counted under ``token`` (:mod:`nldist.store.counting`) in this process
    and on every worker of the current cluster (a worker that died took its count along)."""
    pid, here = counting.process_reads(token)
    per = {pid: here}
    client = current_client()
    if client is not None:
        try:
            per.update(dict(client.run(counting.process_reads, token).values()))
        except Exception as exc:  # noqa: BLE001 - a cost figure never fails a run
            log.debug("store reads: workers unreachable (%s)", exc)
    return int(sum(per.values()))

def as_dask_xy(
    X: Any, y: Any = None, chunk_rows: int | None = None, y_cols: int | None = 1
) -> tuple[da.Array, da.Array | None]:
    """Validate cheaply and return row-chunked dask arrays X (n, d) and y (n,).

    Accepts ndarrays, dask arrays, or a Zarr dataset path for X (then y defaults to the
    group's y). Multiple column chunks are merged (with a log message). Unknown (nan)
    chunk sizes are computed once (one extra read of X). ``y_cols > 1``: y is (n, y_cols),
    the targets of a multi-output regression, chunked by rows only; ``None``: as y is.
    """
    if isinstance(X, (str, Path)):
        X, y_store = open_zarr_xy(X)
        if y is None:
            y = y_store
    if not isinstance(X, da.Array):
        X = np.asarray(X)
    if y is not None and not isinstance(y, da.Array):
        y = np.asarray(y)
    y_cols = check_xy(X, y, y_cols)  # from the metadata, before anything is read
    if not isinstance(X, da.Array):
        X = da.from_array(X, chunks=(chunk_rows or max(1, X.shape[0]), -1))
    unknown = any(math.isnan(c) for c in X.chunks[0])
    if unknown:
        log.info("X has unknown chunk sizes; computing them (one extra read of X)")
        X = X.compute_chunk_sizes()
    if isinstance(y, da.Array) and any(math.isnan(c) for c in y.chunks[0]):
        unknown = True
        y = y.compute_chunk_sizes()
    if unknown:  # the row counts are known now
        check_xy(X, y, y_cols)
    if len(X.chunks[1]) > 1:
        log.warning("X has %d column chunks; rechunking to one column chunk per row block",
                    len(X.chunks[1]))
        X = X.rechunk({1: -1})
    if chunk_rows:
        X = X.rechunk({0: chunk_rows})
    if y is not None:
        if y.ndim == 2 and y.shape[1] == 1 and y_cols == 1:
            y = y[:, 0]
        rows = (X.chunks[0],) if y_cols == 1 else (X.chunks[0], (y_cols,))
        y = da.from_array(y, chunks=rows) if not isinstance(y, da.Array) else y
        if y.chunks != rows:
            y = y.rechunk(rows)
    return X, y

def delayed_xy(X: da.Array, y: da.Array | None) -> tuple[list, list]:
    """The row blocks of X and y as delayed objects.

    X and y of a Parquet table read in place come from the same partition reads and
    encodings: ``to_delayed()``'s default would fuse each array's graph on its own and give
    X and y separate copies of every partition's read (each read twice per pass), so then
    they are taken unfused and share one. Arrays with no common layer (Zarr X and y) keep
    the default, fused per block: no intermediate task whose result another worker might
    have to fetch."""
    shared = y is not None and bool(set(X.__dask_graph__().layers)
                                    & set(y.__dask_graph__().layers))
    xs = list(X.to_delayed(optimize_graph=not shared).ravel())
    ys = list(y.to_delayed(optimize_graph=not shared).ravel()) if y is not None else \
        [None] * len(xs)
    return xs, ys

def row_blocks(X: da.Array, y: da.Array | None) -> list[tuple[Any, Any, int]]:
    """(delayed X block, delayed y block or None, row offset) for each row block."""
    xs, ys = delayed_xy(X, y)
    offsets = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(int)
    return list(zip(xs, ys, offsets.tolist(), strict=True))

def _report_as_done(tasks: Sequence[Any], run: Callable[[], Any]) -> Any:
    """``run()`` (which computes or persists ``tasks``) on a local scheduler, calling the
    chunk-progress listener each time one of ``tasks`` finishes."""
    listener = chunk_listener()
    keys = {t.key for t in tasks}
    done = [0]

    def posttask(key: Any, *_: Any) -> None:
        if key in keys:
            done[0] += 1
            listener(done[0], len(keys))  # type: ignore[misc]

    with Callback(posttask=posttask):
        return run()

def compute_blocks(tasks: Sequence[Any]) -> list:
    """``dask.compute(*tasks)`` (one task per chunk), reporting each finished task to the
    chunk-progress listener of the stage (:func:`nldist._runtime.chunk_progress`)."""
    listener = chunk_listener()
    if listener is None or len(tasks) < 2:
        return list(dask.compute(*tasks))
    listener(0, len(tasks))
    client = current_client()
    if client is None:
        return list(_report_as_done(tasks, lambda: dask.compute(*tasks)))
    futs = client.compute(list(tasks))
    follow(futs, listener)
    return list(client.gather(futs))

def follow(futs: list, listener: Callable[[int, int], None]) -> None:
    """Wait for cluster futures, telling ``listener(done, total)`` as each finishes."""
    from distributed import as_completed

    for i, _ in enumerate(as_completed(futs), 1):
        listener(i, len(futs))

# Per-chunk results a pass may keep on the workers at once so that a listener can follow
# the chunks (above it the pass runs as one graph, reduced as the parts arrive, untracked).
TRACK_BYTES = 256 * 2**20

def persist_blocks(parts: list, always: bool = False, part_bytes: int = 0) -> list:
    """Per-chunk tasks persisted (results stay where they were made, on the workers) while
    a chunk-progress listener follows them (or ``always``); else ``parts`` unchanged.
    ``part_bytes``: the size of one result (no tracking when all of them together exceed
    :data:`TRACK_BYTES`)."""
    listener = chunk_listener()
    if listener is None or len(parts) < 2 or len(parts) * part_bytes > TRACK_BYTES:
        return list(dask.persist(*parts)) if always else parts
    listener(0, len(parts))
    client = current_client()
    if client is None:
        return list(_report_as_done(parts, lambda: dask.persist(*parts)))
    from distributed import futures_of

    kept = client.persist(parts)
    follow(futures_of(kept), listener)
    return list(kept)

def tree_reduce(items: Sequence[Any], combine: Callable, split_every: int = SPLIT_EVERY) -> Any:
    """Reduce delayed items with ``combine(list)`` in a tree of fan-in ``split_every``."""
    if split_every < 2:
        raise NldistError(f"split_every must be >= 2, got {split_every}")
    items = list(items)
    while len(items) > 1:
        items = [
            dask.delayed(combine, pure=True)(items[i : i + split_every])
            for i in range(0, len(items), split_every)
        ]
    return items[0]

def current_client() -> Any:
    """The distributed client dask computes on now, or None (a local scheduler is in
    force, e.g. ``dask.config.set(scheduler="synchronous")``, or there is no client)."""
    try:
        from distributed import get_client

        c = get_client()
    except (ImportError, ValueError):
        return None
    return c if getattr(get_scheduler(), "__self__", None) is c else None
