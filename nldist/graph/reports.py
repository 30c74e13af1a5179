"""The passes of reports and diagnostics: histograms, top-k rows, per-row losses, label flips
and label summaries.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
from typing import Any

import dask
import dask.array as da
import numpy as np

from nldist import objectives
from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.scores import sampling

log = logging.getLogger("nldist")


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
    """Per-row loss r_i(θ)² (n,), lazy, chunked like X
    (:func:`nldist.objectives.row_losses_block`)."""
    return da.blockwise(_row_losses_task, "i", X, "ij", y, "i", dtype=np.float64,
                        concatenate=True, model=model, theta=theta, loss=loss)

def _row_losses_task(X: np.ndarray, y: np.ndarray, *, model: Model, theta: np.ndarray,
                     loss: str) -> np.ndarray:
    return objectives.row_losses_block(model, theta, X, y, loss)

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
