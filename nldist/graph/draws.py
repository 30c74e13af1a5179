"""Sampling from a distributed probability vector (routed draws, the fused pass 2 + sample +
gather), Bernoulli evaluation rows, and gathering rows.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np

from nldist._checks import as_rng
from nldist.errors import NldistError
from nldist.graph.inputs import compute_blocks, row_blocks
from nldist.graph.passes import part_owner, split_for_dual
from nldist.scores import block, sampling
from nldist.scores.block import ScoreSpec
from nldist.scores.reductions import Normalizer

log = logging.getLogger("nldist")


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
    if not spec.reduction.matrix:  # uniform: no matrix, no split
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
    for b, (xb, yb, off) in enumerate(row_blocks(X, y)):
        sel = np.flatnonzero(blk == b)
        sk = functools.partial(_call_sink, func, b, off, tuple(args)) if b in blocks else None
        tasks.append(dask.delayed(block.sample_block, pure=False)(
            xb, yb, spec, norm, parts_of[b], local[sel], alpha=alpha, first_index=first[b],
            store=store if spec.persistable else None, eval_rate=eval_rate,
            eval_seed=eval_seed, offset=off, sink=sk))
    got = compute_blocks(tasks)
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

def _bernoulli_block(X: np.ndarray, y: np.ndarray | None, *, rate: float, seed: int,
                     offset: int) -> tuple:
    idx = sampling.bernoulli_index(offset, X.shape[0], rate, seed)
    return idx + offset, X[idx], None if y is None else y[idx]

def bernoulli_rows(X: da.Array, y: da.Array | None, rate: float, seed: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Rows whose seeded hash uniform is below ``rate`` (the evaluation sample of
    :func:`sample_pass`, the same rows, in its own read of X): indices, X, y."""
    tasks = [dask.delayed(_bernoulli_block, pure=True)(xb, yb, rate=rate, seed=seed, offset=off)
             for xb, yb, off in row_blocks(X, y)]
    got = compute_blocks(tasks)
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
