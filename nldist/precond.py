"""The sample as the Hessian of the full-data problem (MATH.md §9, "The sample as a
preconditioner"; issue 27): exact full-data gradients, a sample's Gauss-Newton matrix.

Each iteration of :func:`fit_precond` costs one distributed pass that returns the exact
full-data loss L(theta) and gradient g (:func:`grad_block` per chunk: n p work per row, no
p x p matrix per row), and a step from the *sample's* model

    m(d) = L + g^T d + 1/2 d^T (B + mu I) d,    B = H_S(theta) (+ secant corrections)

minimized exactly over the ball ||theta + d|| <= R (:func:`chol_ball_step`: a Cholesky
factorization of B + mu I, and inside the ball that is all; when the step leaves the ball a
few more, Newton's method on the ball's multiplier — the solution :func:`ball_step` finds
from an eigendecomposition and a 1-D root find, as :func:`nldist.train.ball_qp`).
H_S = sum_j w_j H_j(theta) is the weighted Gauss-Newton matrix of the sample rows (weights
1 / (s pi_j): an unbiased estimate of the full H; a subspace embedding when the rows were
drawn by leverage), taken again at every accepted theta from the same rows on the driver
(no read of X; not after a rejected step: theta did not change). A step is accepted only
when the full loss decreases (the ratio of actual to predicted decrease, as
Levenberg-Marquardt); a step that raises it is rejected and the damping mu increased, so
the full loss never increases. Near the optimum the loss stops resolving the decrease
(relative changes below 1e-12 are rounding); there a step is accepted when the full
gradient's KKT norm decreases and the loss did not rise beyond 1e-14 relative.

Secant corrections (``secant=True``): the full gradients of successive iterates give
curvature pairs (s_k = theta_{k+1} - theta_k, y_k = g_{k+1} - g_k) of the *full* problem for
free; the last ``memory`` of them update H_S by BFGS (skipped when y^T s <= 0). On a
quadratic this is the quasi-Newton form of conjugate gradients preconditioned by H_S: it
repairs directions where the sample is poor (rare rows a uniform sample missed) in a few
iterations instead of stalling.

Stopping rule (a relative gradient tolerance in the metric of the sample's model): the
sample-Newton step ``d_N`` (the step above at negligible damping, on the range of B) has
``||d_N|| <= xtol * ||theta||`` and the gradient on B's null space (eigenvalues below
:data:`RCOND` x the largest: a parametrisation's redundancy such as softmax's common shift,
where the full gradient is rounding) is below :data:`NULL_GTOL` x the first KKT norm — or
the KKT norm is 0; ``max_iter`` caps the passes. With H_S within a factor (1 +- eps) of
H, ||theta - theta*|| <= ||d_N|| / (1 - eps) near theta*. The test needs B's
eigendecomposition (its range and null space); it is made only at points where a lower bound
on ||d_N|| from ||B|| and the gradient (:func:`newton_lower_bound`) does not already exceed
xtol — near the optimum — and then also serves that point's trial steps. (At p = 1,010 on the
shared 2-core machine an eigendecomposition per accepted point was most of the driver's
time: 2.5-8 s each, against 0.07 s for a Cholesky factorization.)

The choice (:func:`choose`): a full Gauss-Newton pass forms J^T J (n p^2 per row), a
gradient pass n p; a gradient pass is timed, the extra per-row cost of J^T J on one chunk
(:func:`chunk_costs`), the passes each needs
estimated by running both methods on the sample (:func:`sample_passes`), and the cheaper
estimate wins.

A uniform sample that misses a rare category leaves H_S singular in its direction: the
first damped step there is long (it is accepted when the full loss decreases), and for a
non-convex GLM it can reach a flat region on the sphere (a saturated activation) — another
KKT point than the leverage sample's. Leverage samples keep every direction.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import linalg, optimize
from scipy.sparse import linalg as sparse_linalg

from nldist._checks import check_finite_block
from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.losses import check_labels, get_loss, softmax, targets
from nldist.train import (
    ce_oracle,
    gn_block,
    multi_squared_oracle,
    project_ball,
    sample_oracle,
    train_on_sample,
)

#: default relative tolerance of :func:`fit_precond` (||d_N|| <= XTOL ||theta||)
XTOL = 1e-10
#: a predicted decrease below this fraction of L is below what the loss resolves
NOISE = 1e-12
#: the loss may rise by this fraction of itself (rounding) on a step accepted by the gradient
SLACK = 1e-14
#: eigenvalues of the model matrix below RCOND x the largest: its null space
RCOND = 1e-10
#: the gradient on that null space must be below NULL_GTOL x the first KKT norm to stop
NULL_GTOL = 1e-8
#: trial steps by Cholesky factorizations while the damping mu >= CHOL_MU x ||B||; below it
#: (B + mu I's smallest eigenvalues within ~1e3 of B's rounding, where the eigendecomposition
#: clamps them at 0 and a Cholesky factor does not) from the eigendecomposition of B
CHOL_MU = 1e-10
#: rows per torch Jacobian batch of a C-output network's sample Gauss-Newton matrix
JAC_ROWS = 256


# --------------------------------------------------------------------------------------
# One row block: the exact loss and gradient (n p work per row)
# --------------------------------------------------------------------------------------


def grad_block(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
               offset: int = 0, loss: str = "squared") -> dict:
    """Loss and gradient (no Gauss-Newton matrix) of one block, as :func:`nldist.train.gn_block`
    defines them: ``sum r_i^2`` (squared loss, or a loss's residuals), ``sum ||f_i - y_i||^2``
    (multi-output regression) or ``sum CE_i`` (cross-entropy).

    Closed forms by a vector-Jacobian product in NumPy (a GLM's Jacobian is n x p, the work
    n p); networks by one torch backward pass over the block.

    Returns
    -------
    dict with ``loss`` (float) and ``grad`` (p,)
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    vjp = getattr(model, "vjp", None)
    if loss == "cross_entropy":
        yi = check_labels(y.reshape(-1), model.n_outputs)
        if model.closed_form and vjp is not None:
            Z = model.predict(theta, X)
            E = softmax(Z)
            E[np.arange(len(yi)), yi] -= 1.0
            return {"loss": float(get_loss("cross_entropy").row_loss(Z, yi).sum()),
                    "grad": vjp(theta, X, E)}
        return _torch_grad(model, theta, X, yi, "cross_entropy")
    if model.n_outputs > 1:
        Y = targets(y, len(X), model.n_outputs)
        if not model.closed_form:
            return _torch_grad(model, theta, X, Y, "multi")
        R = model.predict(theta, X) - Y
        g = vjp(theta, X, R) if vjp is not None else \
            np.einsum("nc,ncp->p", R, model.jacobian(theta, X))
        return {"loss": float((R * R).sum()), "grad": 2.0 * g}
    if not model.closed_form:
        return _torch_grad(model, theta, X, y, loss)
    sparse = bool(getattr(model, "sparse_rows", False))  # a GLM on coded columns
    if sparse:
        z = model.linear_index(theta, X)
        f = model.inner.activation.phi(z)
    else:
        f = model.predict(theta, X)
    if loss == "squared":
        r, dr = f - y, 1.0
    else:
        lo = get_loss(loss)
        lo.check(f, y)
        r, dr = lo.residual(f, y), lo.dresidual(f, y)
    if sparse:  # J^T v from the sparse design (d0 + k + 1 nonzeros a row), never the dense
        # one-hot Jacobian (n x p: at flights-3m's p = 460 it made the pass 10x slower)
        A = model.sparse_design(X, model.inner.activation.dphi(z) * (r * dr))
        return {"loss": float(r @ r), "grad": 2.0 * np.asarray(A.sum(axis=0)).ravel()}
    return {"loss": float(r @ r), "grad": 2.0 * (model.jacobian(theta, X).T @ (r * dr))}


def _torch_grad(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str
                ) -> dict:
    """(loss, gradient) of a network's block by torch autograd (one backward pass)."""
    import torch

    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    Xt = torch.as_tensor(X)
    f = model.torch_forward(th, Xt)
    if loss == "cross_entropy":
        L = torch.nn.functional.cross_entropy(f, torch.as_tensor(y), reduction="sum")
    elif loss == "multi":
        R = f - torch.as_tensor(y)
        L = (R * R).sum()
    else:
        yt = torch.as_tensor(y)
        r = f - yt if loss == "squared" else get_loss(loss).torch_residual(f, yt)
        L = (r * r).sum()
    (g,) = torch.autograd.grad(L, th)
    return {"loss": float(L.detach()), "grad": g.numpy().astype(np.float64)}


# --------------------------------------------------------------------------------------
# The sample's Gauss-Newton matrix H_S(theta), on the driver
# --------------------------------------------------------------------------------------


def sample_gn(model: Model, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray,
              loss: str = "squared") -> Callable[[np.ndarray], np.ndarray]:
    """theta -> H_S(theta) (p, p), the weighted Gauss-Newton matrix of the sample rows in the
    convention of :func:`nldist.train.gn_block` (``2 J^T W J`` for squared losses; the
    cross-entropy's ``sum_j w_j J_j^T (diag pi_j - pi_j pi_j^T) J_j``).

    Closed forms and single-output networks reuse :mod:`nldist.train`'s sample oracles;
    C-output networks take their (s, C, p) Jacobian from torch.func in row batches.
    """
    Xs = model.check_X(Xs)
    w = np.asarray(w, dtype=np.float64)
    if loss == "cross_entropy":
        if getattr(model, "kron_design", None) is not None:
            check_labels(np.asarray(ys).reshape(-1), model.n_outputs)
            return _softmax_gn(model, Xs, w)
        check_labels(np.asarray(ys).reshape(-1), model.n_outputs)
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "cross_entropy")
    if model.n_outputs > 1:
        if model.closed_form:
            oracle = multi_squared_oracle(model, Xs, ys, w)
            return lambda theta: oracle(theta)["gn"]
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "multi")
    oracle = sample_oracle(model, Xs, ys, w, loss)
    return lambda theta: oracle(theta)["gn"]


def _softmax_gn(model: Model, Xs: np.ndarray, w: np.ndarray, step: int = 2048
                ) -> Callable[[np.ndarray], np.ndarray]:
    """theta -> the cross-entropy Hessian ``sum_j w_j (diag pi_j - pi_j pi_j^T) (x) x~_j x~_j^T``
    of a model with Kronecker rows (``softmax:<C>``, ``model.kron_design``): the same matrix
    as :func:`nldist.scores.linalg.kron_gram` of those blocks, formed as its two terms — C
    diagonal blocks ``X~^T diag(w pi_c) X~`` (C n q^2 flops) minus the Gram ``U^T U`` of the
    rows ``u_j = sqrt(w_j) pi_j (x) x~_j`` (one SYRK, n (C q)^2 / 2 flops) — instead of the
    (n, C, C, q) temporary of every row's C x C block (at softmax:10 on Fashion-MNIST, s =
    4,040: 1.3 s a call under load, most of it memory traffic; this 0.1-0.3 s)."""
    Xd = np.asarray(model.kron_design(Xs), dtype=np.float64)
    q = Xd.shape[1]
    sw = np.sqrt(np.maximum(w, 0.0))

    def hessian(theta: np.ndarray) -> np.ndarray:
        P = softmax(model.predict(theta, Xs))
        c = P.shape[1]
        H = np.zeros((c * q, c * q))
        for a in range(0, len(Xd), step):
            x, pw = Xd[a:a + step], P[a:a + step] * w[a:a + step, None]
            for k in range(c):
                H[k * q:(k + 1) * q, k * q:(k + 1) * q] += x.T @ (pw[:, k:k + 1] * x)
            U = ((sw[a:a + step, None] * P[a:a + step])[:, :, None] * x[:, None, :]
                 ).reshape(len(x), c * q)
            H -= U.T @ U
        return 0.5 * (H + H.T)

    return hessian


def _torch_block_gn(model: Model, theta: np.ndarray, X: np.ndarray, w: np.ndarray,
                    loss: str) -> np.ndarray:
    """Gauss-Newton matrix of a C-output network on weighted rows, from its Jacobian."""
    import torch
    from torch.func import jacrev

    th = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    p = th.numel()
    H = np.zeros((p, p))
    for a in range(0, len(X), JAC_ROWS):
        Xt = torch.as_tensor(X[a:a + JAC_ROWS])
        wb = w[a:a + JAC_ROWS]
        with torch.no_grad():
            Z = model.torch_forward(th, Xt).numpy()
        J = jacrev(lambda t, Xt=Xt: model.torch_forward(t, Xt))(th).numpy()  # (b, C, p)
        if loss == "multi":
            H += 2.0 * np.einsum("n,ncp,ncq->pq", wb, J, J)
        else:
            P = softmax(Z)
            PJ = np.einsum("nc,ncp->np", P, J)
            H += np.einsum("n,nc,ncp,ncq->pq", wb, P, J, J) - np.einsum("n,np,nq->pq", wb,
                                                                          PJ, PJ)
    return 0.5 * (H + H.T)


# --------------------------------------------------------------------------------------
# The trainer
# --------------------------------------------------------------------------------------


@dataclass
class PrecondResult:
    """Result of :func:`fit_precond`.

    Attributes
    ----------
    theta : ndarray (p,)
    loss : float
        Full-data loss at theta.
    grad_norm : float
        KKT norm of the full gradient at theta (:func:`kkt_norm`).
    iterations : int
        Accepted steps.
    passes : int
        Calls of the full-data oracle (distributed passes): the start and every trial.
    converged : bool
    reason : str
    history : list of dict
        Per accepted point: ``iteration``, ``loss``, ``grad_norm``, ``newton_step`` (relative
        ||d_N|| / ||theta||; None where the bound proved the stopping test failing without
        it), ``newton_bound`` (:func:`newton_lower_bound`, relative), ``mu``, ``top`` (B's largest
        eigenvalue), ``passes``,
        ``seconds`` (since the start), and ``rejected`` (trials rejected before it).
    driver_s : float
        Seconds spent on the driver (H_S, secant updates, factorizations of the model).
    eigendecompositions : int
        Full eigendecompositions of the model matrix made (the stopping test near the
        optimum, or a model matrix Cholesky could not factor); the trial steps otherwise
        take Cholesky factorizations (:func:`chol_ball_step`).
    """

    theta: np.ndarray
    loss: float
    grad_norm: float
    iterations: int
    passes: int
    converged: bool
    reason: str
    history: list[dict] = field(default_factory=list)
    driver_s: float = 0.0
    eigendecompositions: int = 0


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


def _bfgs(B: np.ndarray, pairs: Any) -> np.ndarray:
    """B updated by BFGS with the curvature pairs (s, y) in order (a pair with y^T s <= 0 or
    s^T B s <= 0 skipped). The rank-2 corrections are kept as vectors (B_k s from B s and
    them: O(p m) each) and added by one GEMM at the end, not as m dense outer products."""
    U: list[np.ndarray] = []
    c: list[float] = []
    for s, y in pairs:
        ys = float(y @ s)
        Bs = B @ s
        if U:
            Um = np.asarray(U)
            Bs = Bs + Um.T @ (np.asarray(c) * (Um @ s))
        sBs = float(s @ Bs)
        if ys <= 1e-12 * float(np.linalg.norm(y) * np.linalg.norm(s)) or sBs <= 0:
            continue
        U += [y, Bs]
        c += [1.0 / ys, -1.0 / sBs]
    if not U:
        return 0.5 * (B + B.T)
    Um = np.asarray(U)
    B = B + (Um.T * np.asarray(c)) @ Um
    return 0.5 * (B + B.T)


def _top_eigenvalue(B: np.ndarray, v0: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The largest eigenvalue of the symmetric B (Lanczos, ARPACK; O(p^2) per product) and its
    vector (the next call's start): the damping's scale without a full eigendecomposition."""
    p = B.shape[0]
    if p <= 64:
        e, V = np.linalg.eigh(B)
        return float(e[-1]), V[:, -1]
    v0 = np.ones(p) if v0 is None else v0
    try:
        e, V = sparse_linalg.eigsh(B, k=1, which="LA", v0=v0, tol=1e-6)
        return float(e[0]), V[:, 0]
    except sparse_linalg.ArpackNoConvergence:
        e, V = np.linalg.eigh(B)
        return float(e[-1]), V[:, -1]


def fit_precond(full: Callable[[np.ndarray], dict], hessian: Callable[[np.ndarray], np.ndarray],
                theta0: np.ndarray, radius: float, xtol: float = XTOL, max_iter: int = 100,
                secant: bool = True, memory: int = 10,
                on_iter: Callable[[dict], None] | None = None,
                start: dict | None = None) -> PrecondResult:
    """Minimize the full-data loss over ``||theta|| <= radius`` with exact gradients and the
    sample's Gauss-Newton matrix (module docstring).

    Parameters
    ----------
    full : callable theta (p,) -> {"loss": float, "grad": (p,)}
        The exact full-data oracle (one distributed pass per call: :func:`nldist.graph.
        grad_pass`).
    hessian : callable theta (p,) -> (p, p)
        H_S(theta) (:func:`sample_gn`).
    theta0 : ndarray (p,)
        Start (projected onto the ball), e.g. the pilot.
    radius : float
    xtol : float
        Relative tolerance of the sample-Newton step (the stopping rule).
    max_iter : int
        Most calls of ``full`` after the first (each a pass).
    secant : bool
        Correct H_S with BFGS updates from the full gradients (module docstring).
    memory : int
        Curvature pairs kept.
    on_iter : callable, optional
        Called with each history record as it is made.
    start : dict, optional
        ``full(theta0)`` when already computed (counted as the first pass; theta0 must be
        inside the ball).

    Returns
    -------
    PrecondResult
    """
    if not (np.isfinite(radius) and radius > 0):
        raise NldistError(f"ball radius must be a positive number, got {radius!r}")
    t_start = time.perf_counter()
    theta = project_ball(np.asarray(theta0, dtype=np.float64).copy(), radius)
    cur = full(theta) if start is None else start
    passes = 1
    L, g = float(cur["loss"]), np.asarray(cur["grad"], dtype=np.float64)
    if not np.isfinite(L) or not np.all(np.isfinite(g)):
        raise NldistError("the loss is not finite at the starting point; check data and model")
    driver = 0.0
    pairs: deque = deque(maxlen=max(int(memory), 1))
    history: list[dict] = []
    mu: float | None = None
    nu = 2.0
    rejected = 0
    iterations = 0
    kkt = kkt_norm(theta, g, radius)
    converged, reason = False, f"max_iter ({max_iter} passes) reached"
    fresh = True  # at a new accepted point: H_S, its model and the stopping test
    B = eig = v_top = None
    top = 0.0
    newton: float | None = None
    g_null = 0.0
    kkt0: float | None = None
    eighs = 0
    lam_prev = mu_prev = 0.0  # the last Cholesky step's ball multiplier and damping

    def exact_test() -> tuple[float, float]:
        """(||d_N|| / ||theta||, the null-space gradient) from the eigendecomposition of B,
        made at most once per accepted point (also the trial steps' then)."""
        nonlocal eig, top, eighs
        if eig is None:
            e, V = linalg.eigh(B, driver="evd", check_finite=False)
            e = np.maximum(e, 0.0)
            top = max(float(e[-1]), 1e-300)
            eig = (e, V)
            eighs += 1
        e, V = eig
        # the sample-Newton step on the range of B; the gradient off it (directions no
        # sample row and no curvature pair sees: a parametrisation's redundancy, e.g.
        # softmax's shift of all classes, where the full gradient is rounding) apart
        cg = V.T @ g
        null = e <= RCOND * top
        dn = ball_step(e, V, V[:, ~null] @ cg[~null], theta, radius, 1e-12 * top) - theta
        return (float(np.linalg.norm(dn)) / max(float(np.linalg.norm(theta)), 1e-300),
                float(np.linalg.norm(cg[null])))

    while True:
        if fresh:
            fresh = False
            t0 = time.perf_counter()
            H = np.asarray(hessian(theta), dtype=np.float64)
            if H.shape != (theta.size, theta.size) or not np.all(np.isfinite(H)):
                raise NldistError("the sample's Gauss-Newton matrix is not finite; check the "
                                  "sample rows and the model")
            B = _bfgs(H, pairs) if secant and pairs else H
            eig = None
            top, v_top = _top_eigenvalue(B, v_top)
            top = max(top, 1e-300)
            if mu is None:
                mu = 1e-6 * top
            tn = float(np.linalg.norm(theta))
            if kkt0 is None:
                kkt0 = kkt
            # the stopping test needs B's eigendecomposition; made only where a bound from
            # ||B|| and the gradient does not already prove that it fails
            b_norm = min(float(np.linalg.norm(B)), float(np.abs(B).sum(axis=1).max()))
            bound = newton_lower_bound(b_norm, g, theta, NULL_GTOL * kkt0) / max(tn, 1e-300)
            newton = None
            if kkt != 0.0 and tn > 0 and bound <= 2.0 * xtol:
                newton, g_null = exact_test()
            driver += time.perf_counter() - t0
            history.append({"iteration": iterations, "loss": L, "grad_norm": kkt,
                            "newton_step": newton, "newton_bound": bound, "mu": mu,
                            "top": top,
                            "passes": passes, "rejected": rejected,
                            "seconds": round(time.perf_counter() - t_start, 6)})
            if on_iter is not None:
                on_iter(history[-1])
            rejected = 0
            if kkt == 0.0 or (newton is not None and newton <= xtol
                              and g_null <= NULL_GTOL * kkt0):
                converged, reason = True, "sample-Newton step within xtol of theta"
                break
        if passes > max_iter:
            break
        t0 = time.perf_counter()
        new = None
        if eig is None and mu >= CHOL_MU * top:
            got = chol_ball_step(B, g, theta, radius, mu, lam_prev + mu_prev - mu)
            if got is not None:
                new, lam_prev = got
                mu_prev = mu
                d = new - theta
                pred = -(float(g @ d) + 0.5 * float(d @ B @ d))
                if not pred > 0:  # judged again on the eigendecomposition's step below
                    new = None
        if new is None:  # the eigendecomposition (made for the stopping test, or now: mu
            if eig is None:  # near B's rounding, B + mu I not positive definite to rounding)
                exact_test()
            new = ball_step(eig[0], eig[1], g, theta, radius, mu)
            d = new - theta
            pred = -(float(g @ d) + 0.5 * float(d @ B @ d))
        driver += time.perf_counter() - t0
        if not pred > 0:  # no decrease the model can see: damped to rounding
            if newton is None:
                t0 = time.perf_counter()
                newton, g_null = exact_test()
                driver += time.perf_counter() - t0
            converged = kkt == 0.0 or newton <= math.sqrt(xtol)
            reason = ("no predicted decrease (stationary to rounding)" if converged else
                      f"no step decreases the full loss at gradient norm {kkt:.3g} (a kink of "
                      "a non-smooth model, e.g. relu, or a loss flat to rounding)")
            break
        trial = full(new)
        passes += 1
        Ln = float(trial["loss"])
        gn = np.asarray(trial["grad"], dtype=np.float64)
        finite = np.isfinite(Ln) and bool(np.all(np.isfinite(gn)))
        kn = kkt_norm(new, gn, radius) if finite else np.inf
        if pred <= NOISE * abs(L):  # below what the loss resolves: judged by the gradient
            ok = finite and Ln <= L + SLACK * abs(L) and kn < kkt
            shrink = 1.0 / 3.0
        else:
            rho = ((L - Ln) if finite else -np.inf) / pred
            ok = rho > 1e-4
            shrink = max(1.0 / 3.0, 1.0 - (2.0 * min(rho, 1.0) - 1.0) ** 3) if ok else 1.0
        if ok:
            if secant:
                pairs.append((d, gn - g))
            theta, L, g, kkt = new, Ln, gn, kn
            iterations += 1
            fresh = True
            mu *= shrink
            nu = 2.0
        else:
            rejected += 1
            mu *= nu
            nu *= 2.0
            if mu > 1e20 * max(top, 1.0):
                if newton is None:
                    t0 = time.perf_counter()
                    newton, g_null = exact_test()
                    driver += time.perf_counter() - t0
                converged = newton <= math.sqrt(xtol)
                reason = ("no step decreases the full loss (stationary to rounding)" if converged
                          else f"no step decreases the full loss at gradient norm {kkt:.3g} (a "
                          "kink of a non-smooth model, e.g. relu, or a loss flat to rounding)")
                break
    return PrecondResult(theta, L, kkt, iterations, passes, converged, reason, history, driver,
                         eighs)


# --------------------------------------------------------------------------------------
# The choice: full Gauss-Newton or the preconditioned method
# --------------------------------------------------------------------------------------


def sample_oracle_any(model: Model, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray,
                      loss: str = "squared") -> Callable[[np.ndarray], dict]:
    """The weighted sample's (loss, gradient) oracle of :mod:`nldist.train` for any model
    class (cross-entropy, multi-output regression, a single output)."""
    if loss == "cross_entropy":
        return ce_oracle(model, Xs, ys, w)
    if model.n_outputs > 1:
        return multi_squared_oracle(model, Xs, ys, w)
    return sample_oracle(model, Xs, ys, w, loss)


def sample_passes(model: Model, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray,
                  theta0: np.ndarray, radius: float, loss: str = "squared",
                  tol: float = 1e-12, xtol: float = XTOL, max_iter: int = 200,
                  seed: int = 0) -> dict:
    """Passes each method is expected to need, from the sample alone (no read of X), each
    method run on the weighted sample in place of the full data:

    * Gauss-Newton: the oracle calls of the same method on the sample from theta0;
    * preconditioned: :func:`fit_precond` from theta0 on the sample, preconditioned by the
      Gauss-Newton matrix of the same rows with their weights times seeded Exp(1) draws (a
      Bayesian bootstrap: its error about the sample's H_S mimics H_S's about the full H,
      and no row drops out, so a rare category held by one sampled row stays represented).

    Returns
    -------
    dict with ``gn_passes``, ``precond_passes`` (None: it did not converge in ``max_iter``),
    ``driver_s_per_iteration`` (seconds of H_S and its eigendecomposition per iteration)
    """
    fit = train_on_sample(model, Xs, ys, w, radius, theta0=theta0, tol=tol,
                          max_iter=max_iter, loss=loss)
    gn = fit.oracle_calls if fit.oracle_calls else fit.iterations + 1
    xi = np.random.default_rng([seed, 0x27B0]).exponential(size=len(w))
    try:
        res = fit_precond(sample_oracle_any(model, Xs, ys, w, loss),
                          sample_gn(model, Xs, ys, w * xi, loss), theta0, radius,
                          xtol=xtol, max_iter=max_iter)
    except NldistError:
        res = None
    ok = res is not None and res.converged
    return {"gn_passes": int(gn), "precond_passes": res.passes if ok else None,
            "driver_s_per_iteration": (res.driver_s / max(1, res.passes)) if res else 0.0}


def chunk_costs(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                loss: str = "squared", repeat: int = 2) -> dict:
    """Seconds per row of a gradient block (:func:`grad_block`) and of a Gauss-Newton block
    (:func:`nldist.train.gn_block`, J^T J) on one chunk already in memory (best of
    ``repeat``; the read is timed by the caller)."""
    out = {}
    for name, fn in (("grad", grad_block), ("gn", gn_block)):
        best = math.inf
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            fn(model, theta, X, y, 0, loss)
            best = min(best, time.perf_counter() - t0)
        out[f"{name}_s_per_row"] = best / max(1, len(X))
    return out


def choose(grad_pass_s: float, n_rows: int, costs: dict, passes: dict,
           parallel: int = 1) -> dict:
    """Pick ``gn`` or ``precond`` by estimated wall time.

    A gradient pass costs ``grad_pass_s`` (one measured: the preconditioned method's first
    pass); a Gauss-Newton pass that plus ``n_rows / parallel`` x the extra compute per row of
    forming J^T J (``costs``: both blocks timed on one chunk). The preconditioned method adds
    ``passes["driver_s_per_iteration"]`` (H_S and its eigendecomposition) per pass on the
    driver.

    Returns
    -------
    dict: ``method``, ``reason``, ``estimate`` (seconds and passes of each)
    """
    pc_pass = float(grad_pass_s)
    gn_pass = pc_pass + n_rows / max(1, parallel) * max(
        0.0, costs["gn_s_per_row"] - costs["grad_s_per_row"])
    gn_s = passes["gn_passes"] * gn_pass
    driver_s = passes["driver_s_per_iteration"]
    est = {"gn": {"passes": passes["gn_passes"], "seconds": gn_s, "seconds_per_pass": gn_pass},
           "precond": {"passes": passes["precond_passes"], "seconds_per_pass": pc_pass,
                       "driver_s_per_pass": driver_s}}
    if passes["precond_passes"] is None:
        return {"method": "gn", "estimate": est,
                "reason": "the preconditioned method did not converge on the sample (its rows "
                          "preconditioned by a bootstrap of them): full Gauss-Newton"}
    pc_s = passes["precond_passes"] * (pc_pass + driver_s)
    est["precond"]["seconds"] = pc_s
    ratio = costs["gn_s_per_row"] / max(costs["grad_s_per_row"], 1e-300)
    why = (f"gradient pass {pc_pass:.3g} s vs Gauss-Newton pass {gn_pass:.3g} s (compute "
           f"{ratio:.1f}x per row); ~{passes['precond_passes']} preconditioned passes vs "
           f"~{passes['gn_passes']} Gauss-Newton passes (estimated on the sample)")
    if pc_s < gn_s:
        return {"method": "precond", "estimate": est,
                "reason": f"preconditioned: est. {pc_s:.3g} s < Gauss-Newton {gn_s:.3g} s; "
                          + why}
    return {"method": "gn", "estimate": est,
            "reason": f"Gauss-Newton: est. {gn_s:.3g} s <= preconditioned {pc_s:.3g} s; " + why}
