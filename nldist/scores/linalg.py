"""Pure NumPy linear-algebra kernels: block R, combined R, per-row leverage (no Dask).

These follow the small kernels of ``dask/array/linalg.py``: arrays in, arrays out. The
graph module (:mod:`nldist.graph`) maps them over row blocks and reduces the R factors
in a tree. Q is never formed. Per-row leverage ``‖R⁻ᵀ a_i‖²`` comes from one of three
products, chosen once per job from the global R by :func:`finalize_r`:

* full rank and ``cond(R) <= INVERSE_MAX_COND`` (1e4): one GEMM per row slice with the
  explicit inverse ``R⁻¹`` (LAPACK ``trtri``) — its error is ~ 2·cond·eps <= 5e-12
  relative, the order of the triangular solve's own, and it is measured ~2x faster than
  TRSM on tall slices (bench/RESULTS.md);
* full rank and ``cond(R) > 1e4``: a triangular solve with R (BLAS TRSM) per slice;
* rank-deficient: a GEMM with ``V_r / s_r`` from the SVD of the small R (with ridge λ: the
  R of ``[R; √λ I]``, by the same rule).

``pinv(FᵀF)`` is never formed.

How a block's R is computed (``method="auto"``, the default)
-------------------------------------------------------------
Every method returns an upper-triangular ``R`` (q, q) with ``RᵀR = AᵀA`` to the accuracy
stated; the global R is the R of the stacked block R's (an R-only TSQR tree), and
:func:`finalize_r` rank-reveals it with an SVD, so the choice below never affects the rank
logic, only speed and accuracy. With ``κ`` the 2-norm condition number of the block after
scaling its columns to unit norm (leverage is invariant to column scaling):

=============  =================================================  ========================
method         work on the (n_b, q) block                          leverage accuracy
=============  =================================================  ========================
``cholqr``     Gram ``AᵀA`` (one GEMM), Cholesky                   ~ eps·κ²  (κ <= 1e3)
``cholqr2``    + ``Q1 = A R1⁻¹`` (TRSM), Gram of Q1, Cholesky      ~ eps·κ   (κ <= 1e6)
``scholqr3``   shifted Cholesky, then CholeskyQR2 of ``A R1⁻¹``     ~ eps·κ   (κ < ~1/eps)
``householder`` LAPACK ``geqrf`` on cache-sized row slices, TSQR   ~ eps·κ   (any A)
=============  =================================================  ========================

``auto`` forms the Gram (needed anyway), takes the Cholesky factor of the
column-equilibrated Gram and a LAPACK condition estimate of it (``trcon``, O(q²)), and
picks the cheapest row whose bound holds: ``cholqr`` when κ̂ <= :data:`KAPPA_CHOLQR`,
``cholqr2`` when κ̂ <= :data:`KAPPA_CHOLQR2`, else ``scholqr3`` (Fukaya et al., SIAM J.
Sci. Comput. 2020), checked afterwards, and Householder when the block is numerically
rank-deficient (Cholesky fails, or the shifted result is not well conditioned). Exactly zero
columns (dead units, unused one-hot levels) are deflated first, so they do not force the
slow path. The block's contribution to the error of the global R is bounded by its own κ
(adding rows never lowers the smallest singular value), so the choice is made per block.

Costs on the benchmark (84k × 51 float64 block, one core): read+decode ≈ 100 ms, Gram
≈ 12 ms, TRSM ≈ 25 ms, Householder (sliced) ≈ 90 ms. See bench/RESULTS.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg as sla
from scipy.linalg import blas, lapack

from nldist._budget import sub_rows

__all__ = [
    "KAPPA_CHOLQR",
    "KAPPA_CHOLQR2",
    "METHODS",
    "RFactor",
    "block_r",
    "block_r_method",
    "chol_upper",
    "cholqr2",
    "cholqr_r",
    "combine_r",
    "finalize_r",
    "gram",
    "leverage_factor",
    "leverage_form",
    "row_leverage",
    "row_sqnorms",
    "zero_leverage",
]

EPS = float(np.finfo(np.float64).eps)
METHODS = ("auto", "cholqr", "cholqr2", "scholqr3", "householder")
#: largest estimated (equilibrated) condition number for R straight from the Gram:
#: the leverage error is then ~ eps * kappa^2 <= 2e-10 relative.
KAPPA_CHOLQR = 1e3
#: largest estimated condition number for CholeskyQR2 (stable below ~ eps^-1/2 = 6.7e7).
KAPPA_CHOLQR2 = 1e6
#: a shifted-CholeskyQR3 R whose condition estimate exceeds this is treated as
#: numerically rank-deficient and recomputed by Householder.
KAPPA_SCHOLQR3 = 1e-3 / EPS
#: pass 2 multiplies by the explicit inverse of the (full-rank) triangular factor when its
#: condition number is at most this (leverage error ~ 2 * cond * eps <= 5e-12 relative, the
#: order of the solve's own); above it, a triangular solve (BLAS TRSM) per row slice.
INVERSE_MAX_COND = 1e4
def _as_f64(A: np.ndarray) -> np.ndarray:
    return np.asarray(A, dtype=np.float64)


# --------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------


def gram(A: np.ndarray) -> np.ndarray:
    """Gram matrix ``AᵀA`` (q, q) of a block (n_b, q), float64, by one GEMM."""
    A = _as_f64(A)
    with np.errstate(over="ignore", invalid="ignore"):  # callers check finiteness
        return A.T @ A


def chol_upper(G: np.ndarray) -> np.ndarray | None:
    """Upper Cholesky factor of a symmetric G (upper triangle read), or None if not PD."""
    if not np.all(np.isfinite(G)):
        return None
    c, info = lapack.dpotrf(G, lower=0, clean=1, overwrite_a=0)
    return c if info == 0 else None


def _kappa(R: np.ndarray) -> float:
    """Estimated 1-norm condition number of an upper-triangular R (LAPACK trcon, O(q²))."""
    if R.shape[0] == 0:
        return 1.0
    rcond, info = lapack.dtrcon(R, norm="1", uplo="U", diag="N")
    return float("inf") if info != 0 or rcond <= 0 or not np.isfinite(rcond) else 1.0 / rcond


def _right_solve_inplace(A: np.ndarray, R: np.ndarray) -> np.ndarray:
    """``A ← A R⁻¹`` for C-contiguous A (n_b, q) and upper-triangular R, in cache slices."""
    step = sub_rows(A.shape[1])
    for s in range(0, A.shape[0], step):
        B = A[s : s + step]
        Z = blas.dtrsm(1.0, R, B.T, side=0, lower=0, trans_a=1, overwrite_b=1)
        if not np.shares_memory(Z, B):  # pragma: no cover - f2py copied after all
            B[...] = Z.T
    return A


def _triu_r(r: np.ndarray, q: int) -> np.ndarray:
    """The (q, q) upper triangle of a geqrf output, zero-padded when it has < q rows."""
    R = np.zeros((q, q), dtype=np.float64)
    k = min(r.shape[0], q)
    R[:k] = np.triu(r[:k])
    return R


def _householder_r(A: np.ndarray) -> np.ndarray:
    """R of a Householder QR: LAPACK geqrf on cache-sized row slices, then on their R's."""
    n, q = A.shape
    step = max(sub_rows(q), 4 * q)
    if n <= step:
        return _triu_r(lapack.dgeqrf(A)[0], q)
    Rs = [_triu_r(lapack.dgeqrf(A[s : s + step])[0], q) for s in range(0, n, step)]
    return _triu_r(lapack.dgeqrf(np.vstack(Rs))[0], q)


def cholqr2(A: np.ndarray, R1: np.ndarray) -> np.ndarray | None:
    """Second CholeskyQR step from a first factor R1: R = chol((A R1⁻¹)ᵀ(A R1⁻¹)) R1."""
    Q1 = _right_solve_inplace(np.array(A, dtype=np.float64, order="C", copy=True), R1)
    R2 = chol_upper(Q1.T @ Q1)
    return None if R2 is None else R2 @ R1


def _scholqr3(A: np.ndarray, G: np.ndarray) -> np.ndarray | None:
    """Shifted CholeskyQR3 (Fukaya, Kannan, Nakatsukasa, Yamamoto, Yamazaki 2020)."""
    n, q = A.shape
    shift = 11.0 * (n * q + q * (q + 1)) * EPS * float(np.trace(G))
    R1 = chol_upper(G + shift * np.eye(q))
    if R1 is None:
        return None
    Q1 = _right_solve_inplace(np.array(A, dtype=np.float64, order="C", copy=True), R1)
    R2 = chol_upper(Q1.T @ Q1)
    if R2 is None:
        return None
    Q2 = _right_solve_inplace(Q1, R2)
    R3 = chol_upper(Q2.T @ Q2)
    if R3 is None:
        return None
    return R3 @ (R2 @ R1)


def equilibrated_chol(G: np.ndarray) -> tuple[np.ndarray | None, float]:
    """Cholesky R1 of G computed on D G D (D = diag(G)^-1/2) and kappa estimate of D-scaled R1.

    Returns ``(R1, kappa)`` with ``R1ᵀR1 = G`` (R1 = chol(DGD) D⁻¹), or ``(None, inf)``.
    """
    dg = np.diag(G)
    if dg.size == 0:
        return np.zeros((0, 0)), 1.0
    if not np.all(dg > 0) or not np.all(np.isfinite(G)):
        return None, float("inf")
    d = 1.0 / np.sqrt(dg)
    C = chol_upper(G * d[:, None] * d[None, :])
    if C is None:
        return None, float("inf")
    return C / d[None, :], _kappa(C)


# --------------------------------------------------------------------------------------
# Block R
# --------------------------------------------------------------------------------------


def cholqr_r(G: np.ndarray, kappa_max: float = KAPPA_CHOLQR) -> np.ndarray | None:
    """R straight from a block's Gram (CholeskyQR) when that is accurate enough, else None.

    Parameters
    ----------
    G : ndarray, shape (q, q)
        ``AᵀA`` of the block.
    kappa_max : float
        Largest accepted condition estimate (:data:`KAPPA_CHOLQR`; rows that are never
        formed, whose only alternative is a dense block, accept :data:`KAPPA_CHOLQR2`).

    Returns
    -------
    R : ndarray (q, q) or None
        Upper triangular with ``RᵀR = G``, computed from the column-equilibrated Gram, when
        the condition estimate of the (nonzero columns of the) block is at most
        ``kappa_max``; None otherwise (then a method that reads the block is needed).
        Exactly zero columns give zero rows and columns of R.
    """
    q = G.shape[0]
    if q == 0:
        return np.zeros((0, 0))
    if not np.all(np.isfinite(G)):
        return None
    nz = np.diag(G) > 0
    if not nz.any():
        return np.zeros((q, q))
    R1, kappa = equilibrated_chol(G if nz.all() else G[np.ix_(nz, nz)])
    if R1 is None or kappa > kappa_max:
        return None
    return R1 if nz.all() else _embed(R1, nz)


def _embed(sub: np.ndarray, nz: np.ndarray) -> np.ndarray:
    """Place the R of the nonzero columns into a (q, q) R (still upper triangular)."""
    R = np.zeros((nz.size, nz.size))
    R[np.ix_(nz, nz)] = sub
    return R


def block_r_method(
    A: np.ndarray, method: str = "auto", G: np.ndarray | None = None, ops: Any = None
) -> tuple[np.ndarray, str]:
    """R factor (q, q) of one row block and the name of the method that produced it.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
        A row block (any n_b >= 0, including n_b < q).
    method : {"auto", "cholqr", "cholqr2", "scholqr3", "householder"}
        See the module docstring. A forced Cholesky method that breaks down (not positive
        definite) falls back to Householder.
    G : ndarray (q, q), optional
        ``AᵀA`` if the caller already has it (saves one GEMM).
    ops : object with ``gram(A)`` and ``cholqr2(A, R1)``, optional
        Where the O(n q²) steps run (a backend of :mod:`nldist.scores.backends`: a torch
        device); default these NumPy functions. The q × q decisions are made here either way.

    Returns
    -------
    R : ndarray, shape (q, q), float64
        Upper triangular with ``AᵀA == RᵀR`` (to the accuracy of the method).
    method : str
        The method used (``"empty"`` for a block without rows or columns, ``"zero"`` for an
        all-zero block).
    """
    if method not in METHODS:
        raise ValueError(f"unknown QR method {method!r}; use one of {', '.join(METHODS)}")
    A = _as_f64(A)
    n, q = A.shape
    if n == 0 or q == 0:
        return np.zeros((q, q)), "empty"
    if method == "householder" or n < 4 * q:
        return _householder_r(A), "householder"
    if G is None:
        G = gram(A) if ops is None else ops.gram(A)
    if not np.all(np.isfinite(G)):  # overflow in the Gram of a finite block
        return _householder_r(A), "householder"
    nz = np.diag(G) > 0
    if not nz.any():
        return np.zeros((q, q)), "zero"
    if not nz.all():  # exactly zero columns: factor the others, embed
        sub, used = block_r_method(np.ascontiguousarray(A[:, nz]), method, G[np.ix_(nz, nz)],
                                   ops)
        return _embed(sub, nz), used
    R1, kappa = equilibrated_chol(G)
    auto = method == "auto"
    if R1 is not None and (method == "cholqr" or (auto and kappa <= KAPPA_CHOLQR)):
        return R1, "cholqr"
    if R1 is not None and (method == "cholqr2" or (auto and kappa <= KAPPA_CHOLQR2)):
        R = cholqr2(A, R1) if ops is None else ops.cholqr2(A, R1)
        if R is not None:
            return R, "cholqr2"
    if method in ("scholqr3", "auto"):
        R = _scholqr3(A, G)
        if R is not None and (not auto or _kappa(R) <= KAPPA_SCHOLQR3):
            return R, "scholqr3"
    return _householder_r(A), "householder"


def block_r(A: np.ndarray, method: str = "auto") -> np.ndarray:
    """R factor of a QR of one row block, padded to square.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
        A row block (any n_b >= 0, including n_b < q).
    method : str, default "auto"
        See :func:`block_r_method`.

    Returns
    -------
    R : ndarray, shape (q, q), float64
        Upper triangular with ``A.T @ A == R.T @ R`` (to rounding).
    """
    return block_r_method(A, method)[0]


def combine_r(Rs: list[np.ndarray]) -> np.ndarray:
    """Combine stacked R factors into one: R of QR([R_1; R_2; ...]) (Householder).

    Parameters
    ----------
    Rs : list of ndarray, each (q, q)

    Returns
    -------
    R : ndarray, shape (q, q)
    """
    if len(Rs) == 1:
        return Rs[0]
    return _householder_r(np.vstack(Rs))


def row_sqnorms(A: np.ndarray) -> np.ndarray:
    """Squared Euclidean norm of each row: (n_b, q) -> (n_b,) float64."""
    A = _as_f64(A)
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
        ``basis`` is used instead.
    basis : ndarray (q, r) or None
        Matrix B with leverage ``||a_i B||^2`` by one GEMM per row slice: V_r / s_r from
        the SVD of R when A is rank-deficient and ridge == 0; the explicit inverse of the
        triangular factor when its condition number is at most :data:`INVERSE_MAX_COND`
        (then its rounding error, about cond * eps, is as small as the solve's).
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
        rtol = max(int(n_rows), q, 1) * EPS
    rank = int(np.sum(svals > rtol * smax)) if smax > 0 else 0
    if ridge > 0:
        Rl = _householder_r(np.vstack([R, np.sqrt(ridge) * np.eye(q)]))
        total = float(np.sum(svals**2 / (svals**2 + ridge)))
        cond = np.sqrt((smax**2 + ridge) / (float(svals[-1]) ** 2 + ridge))
        return _full_rank(R, svals, rank, float(ridge), Rl, cond, total)
    if rank == q:
        return _full_rank(R, svals, rank, 0.0, R, smax / float(svals[-1]), float(rank))
    _, s, vt = sla.svd(R, check_finite=False)
    basis = vt[:rank].T / s[:rank]
    return RFactor(R, svals, rank, 0.0, None, basis, float(rank))


def _full_rank(
    R: np.ndarray, svals: np.ndarray, rank: int, ridge: float, T: np.ndarray, cond: float,
    total: float,
) -> RFactor:
    """Factor for a full-rank (or ridged) R: solve with T, or multiply by T^-1 if well
    conditioned (a GEMM is ~1.5-2x faster than a TRSM on tall row slices)."""
    if cond <= INVERSE_MAX_COND:
        Tinv, info = lapack.dtrtri(np.asfortranarray(T), lower=0)
        if info == 0 and np.all(np.isfinite(Tinv)):
            return RFactor(R, svals, rank, ridge, None, np.ascontiguousarray(Tinv), total)
    return RFactor(R, svals, rank, ridge, np.asfortranarray(T), None, total)


def kron_gram(K: np.ndarray, Xd: np.ndarray, step: int = 2048) -> np.ndarray:
    """``sum_i K_i (x) x_i x_i^T`` ((c q, c q)) for K (n, c, c) and rows Xd (n, q), by one
    GEMM per row slice (c^2 q^2 n flops, not the (c q)^2 n c of the explicit rows): the Gram
    of Kronecker-structured rows (``softmax:<C>`` block kinds, its Hessian)."""
    n, c, q = K.shape[0], K.shape[1], Xd.shape[1]
    T = np.zeros((q, c * c * q))
    for a in range(0, n, step):
        k, x = K[a:a + step], Xd[a:a + step]
        T += x.T @ (k[:, :, :, None] * x[:, None, None, :]).reshape(len(x), c * c * q)
    return T.reshape(q, c, c, q).transpose(1, 0, 2, 3).reshape(c * q, c * q)


def leverage_form(fac: RFactor) -> np.ndarray:
    """The symmetric (q, q) matrix P with leverage ``a_i^T P a_i`` (the pseudo-inverse of
    A^T A on its numerical rank, or ``(A^T A + lambda I)^-1``): for rows with structure
    (:class:`nldist.scores.rows.BlockRows` of ``softmax:<C>``) that never form a_i."""
    B = leverage_factor(fac)
    return B @ B.T


def leverage_factor(fac: RFactor) -> np.ndarray:
    """A (q, r) matrix B with :func:`leverage_form`'s ``P = B Bᵀ``: leverage as the sum of
    squares ``‖Bᵀ a_i‖²``, which has no cancellation (rows with structure that take B:
    :class:`nldist.scores.rows.BlockRows` of ``softmax:<C>``)."""
    if fac.solve_r is None:
        return fac.basis
    return sla.solve_triangular(fac.solve_r, np.eye(fac.solve_r.shape[0]), lower=False)


def zero_leverage(n: int, fac: RFactor) -> bool:
    """Every row's leverage is 0 without computing: no rows, or rank 0 and no ridge."""
    return n == 0 or (fac.rank == 0 and fac.ridge == 0)


def row_leverage(A: np.ndarray, fac: RFactor, overwrite_a: bool = False) -> np.ndarray:
    """Per-row leverage of a row block given the global factor.

    ``l_i = ||R^-T a_i||^2`` on cache-sized row slices: a GEMM with R^-1 when R is well
    conditioned (:data:`INVERSE_MAX_COND`), else a triangular solve (BLAS TRSM); or
    ``||a_i V_r / s_r||^2`` when rank-deficient; with ridge, ``a_i^T (A^T A + lambda I)^-1 a_i``.

    Parameters
    ----------
    A : ndarray, shape (n_b, q)
    fac : RFactor
    overwrite_a : bool, default False
        Allow the solve to overwrite A (saves a copy when A is a fresh float64 block).

    Returns
    -------
    ndarray, shape (n_b,), float64
    """
    A = _as_f64(A)
    n = A.shape[0]
    if zero_leverage(n, fac):
        return np.zeros(n)
    out = np.empty(n)
    step = sub_rows(A.shape[1])
    own = overwrite_a and A.flags.c_contiguous and A.flags.writeable
    buf = None
    for s in range(0, n, step):
        B = A[s : s + step]
        if fac.solve_r is None:
            if buf is None:  # one reused product buffer (fresh arrays cost page faults)
                buf = np.empty((min(step, n), fac.basis.shape[1]))
            Z = np.matmul(B, fac.basis, out=buf[: B.shape[0]])
            out[s : s + step] = np.einsum("ij,ij->i", Z, Z)
            continue
        if not own:  # copy into one reused buffer (fresh arrays cost page faults)
            if buf is None:
                buf = np.empty((min(step, n), A.shape[1]))
            B = buf[: B.shape[0]]
            B[...] = A[s : s + step]
        Z = blas.dtrsm(1.0, fac.solve_r, B.T, side=0, lower=0, trans_a=1, overwrite_b=1)
        out[s : s + step] = np.einsum("ij,ij->j", Z, Z)
    return out
