"""Random sketches for approximate scores (pure NumPy/SciPy kernels, no Dask).

Two independent approximations, both seeded and independent of the chunking:

* **Column sketch (large p)** — each dual row f_i in R^q is projected to k dims,
  g_i = f_i S, with S a sparse sign matrix (q x k, ``nnz`` nonzeros of +-1/sqrt(nnz) per
  row, stored as a scipy.sparse matrix: O(q nnz) memory, never a dense q x k). The scores
  are then the exact leverage of G = F S (n x k): the leverage of a random k-dimensional
  subspace of the dual's row space. When rank(F) <= k, range(G) = range(F) almost surely
  and the scores are exact; for wide or full-rank large-p duals they are the sketched
  ("NTK-style") leverages whose error vs k is reported in bench/RESULTS.md.
* **Row sketch + JL (huge n, Drineas et al. 2012)** — pass 1 forms Pi A (r x q), a
  CountSketch of the rows in which row i goes to bucket h(i) with sign s(i) given by a hash
  of (seed, global row index i); R comes from a QR of Pi A. Pass 2 returns
  ||a_i R^-1 Omega||^2 with a Gaussian JL matrix Omega (q x k) / sqrt(k), computed as
  A (R^-1 Omega) by one triangular solve with k right-hand sides (never R^-1). Costs
  O(nq) + O(nqk) instead of O(nq^2); (1 +- eps) relative error per row with
  r = O(q^2 / eps^2) and k = O(log n / eps^2).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scipy import linalg as sla
from scipy import sparse

from nldist._budget import SKETCH_BATCH_BYTES
from nldist._checks import check_finite_block
from nldist.errors import NldistError

if TYPE_CHECKING:  # annotations only: workers never import pydantic for the kernels
    from nldist.options import SketchOptions

_MASK = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Vectorized splitmix64 finalizer: a high-quality 64-bit hash of uint64 input."""
    with np.errstate(over="ignore"):
        z = (x + np.uint64(0x9E3779B97F4A7C15)) & _MASK
        z = ((z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)) & _MASK
        z = ((z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)) & _MASK
        return z ^ (z >> np.uint64(31))


def hash_rows(rows: np.ndarray, seed: int, buckets: int) -> tuple[np.ndarray, np.ndarray]:
    """Bucket in [0, buckets) and sign +-1 for each global row index, from (seed, row).

    Parameters
    ----------
    rows : ndarray (m,) of int
        Global row indices (so the sketch does not depend on the chunking).
    seed : int
    buckets : int

    Returns
    -------
    bucket : ndarray (m,) int64
    sign : ndarray (m,) float64
    """
    key = _splitmix64(np.uint64(seed) ^ np.uint64(0xA5A5A5A5A5A5A5A5))
    h = _splitmix64(np.asarray(rows, dtype=np.uint64) ^ key)
    bucket = (h % np.uint64(buckets)).astype(np.int64)
    sign = np.where((h >> np.uint64(63)) == 0, 1.0, -1.0)
    return bucket, sign


def countsketch_rows(A: np.ndarray, offset: int, seed: int, r: int) -> np.ndarray:
    """CountSketch of a row block: (r, q) contribution Pi_b A_b of rows offset.. to Pi A.

    Summing the results of all blocks gives Pi A exactly (the sketch is linear and each
    row's bucket depends only on its global index).
    """
    A = np.asarray(A, dtype=np.float64)
    n_b, q = A.shape
    if n_b == 0:
        return np.zeros((r, q))
    bucket, sign = hash_rows(np.arange(offset, offset + n_b), seed, r)
    P = sparse.csr_matrix((sign, (bucket, np.arange(n_b))), shape=(r, n_b))
    return np.asarray(P @ A)


def sparse_sign(q: int, k: int, seed: int, nnz: int = 4) -> sparse.csr_matrix:
    """Sparse sign embedding S (q, k): each row has ``nnz`` entries +-1/sqrt(nnz).

    Seeded by ``seed`` alone; built from q * nnz hashed (bucket, sign) pairs.
    """
    if k < 1 or q < 1:
        raise NldistError(f"sketch sizes must be >= 1, got q={q}, k={k}")
    nnz = int(min(nnz, k))
    rows = np.repeat(np.arange(q), nnz)
    base = np.arange(q * nnz, dtype=np.uint64)
    bucket, sign = hash_rows(base, seed + 0x51, k)
    # distinct buckets per row: shift collisions deterministically
    bucket = bucket.reshape(q, nnz)
    for j in range(1, nnz):
        clash = (bucket[:, j, None] == bucket[:, :j]).any(axis=1)
        while clash.any():
            bucket[clash, j] = (bucket[clash, j] + 1) % k
            clash = (bucket[:, j, None] == bucket[:, :j]).any(axis=1)
    vals = sign / np.sqrt(nnz)
    return sparse.csr_matrix((vals, (rows, bucket.ravel())), shape=(q, k))


def project_cols(A: np.ndarray, S: sparse.csr_matrix) -> np.ndarray:
    """A (n_b, q) @ S (q, k) -> (n_b, k) float64 without densifying S."""
    return np.asarray((S.T @ np.asarray(A, dtype=np.float64).T).T)


def gaussian_jl(q: int, k: int, seed: int) -> np.ndarray:
    """Dense Gaussian JL matrix (q, k) / sqrt(k), seeded (q is small here: the R side)."""
    rng = np.random.default_rng([int(seed), 0x4A4C])
    return rng.standard_normal((q, k)) / np.sqrt(k)


def jl_factor(
    R: np.ndarray, k: int, seed: int, rtol: float | None = None
) -> tuple[np.ndarray, int]:
    """M (q, k) = R^+ Omega for the row-sketch scores ||a_i M||^2, and the rank of R.

    Full rank: one triangular solve R M = Omega. Rank-deficient: M = V_r S_r^-1 (U_r^T Omega)
    from the SVD of the small R.
    """
    q = R.shape[0]
    s = sla.svdvals(R, check_finite=False)
    if s.size == 0 or s[0] <= 0:
        raise NldistError("the sketched matrix is all zeros; scores are undefined")
    tol = (rtol if rtol is not None else q * np.finfo(float).eps * 10) * s[0]
    rank = int(np.sum(s > tol))
    Omega = gaussian_jl(q, k, seed)
    if rank == q:
        return sla.solve_triangular(R, Omega, lower=False, check_finite=False), rank
    U, s, Vt = sla.svd(R, check_finite=False)
    return Vt[:rank].T @ ((U[:, :rank].T @ Omega) / s[:rank, None]), rank


# --------------------------------------------------------------------------------------
# Block kernels of the sketched scores (used by nldist.graph and the in-memory API)
# --------------------------------------------------------------------------------------


def sketched_matrix(rows: Any, sk: SketchOptions, X: np.ndarray, y: np.ndarray | None,
                    offset: int = 0) -> np.ndarray:
    """The block matrix of ``rows`` (:mod:`nldist.scores.rows`) with its columns projected
    to ``sk.cols`` dims.

    Rows are processed in batches of at most :data:`nldist._budget.SKETCH_BATCH_BYTES` of
    the unprojected matrix, so a dual with p ~ 1e5 columns never exists whole for the block.

    Returns
    -------
    ndarray (n_b, k) float64
    """
    X = np.asarray(X)
    n_b = X.shape[0]
    probe = rows.matrix(X[:1], None if y is None else np.asarray(y)[:1], offset)
    q = probe.shape[1]
    g = int(rows.group)
    S = sparse_sign(q, sk.cols, sk.seed, sk.nnz)
    step = max(1, SKETCH_BATCH_BYTES // (8 * q * g))
    out = np.empty((n_b * g, sk.cols))
    for i in range(0, n_b, step):
        yb = None if y is None else np.asarray(y)[i : i + step]
        out[i * g : (i + step) * g] = project_cols(rows.matrix(X[i : i + step], yb, offset + i),
                                                   S)
    return out


def rowsketch_block(X: np.ndarray, y: np.ndarray | None, rows: Any, sk: SketchOptions, offset: int
                    ) -> np.ndarray:
    """Pass 1 of the row-sketch scores on one block: its (r, q) share of Pi A, for the
    matrix of ``rows`` (column-sketched already when ``sk.cols`` is set)."""
    yy = y if rows.needs_y else None
    check_finite_block(np.asarray(X), yy, offset)
    return countsketch_rows(rows.matrix(np.asarray(X), yy), offset, sk.seed, sk.rows)


def jl_scores_block(X: np.ndarray, y: np.ndarray | None, rows: Any, M: np.ndarray
                    ) -> np.ndarray:
    """Pass 2 of the row-sketch scores: ||a_i M||^2 for the block's rows, (n_b,)."""
    A = rows.matrix(np.asarray(X), y if rows.needs_y else None)
    G = A @ M
    return np.einsum("ij,ij->i", G, G)
