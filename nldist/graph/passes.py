"""The score passes: pass 1 (block R's reduced in a tree, eager), pass 2 (per-row scores,
lazy), the one-read sampler's pass and its exact row values, and the row-sketch
approximation.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import dask
import dask.array as da
import numpy as np

from nldist._budget import DUAL_BLOCK_BYTES
from nldist.graph.inputs import (
    SPLIT_EVERY,
    as_dask_xy,
    compute_blocks,
    persist_blocks,
    row_blocks,
    tree_reduce,
)
from nldist.scores import block, oneread, sketch
from nldist.scores.block import ScoreSpec
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import block_r
from nldist.scores.reductions import Normalizer
from nldist.scores.rows import RawRows

log = logging.getLogger("nldist")


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
    if not spec.reduction.matrix:  # uniform: 1/n needs n only, no pass over X
        norm = block.finalize_pass1(spec, {"n": int(X.shape[0])})
        if masses:
            norm = replace(norm, masses=np.asarray(rows, dtype=np.float64) / norm.total)
        return norm
    X, yy = split_for_dual(X, y if spec.needs_y else None, spec)
    if store is not None and not spec.persistable:
        store = None
    parts = [
        dask.delayed(block.pass1_block, pure=True)(xb, yb, spec, off, store, i)
        for i, (xb, yb, off) in enumerate(row_blocks(X, yy))
    ]
    # with masses keep the per-block results (small: R_b) where they were made
    q = spec.n_cols(X.shape[1])
    parts = persist_blocks(parts, always=masses, part_bytes=8 * q * q)
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
    if not spec.reduction.matrix:  # uniform: chunked like X's rows, without reading X
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

def one_read_pass(
    X: da.Array, y: da.Array | None, *, rows: Any, theta: np.ndarray, fac: Any,
    rates: np.ndarray, seed: int, eval_rate: float = 0.0, eval_seed: int = 0,
    heavy: np.ndarray | None = None,
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
        seed=int(seed), offset=off, eval_rate=eval_rate, eval_seed=eval_seed, heavy=heavy)
        for xb, yb, off in row_blocks(X, y)]
    got = compute_blocks(tasks)
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
        for xb, yb, off in row_blocks(X, yy)
    ]
    parts = persist_blocks(parts, part_bytes=8 * sk.rows * spec.n_cols(X.shape[1]))
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
