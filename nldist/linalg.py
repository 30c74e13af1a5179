"""Pure NumPy linear-algebra kernels: block R, combined R, per-row leverage (no Dask).

These follow the small kernels of ``dask/array/linalg.py``: arrays in, arrays out. The
graph module (:mod:`nldist.graph`) maps them over row blocks and reduces the R factors
in a tree. Q is never formed and R is never inverted explicitly: leverage rows come from
a triangular solve with R (full rank) or from the SVD of the small R (rank-deficient).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg as sla

__all__ = [
    "RFactor",
    "block_r",
    "combine_r",
    "finalize_r",
    "row_leverage",
    "row_sqnorms",
]


def block_r(A: np.ndarray) -> np.ndarray:
    """R factor of a QR of one row block, padded to square.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
        A row block (any n_b >= 0, including n_b < q).

    Returns
    -------
    R : ndarray, shape (q, q), float64
        Upper triangular with ``A.T @ A == R.T @ R`` (to rounding).
    """
    A = np.asarray(A, dtype=np.float64)
    q = A.shape[1]
    R = np.zeros((q, q), dtype=np.float64)
    if A.shape[0] == 0 or q == 0:
        return R
    r = sla.qr(A, mode="r", check_finite=False, overwrite_a=False)[0]
    k = min(r.shape[0], q)
    R[:k] = r[:k]
    return R


def combine_r(Rs: list[np.ndarray]) -> np.ndarray:
    """Combine stacked R factors into one: R of QR([R_1; R_2; ...]).

    Parameters
    ----------
    Rs : list of ndarray, each (q, q)

    Returns
    -------
    R : ndarray, shape (q, q)
    """
    if len(Rs) == 1:
        return Rs[0]
    return block_r(np.vstack(Rs))


def row_sqnorms(A: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each row: (n_b, q) -> (n_b,) float64."""
    A = np.asarray(A, dtype=np.float64)
    return np.einsum("ij,ij->i", A, A)


@dataclass(frozen=True)
class RFactor:
    """The global R of a tall matrix A (n, q), ready for per-row leverage.

    Attributes
    ----------
    R : ndarray (q, q)
        R of A (unridged).
    svals : ndarray (q,)
        Singular values of R (= those of A).
    rank : int
        Numerical rank: number of singular values > rtol * max(svals).
    ridge : float
        lambda >= 0. With lambda > 0, leverage is f^T (A^T A + lambda I)^-1 f.
    solve_r : ndarray (q, q) or None
        Upper-triangular factor to solve with (R, or R of [R; sqrt(lambda) I]); None when
        the rank-deficient SVD path is used.
    basis : ndarray (q, r) or None
        V_r / s_r from the SVD of R, used when A is rank-deficient and ridge == 0.
    total : float
        Sum of all leverages: rank, or the effective dimension sum s^2 / (s^2 + lambda).
    """

    R: np.ndarray
    svals: np.ndarray
    rank: int
    ridge: float
    solve_r: np.ndarray | None
    basis: np.ndarray | None
    total: float


def finalize_r(
    R: np.ndarray, n_rows: int, ridge: float = 0.0, rtol: float | None = None
) -> RFactor:
    """Rank-reveal the global R and choose how per-row leverage is computed.

    Parameters
    ----------
    R : ndarray, shape (q, q)
        R factor of the full tall matrix A (n_rows, q).
    n_rows : int
        n, used in the default rank tolerance ``max(n, q) * eps`` (as numpy's matrix_rank).
    ridge : float, default 0
        Ridge lambda >= 0.
    rtol : float, optional
        Relative singular-value threshold for the rank.

    Returns
    -------
    RFactor
    """
    q = R.shape[0]
    svals = sla.svdvals(R, check_finite=False) if q else np.zeros(0)
    smax = float(svals[0]) if q else 0.0
    if rtol is None:
        rtol = max(int(n_rows), q, 1) * np.finfo(np.float64).eps
    rank = int(np.sum(svals > rtol * smax)) if smax > 0 else 0
    if ridge > 0:
        Rl = block_r(np.vstack([R, np.sqrt(ridge) * np.eye(q)]))
        total = float(np.sum(svals**2 / (svals**2 + ridge)))
        return RFactor(R, svals, rank, float(ridge), Rl, None, total)
    if rank == q:
        return RFactor(R, svals, rank, 0.0, R, None, float(rank))
    _, s, vt = sla.svd(R, check_finite=False)
    basis = vt[:rank].T / s[:rank]
    return RFactor(R, svals, rank, 0.0, None, basis, float(rank))


def row_leverage(A: np.ndarray, fac: RFactor) -> np.ndarray:
    """Per-row leverage of a row block given the global factor.

    ``l_i = ||R^-T a_i||^2`` (triangular solve) or ``||a_i V_r / s_r||^2`` when rank-deficient;
    with ridge, ``a_i^T (A^T A + lambda I)^-1 a_i``.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
    fac : RFactor

    Returns
    -------
    ndarray, shape (n_b,), float64
    """
    A = np.asarray(A, dtype=np.float64)
    if A.shape[0] == 0:
        return np.zeros(0)
    if fac.rank == 0 and fac.ridge == 0:
        return np.zeros(A.shape[0])
    if fac.solve_r is not None:
        Z = sla.solve_triangular(fac.solve_r, A.T, trans="T", lower=False, check_finite=False)
        return np.einsum("ij,ij->j", Z, Z)
    U = A @ fac.basis
    return np.einsum("ij,ij->i", U, U)
