"""Response-aware sampling in one read of X: per-row scores against a fixed factor, seeded
Poisson draws, and the per-chunk sums that predict each distribution's error (MATH.md §9).

Pure NumPy, no Dask: :mod:`nldist.graph` maps :func:`chunk` over row blocks and the pipeline
calls :func:`totals`, :func:`predict`, :func:`choose` and :func:`finalize` on the driver
(:func:`predict` and :func:`choose` from :mod:`nldist.scores.oneread_predict`).

The rows are the model's dual rows ``[a_i, c_i]`` at theta (:class:`nldist.scores.rows.DualRows`:
the adjoint of the residual and its value at 0, so that ``r_i = a_i·theta + c_i`` is the
residual by (ID)). A :class:`RowFactor` holds a Gram matrix of such rows in factored form:

* from a **pilot** of m uniform rows (:func:`factor`, ``generalised=True``): the generalised
  leverage ``τ̃_i = u_i / (1 + u_i)``, ``u_i = a_iᵀ G_m⁺ a_i``, which never underestimates the
  exact leverage (Cohen, Lee, Musco, Musco, Peng & Sidford 2015) and is 1 for a row outside the
  pilot's row space;
* from the **exact** R of pass 1 (:func:`factor_from_r`, ``generalised=False``): ``τ_i = u_i``.

The candidate distributions (unnormalised row values q_i; each candidate's total Z is summed in
the pass, so nothing is normalised by a guess):

=======================  ===================================================================
``uniform``              1
``nonlinear-leverage``   leverage of the augmented rows ``[a_i, c_i]`` (the paper's score)
``influence``            ``|r_i|·√τ̃(a_i)``: the optimal-subsampling distribution
                         ∝ √(g_iᵀH⁻¹g_i) (Wang, Zhu & Ma 2018), with the adjoint for the
                         Jacobian; C rows per example: ``√(‖Σ_c r_ic W a_ic‖²·τ̃/u)``; in
                         the sampler with a uniform floor (:data:`INFLUENCE_FLOOR`: 0.9 of
                         it normalised + 0.1/n; ``nldist.scores`` gives it pure)
``influence-mix``        ½ influence / Ẑ_infl + ½ nonlinear-leverage / Ẑ_lev (Ẑ from the
                         pilot, fixed before the pass): robust where influence alone puts a
                         few huge weights (s ≈ 5p)
=======================  ===================================================================

Poisson sampling: row i is kept when its seeded hash uniform ``u_i`` (row id and seed:
chunking-invariant) is below ``min(1, rate·q_i)``; the driver later *thins* the drawn rows to
the final inclusion probability ``π_i = min(1, s·q_i/Z)`` with the exact Z (a row stays when
``u_i < min(π_i, π_i^draw)``; its Horvitz–Thompson weight is ``1/min(π_i, π_i^draw)``: exactly
unbiased whatever the pilot's guess of Z was).

The pass's per-candidate sums (Z, A, D, W; B, L and the heavy rows) feed the predicted error,
its guard and the effective sample size of :mod:`nldist.scores.oneread_predict` (whose names
are bound here too).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np

from nldist._budget import DUAL_BLOCK_BYTES
from nldist._budget import slices as row_slices
from nldist.errors import NldistError
from nldist.scores.oneread_predict import AUTO_MARGIN as AUTO_MARGIN
from nldist.scores.oneread_predict import CANDIDATES
from nldist.scores.oneread_predict import ESS_FLOOR as ESS_FLOOR
from nldist.scores.oneread_predict import GUARD as GUARD
from nldist.scores.oneread_predict import choose as choose
from nldist.scores.oneread_predict import error_at as error_at
from nldist.scores.oneread_predict import ess_at as ess_at
from nldist.scores.oneread_predict import predict as predict
from nldist.scores.oneread_predict import size_for as size_for
from nldist.scores.rows import DualRows
from nldist.scores.sampling import hash_uniform
from nldist.scores.sparse import FixedRows

#: the uniform share of the one-read ``influence`` candidate: a row the pilot's theta_0 fits
#: (nearly) exactly is never (nearly) impossible — without it, on the logistic tables, rows
#: with near-zero residual at a poor theta_0 got probabilities of 1e-9 and the fits a flat
#: error of 1.25 at every s (bench/RESULTS.md, issue 26)
INFLUENCE_FLOOR = 0.1
#: the kind strings of the one-read path: a candidate or ``auto``
ONE_READ_KINDS: tuple[str, ...] = (*CANDIDATES, "auto")
#: relative squared distance beyond which a row is outside the factor's row space
SPAN_TOL = 1e-9
#: seed offset of the inclusion uniforms (the evaluation sample uses another)
DRAW_SALT = 0x51A7E


@dataclass(frozen=True)
class RowFactor:
    """A Gram matrix of dual rows ``[a, c]`` (a: p columns), factored for per-row leverage.

    Attributes
    ----------
    V : ndarray of shape (p, k)
        Orthonormal basis of the adjoint rows' span.
    s : ndarray of shape (k,)
        Singular values of the adjoint rows (``G_A = V diag(s²) Vᵀ``).
    beta : ndarray of shape (p,)
        Least-squares coefficients of c on a (``G_A⁺ Aᵀc``).
    rho : float
        ``‖c − A beta‖²`` (the Schur complement of the augmented Gram; 0 when c is in A's span).
    m, n : int
        Rows behind the Gram (the pilot's m, or n for the exact factor) and rows of X.
    generalised : bool
        Pilot factor: report ``u/(1+u)``; exact factor: ``u``.
    ridge : float
        μ >= 0 of the predicted error's γ only (:meth:`with_ball`): ``γ_i = r_i²·(m/n)·
        aᵢᵀ(G + μI)⁺aᵢ``, the ball's multiplier λ at θ₀ in this Gram's units. The sampling
        values (leverage, influence) never use it.
    unseen : ndarray of shape (p,) bool, or None
        A pilot factor's columns that are 0 in every pilot row (levels of a categorical the
        pilot does not hold). A row whose only part outside the pilot's span lies in these
        columns keeps leverage 1 for sampling (never an underestimate), but its term of the
        predicted error is ``r_i² Σ_c a_ic²/N_c`` over its unseen columns, N_c = ``Σ_all rows
        a_ic²`` summed by the same pass (for a one-hot level: 1/n_level, about its exact
        leverage; its seen part is left out, which a level of one row, leverage exactly 1,
        would otherwise count twice) — the per-column sums come back from the pass and are
        added by the prediction (:func:`nldist.scores.oneread_predict.effective`). None: no
        such columns.
    """

    V: np.ndarray
    s: np.ndarray
    beta: np.ndarray
    rho: float
    m: int
    n: int
    generalised: bool
    rank: int = 0
    scale: float = 1.0
    c_scale: float = 1.0
    #: fixed before the pass: the pilot's estimates of each base candidate's total
    z_hat: dict = field(default_factory=dict)
    ridge: float = 0.0
    unseen: np.ndarray | None = None

    @property
    def ratio(self) -> float:
        """m / n: turns a pilot's u into an estimate of the exact leverage."""
        return self.m / self.n

    def with_ball(self, lam: float) -> RowFactor:
        """This factor with the ball's multiplier λ >= 0 at θ₀ (``∇L + λθ₀ = 0`` on the
        sphere, L = Σ r_i² over all n rows) in the predicted error.

        On the sphere a weighted fit's excess loss is ``½ δᵀ(H + λI)δ`` (MATH.md (P) with
        the constraint: the term ``∇Lᵀδ = λ‖δ‖²/2`` of a step along the sphere), so each
        row's term is ``½ gᵢᵀ(H + λI)⁻¹gᵢ = r_i² aᵢᵀ(G + λ/2·I)⁻¹aᵢ`` with H = 2G; in the
        pilot's Gram (≈ m/n of G) that is μ = (m/n)·λ/2. Without it the prediction counted
        the directions of curvature below λ as free (Fashion-MNIST softmax:10 at radius 30:
        λ = 6.3, 591 of 909 Hessian eigenvalues below it; the predictor was ×2 high from
        this alone)."""
        if not np.isfinite(lam) or lam < 0:
            raise NldistError(f"the ball's multiplier must be finite and >= 0, got {lam!r}")
        return replace(self, ridge=self.ratio * float(lam) / 2.0)

    @cached_property
    def inverse_gram_ridge(self) -> np.ndarray:
        """``V diag((s² + μ)⁻¹) Vᵀ`` (p, p): ``aᵀ(G + μI)⁺a`` on the span (μ = ridge)."""
        W = self.V / np.sqrt(self.s**2 + self.ridge)
        return W @ W.T

    @cached_property
    def inverse_gram(self) -> np.ndarray:
        """``V diag(s⁻²) Vᵀ`` (p, p): ``u = aᵀ(·)a`` for rows given by their nonzeros."""
        W = self.V / self.s
        return W @ W.T

    @cached_property
    def projector(self) -> np.ndarray:
        """``V Vᵀ`` (p, p): the squared norm of a row's part inside the span."""
        return self.V @ self.V.T


def _svd_factor(A: np.ndarray, c: np.ndarray, m: int, n: int, generalised: bool,
                rtol: float | None = None) -> RowFactor:
    p = A.shape[1]
    if A.shape[0] == 0:
        raise NldistError("the pilot has no rows; raise pilot size or check the data")
    _, sv, Vt = np.linalg.svd(A, full_matrices=False)
    tol = (rtol if rtol is not None else max(A.shape) * np.finfo(float).eps) * (
        sv[0] if sv.size else 0.0)
    k = int(np.sum(sv > tol)) if sv.size and sv[0] > 0 else 0
    V, s = Vt[:k].T.copy(), sv[:k].copy()
    if k:
        coef = V.T @ (A.T @ c) / s**2
        beta = V @ coef
        resid = c - A @ beta
        rho = float(resid @ resid)
    else:
        beta, rho = np.zeros(p), float(c @ c)
    c2 = float(c @ c)
    if rho <= 1e-12 * max(c2, 1e-300):
        rho = 0.0
    return RowFactor(V, s, beta, rho, m, n, generalised, rank=k + int(rho > 0),
                     scale=float(np.sqrt(np.mean(np.sum(A * A, axis=1)))) if A.size else 1.0,
                     c_scale=float(np.sqrt(c2 / max(1, c.size))))


def factor(D: np.ndarray, n: int, m: int | None = None) -> RowFactor:
    """The generalised-leverage factor of a uniform pilot's dual rows.

    Parameters
    ----------
    D : ndarray of shape (m·g, p + 1)
        The pilot's dual rows ``[a_i, c_i]`` (g rows per example).
    n : int
        Rows (examples) of X.
    m : int, optional
        Examples of the pilot (default ``D.shape[0]``).

    Returns
    -------
    RowFactor
    """
    D = np.asarray(D, dtype=np.float64)
    _check_finite(D, "the pilot's dual rows")
    fac = _svd_factor(D[:, :-1], D[:, -1], int(m or D.shape[0]), int(n), True)
    unseen = ~np.any(D[:, :-1] != 0, axis=0)
    return replace(fac, unseen=unseen) if unseen.any() else fac


def factor_from_r(R: np.ndarray, n: int) -> RowFactor:
    """The exact factor from pass 1's R of the augmented dual matrix (``RᵀR = DᵀD``): the
    leading p×p block of R is the R of the adjoint rows, its last column gives c."""
    R = np.asarray(R, dtype=np.float64)
    return _svd_factor(R[:, :-1], R[:, -1], int(n), int(n), False)


def _check_finite(D: Any, what: str) -> None:
    if isinstance(D, tuple):  # sparse rows (coded categoricals) and their augmented column
        D = np.concatenate([D[0].vals.ravel(), D[1]])
    if not np.all(np.isfinite(D)):
        raise NldistError(f"{what} are not finite at theta_0 (overflow); standardize the "
                          "features (dataset.standardize: true) or check the pilot's theta")


@dataclass
class _RowValues:
    """Per-example values of one block (all of shape (n_b,))."""

    lev: np.ndarray     # leverage of the augmented rows (generalised for a pilot)
    infl: np.ndarray    # influence q
    gamma: np.ndarray   # gamma_i (estimate of r_i^2 tau_i, the error contribution)
    h: np.ndarray       # estimate of the exact leverage of the adjoint rows
    r2: np.ndarray      # squared residual (summed over the example's rows)
    #: rows outside the pilot's span only through its unseen columns (RowFactor.unseen),
    #: and every row's entries in those columns (row, column, a²) — their deferred terms
    new: np.ndarray | None = None
    unseen: tuple[np.ndarray, np.ndarray, np.ndarray, int] | None = None


def _dual_rows(rows: Any, X: np.ndarray, y: np.ndarray | None, offset: int) -> Any:
    """The dual rows of a slice: dense (n·g, p+1), or for coded categoricals the pair
    (:class:`FixedRows` adjoint rows (n, p), augmented column (n,)) — no dense one-hot
    block."""
    if isinstance(rows, DualRows) and rows.structured and y is not None:
        A, c = rows.sparse_parts(X, y)
        D: Any = (A, c)
    else:
        D = np.ascontiguousarray(rows.matrix(X, y, offset), dtype=np.float64)
    _check_finite(D, f"the dual rows of rows {offset}..{offset + X.shape[0] - 1}")
    return D


def _row_values(D: Any, theta: np.ndarray, fac: RowFactor, group: int,
                loo: bool = False) -> _RowValues:
    """The per-example values of dual rows D (N·g, p+1) — or the sparse pair of
    :func:`_dual_rows` — against ``fac``.

    ``loo``: D are the pilot's own rows; each row's u is taken leave-one-out
    (``h/(1-h)`` from its in-sample h), so the pilot's values estimate the other rows'."""
    A, c = D if isinstance(D, tuple) else (D[:, :-1], D[:, -1])
    if isinstance(A, FixedRows):  # coded categoricals: quadratic forms by gathers
        r = A.dot(theta) + c
        zero = np.zeros(A.shape[0])
        uA = A.quad(fac.inverse_gram) if fac.s.size else zero
        uR = A.quad(fac.inverse_gram_ridge) if fac.ridge > 0 and fac.s.size else uA
        inside = A.quad(fac.projector) if fac.V.size else zero
        a2 = A.sq_norms()
        e = c - A.dot(fac.beta)
        Q = None  # one row per example (structured rows)
    else:
        r = A @ theta + c
        Q = A @ fac.V if fac.V.size else np.zeros((A.shape[0], 0))
        uA = np.sum((Q / fac.s) ** 2, axis=1) if fac.s.size else np.zeros(A.shape[0])
        uR = (np.sum(Q * Q / (fac.s**2 + fac.ridge), axis=1) if fac.ridge > 0 and fac.s.size
              else uA)
        a2 = np.einsum("ij,ij->i", A, A)
        inside = np.sum(Q * Q, axis=1)
        e = c - A @ fac.beta
    out_a = (a2 - inside) > SPAN_TOL * np.maximum(a2, fac.scale**2 * 1e-300)
    new, coo = None, None
    if fac.unseen is not None and group == 1 and not loo:
        new, coo = _unseen_parts(A, fac, a2, inside, out_a)
    if fac.rho > 0:
        uaug = uA + e * e / fac.rho
        out_aug = out_a
    else:
        uaug = uA
        out_aug = out_a | (np.abs(e) > 1e-6 * max(fac.c_scale, 1e-300))
    if loo:
        ridged = uR is not uA
        if ridged:
            uR = np.where(uA < 1, uR / np.maximum(1 - uA, 1e-300), np.inf)
        uA = np.where(uA < 1, uA / np.maximum(1 - uA, 1e-300), np.inf)
        if not ridged:
            uR = uA
        uaug = np.where(uaug < 1, uaug / np.maximum(1 - uaug, 1e-300), np.inf)

    def tau(u: np.ndarray, out: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore"):  # inf / inf where u is inf: replaced by 1
            t = (np.where(np.isinf(u), 1.0, u / (1 + u)) if fac.generalised
                 else np.minimum(u, 1.0))
        return np.where(out, 1.0, t)

    tA, taug = tau(uA, out_a), tau(uaug, out_aug)
    if group == 1:
        with np.errstate(invalid="ignore"):  # 0 · inf: replaced below
            gamma_u = r * r * uR
        infl2 = r * r * tA
        r2 = r * r
    else:
        def per_example(Wr: np.ndarray) -> np.ndarray:
            G = Wr.reshape(-1, group, Wr.shape[1]).sum(axis=1)
            return np.sum(G * G, axis=1)

        gamma_u = per_example((Q / fac.s if fac.s.size else Q) * r[:, None])
        uA, tA, taug = (v.reshape(-1, group).sum(axis=1) for v in (uA, tA, taug))
        out_a = out_a.reshape(-1, group).any(axis=1)
        r2 = (r * r).reshape(-1, group).sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            infl2 = np.where(uA > 0, gamma_u * tA / uA, 0.0)
        infl2 = np.where(out_a, r2, infl2)
        if fac.ridge > 0 and fac.s.size:  # the prediction's terms: (G + μI)⁺
            gamma_u = per_example(Q / np.sqrt(fac.s**2 + fac.ridge) * r[:, None])
    infl2 = np.where(out_a, r2, infl2)
    h = np.where(out_a | np.isinf(uA), 1.0, np.minimum(uA * (fac.ratio if fac.generalised
                                                             else 1.0), 1.0))
    # a row the factor cannot bound (u = inf: leave-one-out of a pilot row alone in its
    # direction) counts its whole residual — also when that residual is 0 (0·inf: NaN)
    gamma = np.where(out_a | np.isinf(uA) | np.isinf(gamma_u), r2,
                     gamma_u * (fac.ratio if fac.generalised else 1.0))
    if new is not None:  # their terms come from the pass's column sums (_unseen_sums)
        gamma = np.where(new, 0.0, gamma)
    return _RowValues(taug, np.sqrt(np.maximum(infl2, 0.0)), gamma, h, r2, new, coo)


def _unseen_parts(A: Any, fac: RowFactor, a2: np.ndarray, inside: np.ndarray,
                  out_a: np.ndarray) -> tuple[np.ndarray, tuple]:
    """The rows outside the pilot's span only through ``fac.unseen`` columns, and every
    row's entries in those columns as (row, column, a², p) (see :class:`RowFactor`)."""
    U = fac.unseen
    if isinstance(A, FixedRows):
        a2u = A.quad_diag(U.astype(np.float64))
        hit = U[A.cols] & (A.vals != 0)
        rows_i, k = np.nonzero(hit)
        cols, sq = A.cols[rows_i, k], A.vals[rows_i, k] ** 2
    else:
        Au = A[:, U]
        a2u = np.einsum("ij,ij->i", Au, Au)
        rows_i, k = np.nonzero(Au)
        cols, sq = np.flatnonzero(U)[k], Au[rows_i, k] ** 2
    seen_out = (a2 - a2u - inside) > SPAN_TOL * np.maximum(a2, fac.scale**2 * 1e-300)
    return out_a & ~seen_out & (a2u > 0), (rows_i, cols, sq, int(U.size))


def _candidates(v: _RowValues, z_hat: dict) -> np.ndarray:
    """(4, n_b) unnormalised values q of :data:`CANDIDATES`. ``z_hat`` holds the pilot's
    totals of the raw influence (``raw-influence``) and of the leverage, which normalise
    the mixtures, and n (``uniform``)."""
    zi, zl = z_hat.get("raw-influence", 1.0), z_hat.get("nonlinear-leverage", 1.0)
    n = z_hat.get("uniform", float(v.lev.size))
    infl = (1 - INFLUENCE_FLOOR) * v.infl / zi + INFLUENCE_FLOOR / n
    mix = 0.5 * v.infl / zi + 0.5 * v.lev / zl
    return np.stack([np.ones_like(v.lev), v.lev, infl, mix])


def estimate_totals(D: np.ndarray, theta: np.ndarray, fac: RowFactor, group: int = 1
                    ) -> dict[str, float]:
    """The pilot's estimate Ẑ of each base candidate's total over all n rows: its rows'
    leave-one-out values times n/m."""
    v = _row_values(np.asarray(D, dtype=np.float64), np.asarray(theta, dtype=np.float64),
                    fac, group, loo=fac.generalised)
    scale = fac.n / max(1, v.lev.size)
    z = {"uniform": float(fac.n), "nonlinear-leverage": float(np.sum(v.lev) * scale),
         "raw-influence": float(np.sum(v.infl) * scale)}
    for k in ("nonlinear-leverage", "raw-influence"):
        if not np.isfinite(z[k]) or z[k] <= 0:
            z[k] = 1.0
    q = _candidates(v, z)
    z["influence"] = float(np.sum(q[2]) * scale)
    z["influence-mix"] = float(np.sum(q[3]) * scale)
    return z


#: the per-chunk sums of :func:`chunk`, per candidate (axis 0) where indexed so
SUM_KEYS = ("Z", "A", "D", "W")  # sum q, sum gamma/q, sum h^2/q, sum 1/q


def _sums(v: _RowValues, q: np.ndarray) -> dict:
    """The sums of one slice's values (see :func:`chunk`)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(q > 0, v.gamma / q, np.where(v.gamma > 0, np.inf, 0.0)).sum(axis=1)
        D = np.where(q > 0, v.h**2 / q, np.where(v.h > 0, np.inf, 0.0)).sum(axis=1)
        W = np.where(q > 0, 1.0 / q, 0.0).sum(axis=1)  # a row with q = 0 has no weight
    out = {"n": int(v.lev.size), "L": float(np.sum(v.r2)), "B": float(np.sum(v.gamma)),
           "H": float(np.sum(v.h)), "Z": q.sum(axis=1), "A": A, "D": D, "W": W}
    if v.unseen is not None:
        out.update(_unseen_sums(v, q))
    return out


#: the per-column sums of the rows outside the pilot's span only through its unseen columns
#: (:class:`RowFactor`): ``N`` (p,) Σ a_ic² over all rows, ``TB`` (p,) Σ r_i² a_ic² and ``T``
#: (4, p) Σ r_i² a_ic² / q_i per candidate over those rows
UNSEEN_KEYS = ("N", "TB", "T")


def _unseen_sums(v: _RowValues, q: np.ndarray) -> dict:
    rows_i, cols, sq, p = v.unseen
    m = v.new[rows_i]  # the entries of the rows whose terms are deferred
    r_new, c_new = rows_i[m], cols[m]
    w = v.r2[r_new] * sq[m]
    with np.errstate(divide="ignore", invalid="ignore"):
        T = np.stack([np.bincount(c_new, np.where(q[j, r_new] > 0, w / q[j, r_new], np.inf),
                                  minlength=p) for j in range(q.shape[0])])
    return {"N": np.bincount(cols, sq, minlength=p), "TB": np.bincount(c_new, w, minlength=p),
            "T": T}


def pilot_totals(D: np.ndarray, theta: np.ndarray, fac: RowFactor, group: int = 1) -> dict:
    """The pilot's estimate of :func:`totals` over all n rows (its rows' leave-one-out values
    times n/m): what sizes the draw before the pass (``target_error``)."""
    v = _row_values(np.asarray(D, dtype=np.float64), np.asarray(theta, dtype=np.float64),
                    fac, group, loo=fac.generalised)
    scale = fac.n / max(1, v.lev.size)
    got = _sums(v, _candidates(v, fac.z_hat))
    return {k: (val if k == "n" else val * scale) for k, val in got.items()} | {"n": fac.n}


def chunk(
    X: np.ndarray, y: np.ndarray | None, *, rows: Any, theta: np.ndarray, fac: RowFactor,
    rates: np.ndarray, seed: int, offset: int, eval_rate: float = 0.0, eval_seed: int = 0,
    heavy: np.ndarray | None = None,
) -> dict:
    """One read of a row block: candidate values, Poisson draws, evaluation rows, sums.

    Parameters
    ----------
    X : ndarray of shape (n_b, d)
    y : ndarray of shape (n_b,) or (n_b, C), or None
    rows : DualRows
        The dual rows at theta (with y: the augmented ``[a, c]``).
    theta : ndarray of shape (p,)
    fac : RowFactor
    rates : ndarray of shape (4,)
        Draw rate of each candidate (``s_draw / Ẑ``; 0: not drawn): row i is drawn for
        candidate c when ``u_i < min(1, rates[c]·q_ci)``.
    seed : int
        The job's seed (inclusion uniforms: :func:`nldist.scores.sampling.hash_uniform` of
        the row id).
    offset : int
        Global index of the block's first row.
    eval_rate, eval_seed : float, int
        The Bernoulli evaluation sample (none when 0).
    heavy : ndarray of shape (4,), optional
        Per candidate, the value q above which a row's (q, γ) pair is returned (``heavy``):
        the rows a sample may take with certainty, whose terms the predicted error caps
        (:func:`predict`). None: none returned.

    Returns
    -------
    dict with ``n``, ``L`` (Σ r²), ``B`` (Σ γ), ``H`` (Σ h), per candidate ``Z``, ``A``, ``D``,
    ``W`` (Σ q, Σ γ/q, Σ h²/q, Σ 1/q: ndarrays of shape (4,)); the drawn rows ``idx`` (k,)
    global, ``q`` (4, k), ``r`` (k,) their residual norms at theta, ``X`` (k, d), ``y``; the
    evaluation rows ``eval_idx``, ``eval_X``, ``eval_y``.
    """
    X = np.asarray(X)
    n_b = int(X.shape[0])
    theta = np.asarray(theta, dtype=np.float64)
    g = int(rows.group)
    q_cols = theta.size + 1
    step = max(1, DUAL_BLOCK_BYTES // (8 * q_cols * g))
    sums = {"n": n_b, "L": 0.0, "B": 0.0, "H": 0.0,
            **{k: np.zeros(len(CANDIDATES)) for k in SUM_KEYS}}
    picked, qs, rs = [], [], []
    hv: list[list[np.ndarray]] = [[] for _ in CANDIDATES]
    for sl in row_slices(n_b, step):
        if sl.stop <= sl.start:
            continue
        Xs, ys = X[sl], None if y is None else np.asarray(y)[sl]
        v = _row_values(_dual_rows(rows, Xs, ys, offset + sl.start), theta, fac, g)
        q = _candidates(v, fac.z_hat)
        part = _sums(v, q)
        for k in ("L", "B", "H", *SUM_KEYS):
            sums[k] = sums[k] + part[k]
        for k in UNSEEN_KEYS:
            if k in part:
                sums[k] = sums[k] + part[k] if k in sums else part[k]
        if heavy is not None:
            for j in range(len(CANDIDATES)):
                big = q[j] >= heavy[j]
                if big.any():
                    hv[j].append(np.stack([q[j][big], v.gamma[big]]))
        if np.any(rates > 0):
            u = hash_uniform(np.arange(offset + sl.start, offset + sl.stop), seed + DRAW_SALT)
            keep = np.any(u[None, :] < np.minimum(1.0, rates[:, None] * q), axis=0)
            loc = np.flatnonzero(keep)
            picked.append(loc + sl.start)
            qs.append(q[:, loc])
            rs.append(np.sqrt(v.r2[loc]))
    idx = np.concatenate(picked) if picked else np.empty(0, np.int64)
    out = {**sums, "idx": idx + offset,
           "heavy": [np.concatenate(h, axis=1) if h else np.empty((2, 0)) for h in hv],
           "q": np.concatenate(qs, axis=1) if qs else np.empty((len(CANDIDATES), 0)),
           "r": np.concatenate(rs) if rs else np.empty(0),
           "X": X[idx], "y": None if y is None else np.asarray(y)[idx]}
    if eval_rate > 0:
        ev = np.flatnonzero(hash_uniform(np.arange(offset, offset + n_b), eval_seed) < eval_rate)
    else:
        ev = np.empty(0, np.int64)
    out.update(eval_idx=ev + offset, eval_X=X[ev], eval_y=None if y is None else
               np.asarray(y)[ev])
    return out


def totals(parts: list[dict]) -> dict:
    """The per-chunk sums of :func:`chunk` added up (n, L, B, H, and Z, A, D, W per
    candidate)."""
    out = {"n": 0, "L": 0.0, "B": 0.0, "H": 0.0,
           **{k: np.zeros(len(CANDIDATES)) for k in SUM_KEYS}}
    for p in parts:
        for k in out:
            out[k] = out[k] + p[k]
    for k in UNSEEN_KEYS:  # (a slice with no row touching an unseen column has none)
        got = [p[k] for p in parts if k in p]
        if got:
            out[k] = np.sum(got, axis=0)
    if all("heavy" in p for p in parts):
        out["heavy"] = [np.concatenate([p["heavy"][j] for p in parts], axis=1)
                        for j in range(len(CANDIDATES))]
    return out


def finalize(idx: np.ndarray, q: np.ndarray, name: str, s: int, rate: float, seed: int
             ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Candidate ``name``'s final sample of exactly ``s`` rows from the drawn rows: priority
    sampling (Duffield, Lund & Thorup, JACM 2007).

    Row i's priority is ``q_i / u_i`` (u_i its seeded hash uniform); the draw kept every row
    with ``u_i < rate·q_i``, i.e. every priority above ``1/rate``, so when it holds more than
    s of them it holds the s + 1 highest: the sample is the top s, and with τ the (s+1)-th
    priority each kept row's Horvitz–Thompson weight is ``1 / min(1, q_i/τ)`` — unbiased
    for any sum over the rows, the sample size fixed. When the draw holds s rows or fewer (the
    pilot over-estimated the total), all of them are kept with their Poisson weights
    ``1 / min(1, rate·q_i)`` (still unbiased; ``short`` says so).

    Parameters
    ----------
    idx : ndarray of shape (k,)
        Drawn global rows (union over the candidates drawn).
    q : ndarray of shape (4, k)
        Their candidate values.
    name : str
        The candidate.
    s : int
        Sample size.
    rate : float
        The rate the candidate was drawn with (``s_draw / Ẑ``).
    seed : int

    Returns
    -------
    keep : ndarray of shape (s,) positions into idx, in row order
    weights : ndarray of shape (s,) Horvitz–Thompson weights
    info : dict (``method``, ``threshold``, ``certain``: rows with weight 1, ``short``)
    """
    j = CANDIDATES.index(name)
    qj = q[j]
    u = hash_uniform(idx, seed + DRAW_SALT)
    mine = np.flatnonzero(u < np.minimum(1.0, rate * qj))
    if mine.size > s:
        with np.errstate(divide="ignore"):
            prio = np.where(u[mine] > 0, qj[mine] / u[mine], np.inf)
        order = np.lexsort((idx[mine], -prio))  # ties broken by row id: deterministic
        top, tau = mine[order[:s]], float(prio[order[s]])
        pi = np.minimum(1.0, qj[top] / tau)
        info = {"method": "priority sampling (exact size)", "threshold": tau, "short": False}
    else:
        top = mine
        pi = np.minimum(1.0, rate * qj[top])
        info = {"method": "Poisson (the draw held too few rows for the exact size)",
                "threshold": None, "short": True}
    order = np.argsort(idx[top], kind="stable")
    top, pi = top[order], pi[order]
    info["certain"] = int(np.sum(pi >= 1.0))
    return top, 1.0 / pi, info


def row_scores(X: np.ndarray, y: np.ndarray | None, *, rows: Any, theta: np.ndarray,
               fac: RowFactor, offset: int = 0) -> np.ndarray:
    """Unnormalised ``nonlinear-leverage`` and ``influence`` values of a row block against
    ``fac`` (the exact scores of the API when ``fac`` is :func:`factor_from_r`'s).

    Returns
    -------
    ndarray of shape (n_b, 2): column 0 the leverage of the augmented rows, column 1 the
    influence ``|r_i|·√τ_i``.
    """
    X = np.asarray(X)
    theta = np.asarray(theta, dtype=np.float64)
    g = int(rows.group)
    out = np.empty((X.shape[0], 2))
    step = max(1, DUAL_BLOCK_BYTES // (8 * (theta.size + 1) * g))
    for sl in row_slices(int(X.shape[0]), step):
        if sl.stop <= sl.start:
            continue
        v = _row_values(_dual_rows(rows, X[sl], None if y is None else np.asarray(y)[sl],
                                   offset + sl.start), theta, fac, g)
        out[sl, 0], out[sl, 1] = v.lev, v.infl
    return out


def mix_columns(vals: Any, name: str) -> Any:
    """The exact probabilities of ``name`` from :func:`row_scores`' columns (NumPy or dask):
    each column normalised by its sum; ``influence-mix`` their half-half mixture."""
    lev, infl = vals[:, 0], vals[:, 1]
    if name == "nonlinear-leverage":
        return lev / lev.sum()
    if name == "influence":
        return infl / infl.sum()
    if name == "influence-mix":
        return 0.5 * infl / infl.sum() + 0.5 * lev / lev.sum()
    raise NldistError(f"kind {name!r} picks a distribution for a sample size; sample with "
                      "`nldist select` (kind: auto) or ask nldist.scores for influence or "
                      "influence-mix")
