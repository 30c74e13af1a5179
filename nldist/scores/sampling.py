"""Sampling kernels (pure NumPy): i.i.d. draws with replacement by inverse CDF.

Draws are defined by s uniforms that depend on the seed alone; each uniform is mapped to a
row through the cumulative probabilities. The same mapping runs on one array or block by
block (:func:`nldist.graph.draws.sample_blocks`), so the sample does not depend on the chunking
(up to floating-point rounding of partial sums at a block boundary).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nldist._checks import as_rng
from nldist.errors import NldistError


def check_sample_args(s: Any, alpha: float) -> int:
    """Validate the sample size and the defensive-mixture weight."""
    if isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1:
        raise NldistError(f"sample size s must be a positive integer, got {s!r}")
    if not 0.0 <= float(alpha) <= 1.0:
        raise NldistError(f"alpha (defensive mixture weight) must be in [0, 1], got {alpha!r}")
    return int(s)


def check_sample_memory(draws: int) -> None:
    """Refuse a sampling call whose ``draws`` (all its samples together) cannot fit in the
    driver's memory, with the size it would need."""
    need = int(draws) * SAMPLE_BYTES_PER_DRAW
    avail = _available_memory()
    if avail is not None and need > avail // 2:
        raise NldistError(f"a sample of s = {int(draws):,} draws needs about "
                          f"{need / 2**30:,.1f} GiB on the driver but {avail / 2**30:,.1f} GiB "
                          "are available; use a smaller s")


#: driver bytes per draw while sampling: uniforms, block ids, indices, probabilities,
#: weights and the sort of the draws (float64 / int64 each)
SAMPLE_BYTES_PER_DRAW = 48


def _available_memory() -> int | None:
    """Bytes of memory available on this machine (None when it cannot be read)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # noqa: BLE001 - no psutil or no /proc: do not refuse
        return None


def check_probs(p: np.ndarray) -> float:
    """Validate a probability block; return its sum."""
    if p.ndim != 1:
        raise NldistError(f"probabilities must be 1-D (n,), got shape {p.shape}")
    if p.size == 0:
        raise NldistError("probabilities are empty; the data have no rows")
    if not np.all(np.isfinite(p)):
        raise NldistError("probabilities contain NaN or inf; recompute the scores")
    if np.any(p < 0):
        raise NldistError("probabilities contain negative values; scores must be >= 0")
    total = float(np.sum(p, dtype=np.float64))
    if total <= 0:
        raise NldistError("probabilities sum to zero; use kind 'uniform' or check the scores")
    return total


def draw_in_block(p: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF draws inside one block.

    Parameters
    ----------
    p : ndarray (n_b,)
        Nonnegative (unnormalized) probabilities of the block's rows.
    u : ndarray (k,)
        Targets in [0, sum(p)).

    Returns
    -------
    idx : ndarray (k,) int64, local row indices with p[idx] > 0
    p_idx : ndarray (k,) float64, p[idx]
    """
    p = np.asarray(p, dtype=np.float64)
    c = np.cumsum(p)
    idx = np.minimum(np.searchsorted(c, u, side="right"), len(p) - 1)
    zero = p[idx] <= 0  # rounding at the very end can land on a zero-probability row
    if zero.any():
        pos = np.flatnonzero(p > 0)
        idx[zero] = pos[np.clip(np.searchsorted(pos, idx[zero]) - 1, 0, len(pos) - 1)]
    return idx.astype(np.int64), p[idx]


def mixture(p: Any, alpha: float, n: int) -> Any:
    """Defensive mixture (1 - alpha) p / sum(p) + alpha / n (works on ndarray and dask)."""
    if alpha == 0:
        return p
    return (1.0 - alpha) * p + alpha / n


def sample_array(
    probs: np.ndarray, s: int, random_state: Any = 0, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Sample s row indices with replacement from an in-memory probability vector.

    Returns
    -------
    indices : ndarray (s,) int64
    weights : ndarray (s,) float64, 1 / (s * pi_i)
    """
    s = check_sample_args(s, alpha)
    check_sample_memory(s)
    p = np.asarray(probs, dtype=np.float64)
    total = check_probs(p)
    p = mixture(p / total, alpha, p.size)
    u = as_rng(random_state).random(s)
    idx, pv = draw_in_block(p, u * float(np.sum(p)))
    return idx, 1.0 / (s * pv / float(np.sum(p)))


# --------------------------------------------------------------------------------------
# Seeded per-row uniforms (label-noise diagnostics)
# --------------------------------------------------------------------------------------

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), \
    np.uint64(0x9E3779B97F4A7C15)


def hash_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """Uniforms in [0, 1) from (seed, row index) by SplitMix64: chunking-invariant.

    Parameters
    ----------
    index : ndarray of int
        Global row indices.
    seed : int
        Non-negative seed.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64(seed) * _GOLD + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def bernoulli_index(offset: int, n: int, rate: float, seed: int) -> np.ndarray:
    """Local rows (k,) of the block of global rows ``offset .. offset + n - 1`` whose seeded
    hash uniform is below ``rate``: a Bernoulli(rate) sample of rows that does not depend on
    the chunking (the evaluation sample)."""
    if rate <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    h = hash_uniform(np.arange(offset, offset + n, dtype=np.int64), seed)
    return np.flatnonzero(h < rate)


def flip_block(y: np.ndarray, fraction: float, seed: int, block_info: Any = None,
               n_classes: int = 2) -> np.ndarray:
    """Labels of one block with a seeded ``fraction`` flipped, and the flags: (n_b, 2)
    [noisy y, flipped]; chunking-invariant (:func:`hash_uniform` of the row index).

    Binary (y in {0, 1}): a flip is 1 − y. C classes (y in 0..C−1, ``n_classes`` = C > 2):
    a flipped row gets one of the C − 1 other classes, uniformly (a second seeded hash of
    the row index)."""
    start = block_info[0]["array-location"][0][0] if block_info else 0
    idx = np.arange(start, start + y.shape[0])
    flip = hash_uniform(idx, seed) < fraction
    yy = np.asarray(y, dtype=np.float64)
    if n_classes > 2:
        bad = ~np.isin(yy, np.arange(n_classes, dtype=np.float64))
        if bad.any():
            raise NldistError(f"label diagnostics of a {n_classes}-class model need y in "
                              f"0..{n_classes - 1}; row {start + int(np.flatnonzero(bad)[0])} "
                              f"has y = {yy[bad][0]}; set dataset.classes")
        shift = 1 + np.minimum((hash_uniform(idx, seed + 0x51F7) * (n_classes - 1)).astype(
            np.int64), n_classes - 2)
        other = (yy.astype(np.int64) + shift) % n_classes
        return np.stack([np.where(flip, other.astype(np.float64), yy),
                         flip.astype(np.float64)], axis=1)
    bad = ~np.isin(yy, (0.0, 1.0))
    if bad.any():
        raise NldistError(f"label diagnostics need a binary target with y in {{0, 1}}; row "
                          f"{start + int(np.flatnonzero(bad)[0])} has y = {yy[bad][0]}; set "
                          "dataset.classes: [A, B]")
    return np.stack([np.where(flip, 1.0 - yy, yy), flip.astype(np.float64)], axis=1)
