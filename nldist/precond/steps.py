"""The step solver of the sample's model (Levenberg-Marquardt in a ball): the minimizer of
``g^T d + 1/2 d^T (B + mu I) d`` over ``||theta + d|| <= radius`` by Cholesky factorizations
and Newton's method on the ball's multiplier (:func:`chol_ball_step`) or from an
eigendecomposition and a 1-D root find (:func:`ball_step`); the KKT norm of the ball
(:func:`kkt_norm`) and the lower bound on the sample-Newton step that gates the stopping
test's eigendecomposition (:func:`newton_lower_bound`).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import linalg, optimize

from nldist.train import project_ball


def kkt_norm(theta: np.ndarray, g: np.ndarray, radius: float) -> float:
    """||g + lam theta|| with the ball's multiplier lam = max(0, -g^T theta / ||theta||^2) when
    theta is on the sphere, else ||g||: 0 exactly at a KKT point of min L over the ball."""
    nt = float(np.linalg.norm(theta))
    if nt > 0 and nt >= radius * (1.0 - 1e-9):
        lam = max(0.0, -float(g @ theta) / nt**2)
        return float(np.linalg.norm(g + lam * theta))
    return float(np.linalg.norm(g))


def ball_step(e: np.ndarray, V: np.ndarray, g: np.ndarray, theta: np.ndarray, radius: float,
              mu: float) -> np.ndarray:
    """The minimizer t of ``g^T (t - theta) + 1/2 (t - theta)^T (B + mu I) (t - theta)`` over
    ``||t|| <= radius``, from ``B = V diag(e) V^T`` (e >= 0) and mu > 0 (:func:`nldist.train.
    ball_qp`'s KKT system with the eigendecomposition shared by every mu)."""
    a = e + mu
    c = a * (V.T @ theta) - V.T @ g
    t = c / a
    if float(np.linalg.norm(t)) <= radius:
        return V @ t

    def excess(log_lam: float) -> float:
        return float(np.linalg.norm(c / (a + np.exp(log_lam)))) - radius

    hi = math.log(max(float(np.linalg.norm(c)) / radius, 1e-300)) + 1.0
    lo = hi - 80.0
    lam = math.exp(lo) if excess(lo) <= 0 else math.exp(
        optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=200))
    return project_ball(V @ (c / (a + lam)), radius)


def chol_ball_step(B: np.ndarray, g: np.ndarray, theta: np.ndarray, radius: float, mu: float,
                   lam0: float = 0.0, max_iter: int = 100) -> tuple[np.ndarray, float] | None:
    """:func:`ball_step`'s minimizer from Cholesky factors of ``B + (mu + lam) I`` instead of an
    eigendecomposition of B (a Cholesky is 1/3 p^3 flops and runs near BLAS-3 speed; the
    symmetric eigensolver several times the flops, much of it BLAS-2: at p = 1,010 on the
    loaded 2-core machine 0.07-0.6 s against 2-6 s).

    Inside the ball (lam = 0) one factorization: ``t = theta - (B + mu I)^-1 g``. Outside, the
    multiplier lam > 0 with ``||t(lam)|| = radius``, ``t(lam) = (B + (mu + lam) I)^-1 ((B + mu
    I) theta - g)``, by Newton's method on ``1/||t(lam)|| - 1/radius`` (Moré & Sorensen 1983:
    the function is concave in lam, so every Newton iterate lies at or below the root and
    they increase to it, quadratically; one factorization each) from ``lam0`` — the previous
    step's multiplier, which changes little between steps; an iterate at or below 0 goes to
    lam = 0 and the inside is checked — to relative 1e-14; the last Newton correction, once
    below 1e-7 of mu + lam, is applied to t to first order (``t - dlam (B + (mu + lam) I)^-1
    t``: error 1e-14 relative) instead of by another factorization; then t is scaled onto the
    sphere (:func:`ball_step` projects onto the ball). mu > 0 keeps every matrix positive
    definite (no "hard case").

    Returns (t, lam), or None when ``B + mu I`` is not numerically positive definite (B
    indefinite beyond rounding, or mu below its rounding): the caller takes
    :func:`ball_step`'s path.
    """
    p = theta.size
    b = B @ theta + mu * theta - g
    lam, t = max(0.0, float(lam0)), None
    for _ in range(max_iter):
        A = B.copy()
        A.flat[:: p + 1] += mu + lam
        try:
            L = linalg.cholesky(A, lower=True, overwrite_a=True, check_finite=False)
        except linalg.LinAlgError:
            return None
        t = linalg.cho_solve((L, True), b, check_finite=False)
        nt = float(np.linalg.norm(t))
        if not np.isfinite(nt):
            return None
        if lam == 0.0 and nt <= radius:
            return t, 0.0
        if abs(nt - radius) <= 1e-14 * radius:
            break
        wv = linalg.solve_triangular(L, t, lower=True, check_finite=False)
        step = (nt / float(np.linalg.norm(wv))) ** 2 * (nt - radius) / radius
        if lam + step <= 0.0:  # from above the root (a warm start) to at or below 0
            lam = 0.0
            continue
        if abs(step) <= 1e-7 * (mu + lam + step):  # the last correction, to first order
            t = t - step * linalg.solve_triangular(L, wv, lower=True, trans="T",
                                                   check_finite=False)
            lam += step
            break
        lam += step
    # lam > 0: the solution lies on the sphere (a solve of condition ||B|| / (mu + lam) leaves
    # its norm off by that x rounding, from either side)
    return t * (radius / float(np.linalg.norm(t))), lam


def newton_lower_bound(B_norm: float, g: np.ndarray, theta: np.ndarray, g_null_max: float
                       ) -> float:
    """A lower bound, from O(p) numbers, on ``||d_N||`` of the stopping test of
    :func:`fit_precond` whenever its null-space gradient is at most ``g_null_max``
    (``B_norm`` >= ||B||_2; the test's damping 1e-12 ||B|| included).

    d_N solves ``(A + lam I) d = -(g_r + lam theta)`` for some lam >= 0 (the ball's KKT system,
    A = B + mu_0 I on B's range, g_r the gradient on it), so ``||d|| >= ||g_r + lam theta|| /
    (||A|| + lam)``; with ``||g_r + lam theta|| >= max(k - g_null_max, lam ||theta|| - ||g||)``,
    k = min over lam >= 0 of ``||g + lam theta||``, the worst lam is where the two meet. A
    bound above ``xtol ||theta||`` proves that the test fails without the eigendecomposition."""
    tn = float(np.linalg.norm(theta))
    gn = float(np.linalg.norm(g))
    if tn == 0.0:
        return 0.0
    lam = max(0.0, -float(g @ theta) / tn**2)
    k = float(np.linalg.norm(g + lam * theta)) - g_null_max
    if not k > 0:
        return 0.0
    return k / (B_norm * (1.0 + 1e-12) + (k + gn) / tn)
