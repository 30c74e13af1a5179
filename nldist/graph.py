"""The one module that builds Dask graphs.

It maps the pure kernels of :mod:`nldist.scores.block`, :mod:`nldist.train` and
:mod:`nldist.scores.sampling` over row blocks
of a row-chunked X (n, d) and y (n,), reduces small per-block results in a tree of bounded
fan-in (``split_every``), and brings only small things to the driver: R (q, q), scalars,
the sample. No (n, .) array is ever computed on the driver.

Passes are computed one at a time (pass 1 eagerly, pass 2 lazily) so that X blocks are
read once per pass and never held in memory between passes. By default the dual block is
recomputed in pass 2 rather than stored, because for the closed-form models it costs less
than the read (see bench/RESULTS.md); with a :class:`nldist.dualstore.DualStore` pass 1
persists the blocks whose measured build time exceeds a measured write + read of them
(``torch:`` models by quadrature) and pass 2 reads those back.

Besides the score passes it holds every other graph of the package: the distributed
Gauss-Newton and loss passes, sampling and gathering rows, the resumable writes of the
score store, keeping X in worker memory, and the report's and diagnostics' passes
(histograms, top-k rows, per-row losses, label flips).
"""

from __future__ import annotations

import functools
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np
from dask.base import get_scheduler
from dask.callbacks import Callback

from nldist import precond, train
from nldist._budget import DUAL_BLOCK_BYTES
from nldist._checks import as_rng
from nldist._runtime import chunk_listener
from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.losses import target_columns
from nldist.scores import block, oneread, sampling, sketch
from nldist.scores.block import ScoreSpec
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import block_r
from nldist.scores.reductions import Normalizer
from nldist.scores.rows import RawRows
from nldist.store import counting
from nldist.store.dataset import open_dataset, verify_xy_chunk, write_xy_chunk
from nldist.store.remote import as_path, is_remote, storage_options

log = logging.getLogger("nldist")

SPLIT_EVERY = 8


# --------------------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------------------


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
        X = da.from_array(X, chunks=(chunk_rows or max(1, X.shape[0]) if X.ndim else 1, -1)) \
            if X.ndim == 2 else da.from_array(X)
    if X.ndim != 2:
        raise NldistError(f"X must be 2-D (n, d), got shape {X.shape}; reshape it")
    if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
        raise NldistError(f"X has dtype {X.dtype}; convert it to float32/float64 (one-hot encode "
                          "categorical columns, e.g. with `nldist ingest`)")
    if X.shape[1] == 0:
        raise NldistError("X has no columns; check the dataset's feature columns")
    if any(math.isnan(c) for c in X.chunks[0]):
        log.info("X has unknown chunk sizes; computing them (one extra read of X)")
        X = X.compute_chunk_sizes()
    if len(X.chunks[1]) > 1:
        log.warning("X has %d column chunks; rechunking to one column chunk per row block",
                    len(X.chunks[1]))
        X = X.rechunk({1: -1})
    if chunk_rows:
        X = X.rechunk({0: chunk_rows})
    n = X.shape[0]
    if n == 0:
        raise NldistError("X has no rows; check the dataset path and any row filter")
    if y is not None:
        if not isinstance(y, da.Array):
            y = np.asarray(y)
        if y_cols is None:  # infer: one target, or the columns of a 2-D y
            y_cols = target_columns(y)
        if y.ndim == 2 and y.shape[1] == 1 and y_cols == 1:
            y = y[:, 0]
        if isinstance(y, da.Array) and any(math.isnan(c) for c in y.chunks[0]):
            y = y.compute_chunk_sizes()
        want = (n,) if y_cols == 1 else (n, y_cols)
        if tuple(y.shape) != want:
            raise NldistError(
                f"y has shape {tuple(y.shape)} but X has {n} rows; pass y of shape {want}"
                + ("" if y_cols == 1 else f" (one column per output of the {y_cols}-output "
                                          "model)"))
        if not np.issubdtype(y.dtype, np.number):
            raise NldistError(f"y has dtype {y.dtype}; convert the target to numbers")
        rows = (X.chunks[0],) if y_cols == 1 else (X.chunks[0], (y_cols,))
        y = da.from_array(y, chunks=rows) if not isinstance(y, da.Array) else y
        if y.chunks != rows:
            y = y.rechunk(rows)
    return X, y


def label_summary(y: da.Array, n_classes: int) -> tuple[int, float, float, np.ndarray]:
    """Class labels of a whole dataset in one read of y: (how many are NaN, inf or not an
    integer, the smallest, the largest, the count of each class 0..C-1 (C,)). Only these
    small numbers reach the driver."""
    yf = y.astype(np.float64)
    ok = da.isfinite(yf)
    bad = (~ok | (yf != da.round(yf))).sum()
    safe = da.where(ok, yf, 0.0)
    counts = da.bincount(da.clip(safe, 0, n_classes - 1).astype(np.int64).ravel(),
                         minlength=n_classes)
    nb, lo, hi, c = dask.compute(bad, safe.min(), safe.max(), counts)
    return int(nb), float(lo), float(hi), np.asarray(c)


def _delayed_xy(X: da.Array, y: da.Array | None) -> tuple[list, list]:
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


def _blocks(X: da.Array, y: da.Array | None) -> list[tuple[Any, Any, int]]:
    """(delayed X block, delayed y block or None, row offset) for each row block."""
    xs, ys = _delayed_xy(X, y)
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


def _compute_blocks(tasks: Sequence[Any]) -> list:
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
    _follow(futs, listener)
    return list(client.gather(futs))


def _follow(futs: list, listener: Callable[[int, int], None]) -> None:
    """Wait for cluster futures, telling ``listener(done, total)`` as each finishes."""
    from distributed import as_completed

    for i, _ in enumerate(as_completed(futs), 1):
        listener(i, len(futs))


# Per-chunk results a pass may keep on the workers at once so that a listener can follow
# the chunks (above it the pass runs as one graph, reduced as the parts arrive, untracked).
TRACK_BYTES = 256 * 2**20


def _persist_blocks(parts: list, always: bool = False, part_bytes: int = 0) -> list:
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
    _follow(futures_of(kept), listener)
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


# --------------------------------------------------------------------------------------
# Scores: pass 1 (R, eager), pass 2 (per-row scores, lazy)
# --------------------------------------------------------------------------------------


def split_for_dual(
    X: da.Array, y: da.Array | None, spec: ScoreSpec
) -> tuple[da.Array, da.Array | None]:
    """X, y with every row chunk split into near-equal parts whose (rows x group, q) matrix
    block is at most :data:`nldist._budget.DUAL_BLOCK_BYTES` (unchanged when already so).
    Splits only, never merges: each task still reads one chunk of the store. Deterministic in
    the chunking and ``spec``, so pass 1 and pass 2 (and a persisted block's index) agree."""
    q = spec.n_cols(X.shape[1])
    rows = max(1, DUAL_BLOCK_BYTES // (8 * max(q, 1) * spec.group))  # group rows / example
    if q == 0 or not X.chunks[0] or max(X.chunks[0]) <= rows:
        return X, y
    new: list[int] = []
    for c in X.chunks[0]:
        k = -(-c // rows)
        new += [c // k + 1] * (c % k) + [c // k] * (k - c % k)
    log.debug("scores: %d-column blocks; row chunks split to %d tasks", q, len(new))
    X = X.rechunk({0: tuple(new)})
    return X, None if y is None else y.rechunk({0: tuple(new)})


def pass1(
    X: da.Array,
    y: da.Array | None,
    spec: ScoreSpec,
    ridge: float = 0.0,
    rtol: float | None = None,
    split_every: int = SPLIT_EVERY,
    store: Any = None,
    masses: bool = False,
) -> Normalizer:
    """Pass 1: per-block R (or norms) reduced in a tree; returns the global normalizer.

    Parameters
    ----------
    masses : bool
        Also compute each row chunk's share of the scores from its block results
        (:func:`nldist.scores.block.part_mass`; the blocks stay on the workers until then):
        ``Normalizer.masses``, what :func:`sample_pass` needs to route the draws.
    store : nldist.store.dual_blocks.DualStore, optional
        Persist dual blocks for pass 2 (:func:`nldist.scores.block.pass1_block`); the counts
        and seconds come back in ``Normalizer.persist``.
    """
    rows = X.chunks[0]
    if spec.kind.uniform:  # 1/n needs n only: no pass over X
        norm = block.finalize_pass1(spec, {"n": int(X.shape[0])})
        if masses:
            norm = replace(norm, masses=np.asarray(rows, dtype=np.float64) / norm.total)
        return norm
    X, yy = split_for_dual(X, y if spec.needs_y else None, spec)
    if store is not None and not spec.persistable:
        store = None
    parts = [
        dask.delayed(block.pass1_block, pure=True)(xb, yb, spec, off, store, i)
        for i, (xb, yb, off) in enumerate(_blocks(X, yy))
    ]
    # with masses keep the per-block results (small: R_b) where they were made
    q = spec.n_cols(X.shape[1])
    parts = _persist_blocks(parts, always=masses, part_bytes=8 * q * q)
    (stats,) = dask.compute(tree_reduce(parts, block.combine_pass1, split_every))
    norm = block.finalize_pass1(spec, stats, ridge=ridge, rtol=rtol)
    if not masses:
        return norm
    got = dask.compute(*[dask.delayed(block.part_mass, pure=True)(pt, spec, norm)
                         for pt in parts])
    owner = part_owner(rows, X.chunks[0])
    m = np.zeros(len(rows))
    np.add.at(m, owner, np.asarray(got, dtype=np.float64))
    return replace(norm, masses=m / norm.total)


def part_owner(rows: tuple[int, ...], parts: tuple[int, ...]) -> np.ndarray:
    """For each part of a split chunking (:func:`split_for_dual`), the chunk it came from."""
    ends = np.cumsum(rows)
    starts = np.concatenate([[0], np.cumsum(parts)[:-1]])
    return np.searchsorted(ends, starts, side="right")


def _first(v: np.ndarray) -> int:
    return int(np.asarray(v).reshape(-1)[0]) if np.size(v) else 0


def _pass2_task(
    xs: list, offs: np.ndarray, y: Any, spec: ScoreSpec, norm: Normalizer
) -> np.ndarray:
    """Pass-2 task: X arrives as the list of its column blocks (one after ``as_dask_xy``);
    ``offs`` is the one-element block of the block's first global row."""
    x = xs[0] if len(xs) == 1 else np.hstack(xs)
    return block.pass2_block(x, _joined(y), spec, norm, offset=_first(offs))


def _joined(y: Any) -> Any:
    """A y block as one array: 2-D targets arrive as the list of their column blocks."""
    if isinstance(y, list):
        return y[0] if len(y) == 1 else np.hstack(y)
    return y


def _pass2_store_task(xs: list, ids: np.ndarray, offs: np.ndarray, y: Any, spec: ScoreSpec,
                      norm: Normalizer, store: Any) -> np.ndarray:
    """Pass-2 task with a dual store: ``ids`` is the one-element block of chunk indices."""
    x = xs[0] if len(xs) == 1 else np.hstack(xs)
    return block.pass2_block(x, _joined(y), spec, norm, store, _first(ids), _first(offs))


def pass2(
    X: da.Array, y: da.Array | None, spec: ScoreSpec, norm: Normalizer,
    store: Any = None,
) -> da.Array:
    """Pass 2 (lazy): per-row probabilities (n,) float64, chunked like X's rows.

    ``concatenate=False``: dask would otherwise copy every X block once (concatenating the
    single column block) before the kernel sees it. With a ``store`` (the one pass 1 used)
    each task also gets its chunk index and reads the block pass 1 persisted, if any.
    Wide blocks run on split row chunks (:func:`split_for_dual`), merged back at the end.
    """
    if spec.kind.uniform:  # chunked like X's rows, without reading X
        return da.full(X.shape[0], 1.0 / norm.total, chunks=(X.chunks[0],), dtype=np.float64)
    rows = X.chunks[0]
    X, y = split_for_dual(X, y if spec.needs_y else None, spec)
    if X.chunks[0] != rows:  # back to X's row chunks (merges the split parts)
        return _pass2(X, y, spec, norm, store).rechunk((rows,))
    return _pass2(X, y, spec, norm, store)


def _pass2(
    X: da.Array, y: da.Array | None, spec: ScoreSpec, norm: Normalizer,
    store: Any,
) -> da.Array:
    """:func:`pass2` on row chunks that need no split."""
    meta = np.empty((0,), dtype=np.float64)
    yargs: list[Any] = [y, "i" if y.ndim == 1 else "ik"] if spec.needs_y else []
    ykw: dict[str, Any] = {} if spec.needs_y else {"y": None}
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(np.int64)
    offs = da.from_array(starts, chunks=1)
    # align_arrays=False: one index / offset per X block (sizes differ, block counts agree)
    if store is not None and spec.persistable:
        ids = da.from_array(np.arange(X.numblocks[0]), chunks=1)
        return da.blockwise(
            _pass2_store_task, "i", X, "ij", ids, "i", offs, "i", *yargs, meta=meta,
            concatenate=False, align_arrays=False, adjust_chunks={"i": X.chunks[0]},
            spec=spec, norm=norm, store=store, **ykw,
        )
    return da.blockwise(_pass2_task, "i", X, "ij", offs, "i", *yargs, meta=meta,
                        concatenate=False, align_arrays=False,
                        adjust_chunks={"i": X.chunks[0]}, spec=spec, norm=norm, **ykw)


def raw_spec(ridge: float = 0.0) -> ScoreSpec:
    """The spec of :func:`nldist.leverage`: the rows of A itself, plain or ridge leverage."""
    return ScoreSpec(get_kind("ridge-leverage" if ridge > 0 else "linear-leverage"), RawRows())


def leverage_dask(A: da.Array, ridge: float = 0.0, rtol: float | None = None) -> da.Array:
    """Per-row leverage (n,) of a tall dask A: sums to rank (or the effective dimension)."""
    A, _ = as_dask_xy(A)
    spec = raw_spec(ridge)
    norm = pass1(A, None, spec, ridge=ridge, rtol=rtol)
    return pass2(A, None, spec, norm) * norm.total


# --------------------------------------------------------------------------------------
# Resumable writes (nldist.store.scores): selected blocks only, small results back
# --------------------------------------------------------------------------------------


def store_chunks(
    arr: da.Array, blocks: Sequence[int], func: Callable, *args: Any, starts: Sequence[int]
) -> list:
    """Run ``func(block_values, i, starts[i], *args)`` for the chosen row blocks of a lazy
    1-D array, on the cluster; blocks not listed are not computed (their part of the graph,
    X reads included, is culled). Returns func's (small) results in order."""
    parts = arr.to_delayed().ravel()
    tasks = [dask.delayed(func, pure=False)(parts[i], i, starts[i], *args) for i in blocks]
    return _compute_blocks(tasks)


def map_tasks(func: Callable, arg_tuples: Sequence[tuple],
              where: Sequence[str] | None = None) -> list:
    """``[func(*a) for a in arg_tuples]`` as independent tasks on the cluster (small results).

    With ``where`` (one name per task, e.g. the file a table partition comes from), a task
    that fails with anything but an :class:`NldistError` — a damaged file failing inside its
    read, before ``func`` sees it — is reported as one line naming its ``where``."""
    tasks = [dask.delayed(func, pure=False)(*a) for a in arg_tuples]
    if where is None:
        return _compute_blocks(tasks)
    listener = chunk_listener() or (lambda done, total: None)
    client = current_client()
    if client is None:
        out = []
        for i, (t, w) in enumerate(zip(tasks, where, strict=True)):
            out.append(_named(lambda t=t: dask.compute(t)[0], w))
            listener(i + 1, len(tasks))
        return out
    from distributed import wait

    futs = client.compute(tasks)
    _follow(futs, listener)
    wait(futs)
    for f, w in zip(futs, where, strict=True):
        if f.status == "error":
            _named(f.result, w)
    return list(client.gather(futs))


def _named(get: Callable[[], Any], where: str) -> Any:
    """``get()``, with a failure other than an NldistError as one line naming ``where``."""
    try:
        return get()
    except (NldistError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in its reader, any type
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise NldistError(f"{where} cannot be read ({type(exc).__name__}{': ' + msg if msg else ''}"
                          "); upload it again whole or remove it from the source") from None


def store_whole(arr: da.Array, target: Any) -> None:
    """Compute a lazy array into a Zarr array in one locked pass (irregular chunks)."""
    da.store(arr, target, lock=True)


# --------------------------------------------------------------------------------------
# Full-data loss, gradient and Gauss-Newton matrix (distributed training oracle)
# --------------------------------------------------------------------------------------


def gn_pass(
    X: da.Array, y: da.Array, model: Model, theta: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> dict:
    """One distributed pass: full-data loss, gradient (p,) and Gauss-Newton matrix (p, p)."""
    parts = [
        dask.delayed(train.gn_block, pure=True)(model, theta, xb, yb, off, loss)
        for xb, yb, off in _blocks(X, y)
    ]
    parts = _persist_blocks(parts, part_bytes=8 * model.n_params ** 2)
    (out,) = dask.compute(tree_reduce(parts, train.combine_sum, split_every))
    return out


def losses_pass(
    X: da.Array, y: da.Array, model: Model, thetas: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> np.ndarray:
    """Full-data losses (m,) of m parameter vectors (m, p) in one distributed pass."""
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    parts = [
        dask.delayed(train.losses_block, pure=True)(model, thetas, xb, yb, loss)
        for xb, yb, _ in _blocks(X, y)
    ]
    parts = _persist_blocks(parts, part_bytes=8 * thetas.shape[0])
    (out,) = dask.compute(tree_reduce(parts, sum, split_every))
    return np.asarray(out, dtype=np.float64)


def grad_pass(
    X: da.Array, y: da.Array, model: Model, theta: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> dict:
    """One distributed pass: full-data loss and gradient (p,) — n p work per row, no p x p
    matrix per chunk (:func:`nldist.precond.grad_block`; the preconditioned fit's pass)."""
    parts = [
        dask.delayed(precond.grad_block, pure=True)(model, theta, xb, yb, off, loss)
        for xb, yb, off in _blocks(X, y)
    ]
    parts = _persist_blocks(parts, part_bytes=8 * model.n_params)
    (out,) = dask.compute(tree_reduce(parts, train.combine_sum, split_every))
    return out


def parallelism() -> int:
    """Chunk tasks that run at once: the threads of the client's workers, else the local
    scheduler's (1 when synchronous)."""
    c = current_client()
    if c is not None:
        workers = c.scheduler_info().get("workers", {}).values()
        return max(1, sum(int(w.get("nthreads") or 1) for w in workers))
    if get_scheduler() is dask.local.get_sync:
        return 1
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))


# --------------------------------------------------------------------------------------
# Sampling from a distributed probability vector, and gathering rows
# --------------------------------------------------------------------------------------


def _block_stats(p: np.ndarray) -> np.ndarray:
    p = np.asarray(p, dtype=np.float64)
    bad = p.size and (not np.all(np.isfinite(p)) or np.min(p) < 0)
    return np.array([np.sum(p), 1.0 if bad else 0.0])[None, :]


def sample_blocks(
    probs: da.Array, s: int, random_state: Any = 0, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Sample s row indices with replacement from a chunked probability vector (n,).

    The s uniforms come from ``random_state`` alone; per-block sums (small) route each one to
    its block on the driver, and each block resolves its own draws with
    :func:`nldist.scores.sampling.draw_in_block`. Only (s,) arrays reach the driver.

    Returns
    -------
    indices : ndarray (s,) int64
    weights : ndarray (s,) float64, 1 / (s * pi_i)
    """
    return sample_many(probs, [(s, random_state)], alpha)[0]


def sample_many(
    probs: da.Array, requests: Sequence[tuple[int, Any]], alpha: float = 0.0,
    masses: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Several independent samples [(s, random_state), ...] in one pass over probs.

    Each result equals ``sample_blocks(probs, s, random_state, alpha)``. With ``masses``
    (the chunk masses of pass 1, ``Normalizer.masses``, for probabilities that pass 2 wrote)
    the draws are routed by them instead of the chunks' sums: bit for bit the draws of
    the fused pass (:func:`sample_pass`) that wrote those probabilities.
    """
    if masses is not None:
        return _sample_by_masses(probs, requests, alpha, np.asarray(masses, dtype=np.float64))
    sizes = [sampling.check_sample_args(s, alpha) for s, _ in requests]
    sampling.check_sample_memory(sum(sizes))
    if probs.ndim != 1 or probs.shape[0] == 0:
        raise NldistError(f"probabilities must be a non-empty 1-D array, got shape {probs.shape}")
    if any(math.isnan(c) for c in probs.chunks[0]):
        probs = probs.compute_chunk_sizes()
    n = probs.shape[0]
    stats = probs.map_blocks(_block_stats, chunks=((1,) * probs.numblocks[0], (2,)),
                             new_axis=1, dtype=np.float64).compute()
    if stats[:, 1].any():
        raise NldistError("probabilities contain NaN, inf or negative values; recompute scores")
    total0 = float(stats[:, 0].sum())
    if total0 <= 0:
        raise NldistError("probabilities sum to zero; use kind 'uniform' or check the scores")
    p = sampling.mixture(probs / total0, alpha, n)
    sums = stats[:, 0] / total0
    if alpha:
        sums = (1 - alpha) * sums + alpha * np.asarray(probs.chunks[0], dtype=np.float64) / n
    return _draw_routed(p, sums, sizes, requests)


def _draw_routed(p: da.Array, sums: np.ndarray, sizes: Sequence[int],
                 requests: Sequence[tuple[int, Any]]) -> list[tuple[np.ndarray, np.ndarray]]:
    """The requests' draws from the (mixed) probabilities ``p`` whose blocks have masses
    ``sums``: uniforms routed on the driver, each touched block resolving its own."""
    total, u, blk, local = _route(sums, sizes, requests)
    offsets = np.concatenate([[0], np.cumsum(p.chunks[0])[:-1]]).astype(np.int64)
    pblocks = p.to_delayed().ravel()
    tasks, where = [], []
    for b in np.unique(blk):
        sel = np.flatnonzero(blk == b)
        tasks.append(dask.delayed(sampling.draw_in_block, pure=True)(pblocks[b], local[sel]))
        where.append((sel, offsets[b]))
    indices = np.empty(u.size, dtype=np.int64)
    pvals = np.empty(u.size, dtype=np.float64)
    for (sel, off), (idx, pv) in zip(where, dask.compute(*tasks), strict=True):
        indices[sel] = idx + off
        pvals[sel] = pv
    return [(indices[sl], 1.0 / (s * pvals[sl] / total)) for s, sl in _spans(sizes)]


def _sample_by_masses(probs: da.Array, requests: Sequence[tuple[int, Any]], alpha: float,
                      masses: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    sizes = [sampling.check_sample_args(s, alpha) for s, _ in requests]
    sampling.check_sample_memory(sum(sizes))
    n = int(probs.shape[0])
    if masses.shape != (probs.numblocks[0],):
        raise NldistError("chunk masses do not match the probabilities' chunks; recompute "
                          "the scores")
    sums = _mixed_masses(masses, probs.chunks[0], alpha, n)
    return _draw_routed(sampling.mixture(probs, alpha, n), sums, sizes, requests)


def _mixed_masses(masses: np.ndarray, rows: Sequence[int], alpha: float, n: int) -> np.ndarray:
    """Chunk masses of the defensive mixture (1 - alpha) p + alpha / n."""
    sums = np.asarray(masses, dtype=np.float64)
    if alpha:
        sums = (1 - alpha) * sums + alpha * np.asarray(rows, dtype=np.float64) / n
    if not np.all(np.isfinite(sums)) or sums.sum() <= 0:
        raise NldistError("the chunk masses of pass 1 are not finite or sum to zero; "
                          "check the scores' inputs")
    return sums


def _spans(sizes: Sequence[int]) -> list[tuple[int, slice]]:
    """(s, slice) of each request's draws in the concatenated draws."""
    ends = np.cumsum(sizes).tolist()
    return [(s, slice(e - s, e)) for s, e in zip(sizes, ends, strict=True)]


def _route(sums: np.ndarray, sizes: Sequence[int], requests: Sequence[tuple[int, Any]]
           ) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Place the requests' seeded uniforms into blocks of masses ``sums`` (n_blocks,).

    Returns
    -------
    total : float, sum of the masses
    u : ndarray (k,), every request's uniforms times total, concatenated
    blk : ndarray (k,), the block of each
    local : ndarray (k,), its target inside the block, in [0, sums[blk])
    """
    total = float(np.sum(sums))
    bounds = np.cumsum(sums)
    starts = np.concatenate([[0.0], bounds[:-1]])
    u = np.concatenate([as_rng(rs).random(s) * total
                        for s, (_, rs) in zip(sizes, requests, strict=True)])
    blk = np.minimum(np.searchsorted(bounds, u, side="right"), len(sums) - 1)
    while np.any(sums[blk] <= 0):  # rounding at a boundary into an all-zero block
        blk[sums[blk] <= 0] -= 1
    return total, u, blk, np.clip(u - starts[blk], 0.0, None)


def _call_sink(func: Callable, i: int, start: int, args: tuple, p: np.ndarray) -> Any:
    return func(p, i, start, *args)


def sample_pass(
    X: da.Array, y: da.Array | None, spec: ScoreSpec, norm: Normalizer,
    requests: Sequence[tuple[int, Any]], alpha: float = 0.0, *, store: Any = None,
    eval_rate: float = 0.0, eval_seed: int = 0, sink: tuple | None = None,
) -> dict:
    """Pass 2, sampling and gathering in one read of X (the fused pass).

    ``norm.masses`` (from ``pass1(..., masses=True)``) gives every row chunk's share of the
    probabilities before pass 2, so the requests' seeded uniforms are routed to chunks on
    the driver exactly as :func:`sample_many` routes them by the stored scores' chunk sums;
    each chunk task then computes its probabilities, draws its rows by inverse CDF and
    returns them with their x and y — same distribution as pass 2 followed by
    :func:`sample_many` and :func:`gather_rows`, same chunking invariance (up to rounding
    at a chunk boundary). Optional in the same pass: a Bernoulli evaluation sample (rows
    whose seeded hash uniform is below ``eval_rate``) and the scores output (``sink``).

    Parameters
    ----------
    requests : sequence of (s, random_state)
    alpha : float
        Defensive mixture weight.
    store : DualStore, optional
        The persisted dual blocks of pass 1.
    eval_rate, eval_seed : float, int
        Evaluation sample (none when 0).
    sink : (func, args, blocks), optional
        Run ``func(p_block, i, start, *args)`` on the worker for the chunks i in ``blocks``
        (the score store's writer, :func:`nldist.store.scores.write_chunk`).

    Returns
    -------
    dict with ``draws``: [(indices (s,), weights (s,), X rows (s, d), y rows (s,) or
    None)] per request; ``eval``: (indices (m,), X (m, d), y (m,) or None);
    ``stored``: the sink's results.
    """
    if norm.masses is None:
        raise NldistError("the fused sampling pass needs pass 1 with masses=True")
    sizes = [sampling.check_sample_args(s, alpha) for s, _ in requests]
    sampling.check_sample_memory(sum(sizes))
    rows = tuple(int(c) for c in X.chunks[0])
    n = int(X.shape[0])
    sums = _mixed_masses(norm.masses, rows, alpha, n)
    total, u, blk, local = _route(sums, sizes, requests)
    if spec.kind.uniform:
        parts_of = [[c] for c in rows]
        first = list(range(len(rows)))
    else:
        split, _ = split_for_dual(X, None, spec)
        owner = part_owner(rows, split.chunks[0])
        parts_of = [[] for _ in rows]
        for c, o in zip(split.chunks[0], owner, strict=True):
            parts_of[o].append(int(c))
        first = np.searchsorted(owner, np.arange(len(rows))).tolist()
    func, args, blocks = sink if sink is not None else (None, (), ())
    blocks = set(blocks)
    tasks = []
    for b, (xb, yb, off) in enumerate(_blocks(X, y)):
        sel = np.flatnonzero(blk == b)
        sk = functools.partial(_call_sink, func, b, off, tuple(args)) if b in blocks else None
        tasks.append(dask.delayed(block.sample_block, pure=False)(
            xb, yb, spec, norm, parts_of[b], local[sel], alpha=alpha, first_index=first[b],
            store=store if spec.persistable else None, eval_rate=eval_rate,
            eval_seed=eval_seed, offset=off, sink=sk))
    got = _compute_blocks(tasks)
    offsets = np.concatenate([[0], np.cumsum(rows)[:-1]]).astype(np.int64)
    d = int(X.shape[1])
    indices = np.empty(u.size, dtype=np.int64)
    pvals = np.empty(u.size, dtype=np.float64)
    Xs = np.empty((u.size, d), dtype=X.dtype)
    ys = None if y is None else np.empty((u.size, *y.shape[1:]), dtype=y.dtype)
    for b, g in enumerate(got):
        sel = np.flatnonzero(blk == b)
        indices[sel] = g["idx"] + offsets[b]
        pvals[sel] = g["pi"]
        Xs[sel] = g["X"]
        if ys is not None:
            ys[sel] = g["y"]
    draws = [(indices[sl], 1.0 / (s * pvals[sl] / total), Xs[sl],
              None if ys is None else ys[sl]) for s, sl in _spans(sizes)]
    ev_idx = np.concatenate([g["eval_idx"] + offsets[b] for b, g in enumerate(got)])
    ev_X = np.concatenate([g["eval_X"] for g in got]).reshape(-1, d)
    ev_y = None if y is None else np.concatenate([g["eval_y"] for g in got]).reshape(
        -1, *y.shape[1:])
    return {"draws": draws, "eval": (ev_idx, ev_X, ev_y),
            "stored": [g["stored"] for b, g in enumerate(got) if b in blocks]}


def one_read_pass(
    X: da.Array, y: da.Array | None, *, rows: Any, theta: np.ndarray, fac: Any,
    rates: np.ndarray, seed: int, eval_rate: float = 0.0, eval_seed: int = 0,
) -> dict:
    """The one-read sampler (:func:`nldist.scores.oneread.chunk` on every row chunk): each
    task reads its chunk once, scores its rows against the fixed factor, draws its Poisson
    rows for every candidate with a positive rate and its evaluation rows, and returns them
    with its sums. Only the drawn and evaluation rows and (4,)-sized sums reach the driver.

    Returns
    -------
    dict with ``totals`` (:func:`nldist.scores.oneread.totals`), ``idx`` (k,), ``q`` (4, k),
    ``X`` (k, d), ``y`` (k,) or None, and ``eval``: (indices (m,), X (m, d), y (m,) or None).
    """
    tasks = [dask.delayed(oneread.chunk, pure=True)(
        xb, yb, rows=rows, theta=theta, fac=fac, rates=np.asarray(rates, dtype=np.float64),
        seed=int(seed), offset=off, eval_rate=eval_rate, eval_seed=eval_seed)
        for xb, yb, off in _blocks(X, y)]
    got = _compute_blocks(tasks)
    d = int(X.shape[1])
    ytail = () if y is None else tuple(y.shape[1:])

    def cat(key: str, shape: tuple) -> np.ndarray:
        return np.concatenate([g[key] for g in got]).reshape(shape)

    return {
        "totals": oneread.totals(got),
        "idx": np.concatenate([g["idx"] for g in got]),
        "q": np.concatenate([g["q"] for g in got], axis=1),
        "r": np.concatenate([g["r"] for g in got]),
        "X": cat("X", (-1, d)), "y": None if y is None else cat("y", (-1, *ytail)),
        "eval": (np.concatenate([g["eval_idx"] for g in got]), cat("eval_X", (-1, d)),
                 None if y is None else cat("eval_y", (-1, *ytail))),
    }


def _row_scores_task(xs: list, offs: np.ndarray, y: Any, **kw: Any) -> np.ndarray:
    x = xs[0] if len(xs) == 1 else np.hstack(xs)
    return oneread.row_scores(x, _joined(y), offset=_first(offs), **kw)


def row_scores(X: da.Array, y: da.Array, *, rows: Any, theta: np.ndarray, fac: Any
               ) -> da.Array:
    """Lazy (n, 2) leverage and influence values of every row against ``fac``
    (:func:`nldist.scores.oneread.row_scores`), chunked like X's rows."""
    starts = np.concatenate([[0], np.cumsum(X.chunks[0])[:-1]]).astype(np.int64)
    offs = da.from_array(starts, chunks=1)
    yidx = "i" if y.ndim == 1 else "ik"
    return da.blockwise(_row_scores_task, "iv", X, "ij", offs, "i", y, yidx,
                        new_axes={"v": 2}, meta=np.empty((0, 2)), concatenate=False,
                        align_arrays=False, adjust_chunks={"i": X.chunks[0]},
                        rows=rows, theta=theta, fac=fac)


def _bernoulli_block(X: np.ndarray, y: np.ndarray | None, *, rate: float, seed: int,
                     offset: int) -> tuple:
    idx = sampling.bernoulli_index(offset, X.shape[0], rate, seed)
    return idx + offset, X[idx], None if y is None else y[idx]


def bernoulli_rows(X: da.Array, y: da.Array | None, rate: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows whose seeded hash uniform is below ``rate`` (the evaluation sample of
    :func:`sample_pass`, the same rows, in its own read of X): indices, X, y."""
    tasks = [dask.delayed(_bernoulli_block, pure=True)(xb, yb, rate=rate, seed=seed, offset=off)
             for xb, yb, off in _blocks(X, y)]
    got = _compute_blocks(tasks)
    d = int(X.shape[1])
    return (np.concatenate([g[0] for g in got]),
            np.concatenate([g[1] for g in got]).reshape(-1, d),
            None if y is None else np.concatenate([g[2] for g in got]).reshape(
                -1, *y.shape[1:]))


def read_blocks(X: da.Array, y: da.Array | None, ids: Sequence[int]
                ) -> tuple[np.ndarray, np.ndarray | None]:
    """Whole row chunks ``ids`` of X and y, stacked in that order (reads those chunks only)."""
    parts = [X.blocks[int(i)] for i in ids] + ([y.blocks[int(i)] for i in ids] if y is not None
                                               else [])
    got = dask.compute(*parts)
    k = len(ids)
    return np.concatenate(got[:k]), (np.concatenate(got[k:]) if y is not None else None)


def gather_rows(
    X: da.Array, y: da.Array | None, indices: np.ndarray
) -> tuple[np.ndarray, np.ndarray | None]:
    """Rows X[indices], y[indices] (in the order of indices) brought to the driver."""
    uniq, inv = np.unique(np.asarray(indices, dtype=np.int64), return_inverse=True)
    parts = [X[uniq]] + ([y[uniq]] if y is not None else [])
    got = dask.compute(*parts)
    Xs = np.asarray(got[0])[inv]
    ys = np.asarray(got[1])[inv] if y is not None else None
    return Xs, ys


# --------------------------------------------------------------------------------------
# Approximate scores: row sketch + JL (huge n), with an optional column sketch (large p)
# --------------------------------------------------------------------------------------


def rowsketch_scores(
    X: da.Array,
    y: da.Array | None,
    spec: ScoreSpec,
    sk: Any,
    split_every: int = SPLIT_EVERY,
) -> tuple[da.Array, dict]:
    """Approximate leverage scores (Drineas et al.): R from a CountSketch of the rows.

    Pass 1 (eager) sums each block's (r, q) CountSketch share in a tree and forms
    M = R^+ Omega (q, k) on the driver; pass 2 (lazy) gives ||a_i M||^2 per row, normalized
    to sum to 1 (the (n,) raw scores are reduced once for the total).

    Returns
    -------
    probs : dask array (n,) float64
    info : dict with ``rank`` (of the sketched R), ``rows``, ``jl``, ``cols``
    """
    yy = y if spec.needs_y else None
    parts = [
        dask.delayed(sketch.rowsketch_block, pure=True)(xb, yb, spec.rows, sk, off)
        for xb, yb, off in _blocks(X, yy)
    ]
    parts = _persist_blocks(parts, part_bytes=8 * sk.rows * spec.n_cols(X.shape[1]))
    (PiA,) = dask.compute(tree_reduce(parts, sum, split_every))
    M, rank = sketch.jl_factor(block_r(PiA), sk.jl, sk.seed)
    args = (X, "ij", yy, "i") if yy is not None else (X, "ij")
    raw = da.blockwise(_jl_block, "i", *args, dtype=np.float64, concatenate=True,
                       rows=spec.rows, M=M, has_y=yy is not None)
    info = {"rank": rank, "rows": sk.rows, "jl": sk.jl, "cols": sk.cols, "seed": sk.seed}
    return raw / raw.sum(), info


def _jl_block(X: np.ndarray, y: np.ndarray | None = None, *, rows: Any, M: np.ndarray,
              has_y: bool) -> np.ndarray:
    return sketch.jl_scores_block(X, y if has_y else None, rows, M)


# --------------------------------------------------------------------------------------
# X and y in worker memory (cache_x)
# --------------------------------------------------------------------------------------


def current_client() -> Any:
    """The distributed client dask computes on now, or None (a local scheduler is in
    force, e.g. ``dask.config.set(scheduler="synchronous")``, or there is no client)."""
    try:
        from distributed import get_client

        c = get_client()
    except (ImportError, ValueError):
        return None
    return c if getattr(get_scheduler(), "__self__", None) is c else None


def worker_memory_limits(c: Any) -> list[int]:
    """Memory limit in bytes of each worker of client ``c`` (0: none); [] without one."""
    if c is None:
        return []
    return [w.get("memory_limit") or 0 for w in c.scheduler_info().get("workers", {}).values()]


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


# --------------------------------------------------------------------------------------
# Report and diagnostics passes: histograms, top-k, per-row losses, label flips
# --------------------------------------------------------------------------------------


def score_histograms(arrays: dict[str, Any], bins: int = 50
                     ) -> tuple[dict[str, tuple[float, float, int]], np.ndarray, dict]:
    """Log-spaced histograms of n·score per kind in two distributed passes.

    Parameters
    ----------
    arrays : dict of kind -> (n,) Zarr or dask array of scores

    Returns
    -------
    stats : dict kind -> (smallest positive n·score, largest, number of zeros)
    edges : ndarray (bins + 1,), shared by every kind
    counts : dict kind -> ndarray (bins,)
    """
    scaled = {k: (a if isinstance(a, da.Array) else da.from_zarr(a)) * a.shape[0]
              for k, a in arrays.items()}
    stats = dask.compute({k: (da.where(v > 0, v, np.inf).min(), v.max(), (v <= 0).sum())
                          for k, v in scaled.items()})[0]
    lo = min(float(s[0]) for s in stats.values() if np.isfinite(s[0])) if any(
        np.isfinite(s[0]) for s in stats.values()) else 1e-3
    hi = max(float(s[1]) for s in stats.values())
    lo, hi = min(lo, 0.5), max(hi, 2.0)
    edges = np.logspace(np.log10(lo) - 0.02, np.log10(hi) + 0.02, bins + 1)
    counts = dask.compute({k: da.histogram(v, bins=edges)[0] for k, v in scaled.items()})[0]
    return stats, edges, counts


def top_bottom(scores: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Indices and values of the k largest (descending) and k smallest (ascending) scores.

    A distributed top-k (``dask.array.argtopk`` / ``topk``): each chunk keeps its own k
    candidates and a tree reduction merges them, so only O(k · chunks) values move.
    """
    if not isinstance(scores, da.Array):
        scores = da.from_zarr(scores) if hasattr(scores, "attrs") else \
            da.from_array(np.asarray(scores))
    n = scores.shape[0]
    k = int(min(k, n))
    if k <= 0:
        raise NldistError(f"top-k needs k >= 1 and a non-empty score array, got k={k}, n={n}")
    if k == n:  # dask's argtopk fails for k == n over several chunks; n is then tiny
        scores = scores.rechunk(-1)
    return tuple(np.asarray(a) for a in dask.compute(  # type: ignore[return-value]
        da.argtopk(scores, k), da.topk(scores, k), da.argtopk(scores, -k), da.topk(scores, -k)))


def take(arr: Any, indices: np.ndarray) -> np.ndarray:
    """``arr[indices]`` (in the order of indices) of a 1-D Zarr or dask array."""
    a = arr if isinstance(arr, da.Array) else da.from_zarr(arr)
    idx = np.asarray(indices, dtype=np.int64)
    order = np.argsort(idx)
    return np.asarray(a[idx[order]].compute())[np.argsort(order)]


def row_losses(X: da.Array, y: da.Array, model: Model, theta: np.ndarray,
               loss: str = "squared") -> da.Array:
    """Per-row loss r_i(θ)² (n,), lazy, chunked like X (:func:`nldist.train.row_losses_block`)."""
    return da.blockwise(_row_losses_task, "i", X, "ij", y, "i", dtype=np.float64,
                        concatenate=True, model=model, theta=theta, loss=loss)


def _row_losses_task(X: np.ndarray, y: np.ndarray, *, model: Model, theta: np.ndarray,
                     loss: str) -> np.ndarray:
    return train.row_losses_block(model, theta, X, y, loss)


def precision_at_k(scores: da.Array, flipped: da.Array, ks: list[int]
                   ) -> tuple[list[float], list[float]]:
    """Precision@k and recall@k of ranking rows by ``scores`` (highest first).

    One distributed top-k for the largest k; then only those k flags are read.
    """
    kmax = int(min(max(ks), scores.shape[0]))
    if kmax == scores.shape[0]:
        scores = scores.rechunk(-1)  # dask's argtopk fails for k == n over several chunks
    idx = np.asarray(da.argtopk(scores, kmax).compute())
    order = np.argsort(idx)
    hits = np.empty(kmax, dtype=np.float64)
    hits[order] = np.asarray(flipped[idx[order]].compute(), dtype=np.float64)
    csum = np.cumsum(hits)
    total = float(flipped.sum().compute())
    prec = [float(csum[min(k, kmax) - 1] / min(k, kmax)) for k in ks]
    rec = [float(csum[min(k, kmax) - 1] / total) if total else 0.0 for k in ks]
    return prec, rec


def write_flipped(X: da.Array, y: da.Array, fraction: float, seed: int, targets: tuple,
                  n_classes: int = 2) -> int:
    """Write X, y with a seeded ``fraction`` of labels flipped (:func:`nldist.scores.
    sampling.flip_block`: 1 − y, or another of ``n_classes`` classes) and the flags into
    the Zarr arrays ``targets`` = (X, y, flipped) in one pass; returns the number flipped."""
    both = da.map_blocks(sampling.flip_block, y, fraction, seed, dtype=np.float64,
                         chunks=(y.chunks[0], (2,)), new_axis=1, n_classes=int(n_classes))
    ax, ay, af = targets
    da.store([X, both[:, 0].astype(y.dtype), both[:, 1].astype("int8")], [ax, ay, af],
             lock=False)
    return int(da.from_zarr(af).sum().compute())


# --------------------------------------------------------------------------------------
# Distributed ingest: a table's partitions (CSV / Parquet, local or remote), two passes
# --------------------------------------------------------------------------------------


def table_partitions(source: str | list[str], fmt: str, blocksize: str = "64MB") -> list:
    """Delayed pandas partitions of a CSV or Parquet source (a file, a directory, a glob, an
    fsspec URL, or a list of files: what nldist's listing kept): Parquet by row groups /
    files, CSV by ``blocksize`` byte ranges. The workers read them; nothing is read here but
    metadata."""
    opts = storage_options(source if isinstance(source, str) else source[0])
    try:
        if fmt == "parquet":
            ddf = dd.read_parquet(source, storage_options=opts)
        else:
            ddf = dd.read_csv(source, sep="\t" if fmt == "tsv" else ",", blocksize=blocksize,
                              storage_options=opts, assume_missing=True, sample_rows=1000)
    except FileNotFoundError:
        raise NldistError(f"source {source!r} matches no files; check the path or glob") from None
    except (ValueError, OSError) as exc:
        raise NldistError(f"cannot read {source!r} as {fmt}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return list(ddf.to_delayed())


def table_xy(parts: Sequence[Any], encode: Callable, sizes: Sequence[int], d: int,
             dtype: Any, chunk_rows: int, count: str | None = None
             ) -> tuple[da.Array, da.Array, list]:
    """Lazy X (n, d), y (n,) of a table: every partition encoded (``encode(df) -> (X, y)``,
    one task each; ``sizes``: its rows after encoding, from the statistics pass) and the
    rows re-blocked into a grid of ``chunk_rows`` (a chunk reads the one or two partitions
    it spans). Also the delayed encodings, one per partition.

    Reads nothing here; every computation that uses X reads the table again (no copy).
    ``count``: each partition read is counted under that token (:func:`store_reads`).
    """
    if count:
        encode = counting.counted(encode, count)
    enc = [dask.delayed(encode, pure=True)(p) for p in parts]
    xs = [da.from_delayed(dask.delayed(lambda e: e[0], pure=True)(e), shape=(int(k), d),
                          dtype=dtype) for e, k in zip(enc, sizes, strict=True)]
    ys = [da.from_delayed(dask.delayed(lambda e: e[1], pure=True)(e), shape=(int(k),),
                          dtype=dtype) for e, k in zip(enc, sizes, strict=True)]
    X = da.concatenate(xs).rechunk((chunk_rows, d))
    y = da.concatenate(ys).rechunk((chunk_rows,))
    return X, y, enc


def write_table(parts: Sequence[Any], encode: Callable, sizes: Sequence[int], d: int,
                dtype: Any, path: str, chunk_rows: int, picks: dict[int, np.ndarray],
                key: str, resume: bool = False
                ) -> tuple[list[tuple[int, str, np.ndarray, np.ndarray]], int]:
    """Encode every partition (``encode(df) -> (X, y)``), re-block the rows into the store's
    chunk grid of ``chunk_rows`` (:func:`table_xy`) and write each chunk from one task (no
    chunk written by two), with its completion record, in one pass; each task also brings
    back its chunk's rows ``picks[chunk]`` (local indices: the reservoir).

    With ``resume`` the chunks a killed ingest finished (record of this ``key``, stored
    values still matching its SHA-256: :func:`nldist.store.dataset.verify_xy_chunk`, one
    read of the stored chunk each) are kept, and only the others are written: the
    partitions that feed only kept chunks are not read.

    Returns
    -------
    ([(chunk, SHA-256, X picks, y picks)] in chunk order, number of chunks kept)
    """
    X, y, _ = table_xy(parts, encode, sizes, d, dtype, chunk_rows)
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)
    none = np.empty(0, dtype=np.int64)
    got: dict[int, tuple] = {}
    if resume:
        kept = map_tasks(verify_xy_chunk, [(path, i, int(bounds[i]), int(bounds[i + 1]), key,
                                            picks.get(i, none)) for i in range(len(bounds) - 1)])
        got = {r[0]: r for r in kept if r is not None}
    n_kept = len(got)
    writes = [dask.delayed(write_xy_chunk, pure=False)(xb, yb, i, int(bounds[i]), path, key,
                                                       picks.get(i, none))
              for i, (xb, yb) in enumerate(zip(*_delayed_xy(X, y),
                                               strict=True)) if i not in got]
    for r in _compute_blocks(writes):
        got[r[0]] = r
    return [got[i] for i in range(len(bounds) - 1)], n_kept
