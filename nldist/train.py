"""Training constrained to the ball ||theta|| <= R (MATH.md §4, the paper's problem (12)).

The solver is a Levenberg-Marquardt / trust-region method on the ball: each step minimizes
the Gauss-Newton model ``L + g^T d + 1/2 d^T (H + mu I) d`` exactly over the ball (an
eigendecomposition of the small p x p matrix and a 1-D root find), and mu adapts to the
ratio of actual to predicted decrease. It needs an *oracle* theta -> (L, g, H) with
H = 2 J^T W J; two are provided:

* :func:`nldist.objectives.sample_oracle`: the weighted sample on one node, in PyTorch
  (``torch.func.jacfwd``).
* :func:`nldist.graph.oracles.gn_pass`: the full data, one distributed pass per call.

Stopping rule (the stated tolerance): an accepted step whose relative decrease
``(L_old - L_new) / L_old`` is below ``tol`` (default 1e-12), or a step whose
predicted decrease is below ``tol * L``; ``max_iter`` caps the iterations.

**Cross-entropy** (C-output models, ``loss: cross_entropy``): for ``softmax:<C>`` the same
Levenberg-Marquardt method with the exact Hessian ``sum_i w_i (diag pi_i - pi_i pi_i^T) (x)
x~_i x~_i^T`` as H (a Kronecker GEMM, :func:`nldist.scores.linalg.kron_gram`; cross-entropy
is convex in the logits, so Gauss-Newton is Newton), same stopping rule. Networks are
trained without a Jacobian (:func:`fit_ball_smooth`; their Gauss-Newton matrix would be
(C p) x p per row): the weighted loss ``sum_i w_i CE_i`` and its gradient (torch autograd)
drive L-BFGS (scipy); if its minimizer leaves the ball, the ball's optimum is the minimizer
of ``L + mu/2 ||theta||^2`` whose norm is R (regula falsi on log mu, warm-started L-BFGS
inside), else spectral projected gradient. Stated tolerance there: gradient ``||g||_inf``
(projected, on the sphere) at most ``CE_GTOL`` x its value at the start (or L-BFGS's
relative decrease below ``CE_FTOL``), ``||theta||`` within 1e-7 of R when the ball is
active. The full-data optimum uses the same methods, one distributed pass
per evaluation (:func:`nldist.objectives.gn_block`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.objectives import (
    Oracle,
    ce_oracle,
    combine_sum,
    estimate_losses,
    gn_block,
    losses_block,
    multi_squared_oracle,
    row_losses_block,
    sample_oracle,
)

#: the solvers, and the oracles and full-data pieces of :mod:`nldist.objectives` they are
#: also imported by (their home is that module)
__all__ = ["CE_FTOL", "CE_GTOL", "CE_MIN_ITER", "FitResult", "Oracle", "ball_qp", "ce_oracle",
           "combine_sum", "estimate_losses", "fit_ball", "fit_ball_smooth", "fit_cross_entropy",
           "gn_block", "losses_block", "multi_squared_oracle", "project_ball", "row_losses_block",
           "sample_oracle", "train_on_sample"]

#: cross-entropy training: relative gradient tolerance, L-BFGS relative decrease, fewest
#: L-BFGS iterations allowed per inner problem (first-order methods need more than
#: Gauss-Newton)
CE_GTOL = 1e-7
CE_FTOL = 1e-13
CE_MIN_ITER = 1000


@dataclass
class FitResult:
    """Result of :func:`fit_ball`.

    Attributes
    ----------
    theta : ndarray (p,)
    loss : float
        Objective at theta (sum of weighted squared residuals).
    iterations : int
    converged : bool
    oracle_calls : int
    history : list of float
        Loss after each accepted step.
    """

    theta: np.ndarray
    loss: float
    iterations: int
    converged: bool
    oracle_calls: int
    history: list[float] = field(default_factory=list)


def project_ball(theta: np.ndarray, radius: float) -> np.ndarray:
    """Euclidean projection onto {||theta|| <= radius}."""
    nrm = float(np.linalg.norm(theta))
    return theta if nrm <= radius else theta * (radius / nrm)


def ball_qp(A: np.ndarray, g: np.ndarray, theta: np.ndarray, radius: float) -> np.ndarray:
    """Minimize g^T (t - theta) + 1/2 (t - theta)^T A (t - theta) over ||t|| <= radius.

    Parameters
    ----------
    A : ndarray (p, p), symmetric positive semidefinite
    g : ndarray (p,)
    theta : ndarray (p,)
    radius : float

    Returns
    -------
    ndarray (p,): the minimizer t (KKT: (A + lam I) t = A theta - g, lam >= 0).
    """
    e, V = np.linalg.eigh(A)
    e = np.maximum(e, 0.0)
    c = V.T @ (A @ theta - g)
    emax = max(float(e[-1]), 1e-300)
    null = e <= 1e-13 * emax
    t0 = np.where(null, 0.0, c / np.where(null, 1.0, e))  # min-norm solution at lam = 0
    if np.linalg.norm(t0) <= radius and not np.any(null & (np.abs(c) > 1e-13 * np.abs(c).max())):
        return V @ t0

    def excess(log_lam: float) -> float:
        return float(np.linalg.norm(c / (e + np.exp(log_lam)))) - radius

    hi = np.log(max(np.linalg.norm(c) / radius, 1e-300)) + 1.0
    lo = hi - 80.0
    if excess(lo) <= 0:
        lam = np.exp(lo)
    else:
        lam = np.exp(optimize.brentq(excess, lo, hi, xtol=1e-14, rtol=1e-14, maxiter=200))
    t = V @ (c / (e + lam))
    return project_ball(t, radius)  # guard against rounding just outside


def fit_ball(
    oracle: Oracle,
    theta0: np.ndarray,
    radius: float,
    tol: float = 1e-12,
    max_iter: int = 200,
) -> FitResult:
    """Minimize a sum-of-squares loss over the ball ||theta|| <= radius.

    Parameters
    ----------
    oracle : callable theta (p,) -> {"loss": float, "grad": (p,), "gn": (p, p)}
    theta0 : ndarray (p,)
        Start (projected onto the ball).
    radius : float
    tol : float
        Relative-decrease tolerance (see module docstring).
    max_iter : int

    Returns
    -------
    FitResult
    """
    if not (np.isfinite(radius) and radius > 0):
        raise NldistError(f"ball radius must be a positive number, got {radius!r}")
    theta = project_ball(np.asarray(theta0, dtype=np.float64).copy(), radius)
    cur = oracle(theta)
    calls = 1
    if not np.isfinite(cur["loss"]):
        raise NldistError("the loss is not finite at the starting point (overflow: the features or "
                          "the target likely hold unstandardized or huge values); standardize "
                          "them (dataset.standardize: true) or rescale the columns")
    p = theta.size
    mu = 1e-6 * max(float(np.max(np.diag(cur["gn"]))), 1e-12)
    nu = 2.0
    history = [cur["loss"]]
    converged = False
    it = 0
    while it < max_iter:
        it += 1
        H, g, L = cur["gn"], cur["grad"], cur["loss"]
        new = ball_qp(H + mu * np.eye(p), g, theta, radius)
        d = new - theta
        pred = -(g @ d + 0.5 * d @ H @ d)
        if pred <= tol * max(L, 1e-300):
            converged = mu <= 1e-3 * max(float(np.max(np.diag(H))), 1e-12) or pred <= 0
            if converged:
                break
            mu, nu = mu / 10.0, 2.0
            continue
        trial = oracle(new)
        calls += 1
        actual = L - trial["loss"] if np.isfinite(trial["loss"]) else -np.inf
        rho = actual / pred
        if rho > 1e-4:
            theta, cur = new, trial
            history.append(cur["loss"])
            mu *= max(1.0 / 3.0, 1.0 - (2.0 * rho - 1.0) ** 3)
            nu = 2.0
            if actual <= tol * max(L, 1e-300):
                converged = True
                break
        else:
            mu *= nu
            nu *= 2.0
            if mu > 1e20 * max(float(np.max(np.diag(H))), 1.0):
                converged = True  # no representable decrease: stationary to rounding
                break
    return FitResult(theta, float(cur["loss"]), it, converged, calls, history)


def fit_ball_smooth(
    oracle: Oracle, theta0: np.ndarray, radius: float, gtol: float = CE_GTOL,
    max_iter: int = CE_MIN_ITER,
) -> FitResult:
    """Minimize a smooth loss over the ball ||theta|| <= radius from (loss, gradient) alone.

    L-BFGS (scipy) on the loss itself; when its minimizer leaves the ball, the ball's
    optimum is the minimizer of ``L + mu/2 ||theta||^2`` whose norm is the radius (the KKT
    conditions; for a convex loss ||theta(mu)|| decreases with mu), so mu is found by
    Illinois regula falsi on ``log mu`` in a bracket grown by doubling steps, each inner
    problem by L-BFGS warm-started at the last one; when no mu reaches the radius (a
    non-convex loss: the penalized minimizers jump between basins), spectral projected
    gradient from the projection (:func:`_spg`). Stated tolerance: inner gradient
    ``||g||_inf <= gtol * ||g(theta0)||_inf`` (or a relative decrease below ``CE_FTOL``), the
    norm within ``1e-7`` of the radius (the projected gradient for the SPG fallback).

    Parameters
    ----------
    oracle : callable theta (p,) -> {"loss": float, "grad": (p,)}
    theta0 : ndarray (p,)
    radius : float
    gtol : float
    max_iter : int
        L-BFGS iterations per inner problem.

    Returns
    -------
    FitResult
    """
    if not (np.isfinite(radius) and radius > 0):
        raise NldistError(f"ball radius must be a positive number, got {radius!r}")
    calls = [0]
    history: list[float] = []
    cache: dict[bytes, tuple[float, np.ndarray]] = {}

    def f(t: np.ndarray) -> tuple[float, np.ndarray]:
        key = t.tobytes()
        if key not in cache:
            calls[0] += 1
            out = oracle(t)
            if len(cache) > 4:
                cache.clear()
            cache[key] = float(out["loss"]), np.asarray(out["grad"], dtype=np.float64)
        return cache[key]

    theta = project_ball(np.asarray(theta0, dtype=np.float64).copy(), radius)
    L, g = f(theta)
    if not np.isfinite(L):
        raise NldistError("the loss is not finite at the starting point (overflow: the features or "
                          "the target likely hold unstandardized or huge values); standardize "
                          "them (dataset.standardize: true) or rescale the columns")
    atol = gtol * max(float(np.max(np.abs(g))), 1e-300)
    iters = [0]
    ok = [True]

    def solve(mu: float, start: np.ndarray, limit: int = max_iter) -> np.ndarray:
        def fun(t: np.ndarray) -> tuple[float, np.ndarray]:
            v, gr = f(t)
            return v + 0.5 * mu * float(t @ t), gr + mu * t

        res = optimize.minimize(fun, start, jac=True, method="L-BFGS-B",
                                options={"maxiter": limit, "ftol": CE_FTOL, "gtol": atol,
                                         "maxcor": 20})
        iters[0] += int(res.nit)
        ok[0] = ok[0] and (bool(res.success) or res.nit < limit)
        history.append(float(res.fun))
        return res.x

    free = solve(0.0, theta, min(max_iter, 100))  # a short look: inside or outside?
    if float(np.linalg.norm(free)) <= radius and not ok[0]:
        ok[0] = True
        free = solve(0.0, free)
    if float(np.linalg.norm(free)) <= radius:
        Lf, _ = f(free)
        return FitResult(free, Lf, iters[0], ok[0], calls[0], history)
    ok[0] = True
    # the optimum is on the sphere: mu with ||theta(mu)|| = radius
    last = [project_ball(free, radius)]

    def psi(log_mu: float) -> float:
        last[0] = solve(float(np.exp(log_mu)), last[0])
        return float(np.linalg.norm(last[0])) / radius - 1.0

    _, gp = f(last[0])
    mu0 = max(abs(float(gp @ last[0])) / radius**2, 1e-12)  # the KKT multiplier's estimate
    lo, hi = np.log(mu0), np.log(mu0)
    vlo = vhi = psi(lo)
    step = 2.0
    while vhi > 0 and hi < 300:  # norm too large: more penalty
        lo, vlo = hi, vhi
        hi += step
        vhi = psi(hi)
        step *= 2
    while vlo < 0 and lo > -300:  # norm too small: less penalty
        hi, vhi = lo, vlo
        lo -= step
        vlo = psi(lo)
        step *= 2
    converged = ok[0]
    v = vhi
    if vlo >= 0 >= vhi and vlo != vhi:  # Illinois regula falsi on log mu (ends kept)
        side = 0
        for _ in range(60):
            mid = hi - vhi * (hi - lo) / (vhi - vlo)
            if not lo < mid < hi:
                mid = 0.5 * (lo + hi)
            v = psi(mid)
            if abs(v) <= 1e-8 or hi - lo <= 1e-12:
                break
            if v > 0:
                lo, vlo = mid, v
                vhi = vhi / 2 if side == 1 else vhi
                side = 1
            else:
                hi, vhi = mid, v
                vlo = vlo / 2 if side == -1 else vlo
                side = -1
    theta = project_ball(last[0], radius)
    if converged and abs(v) <= 1e-7:
        L, _ = f(theta)
        return FitResult(theta, L, iters[0], True, calls[0], history)
    # no mu gives the radius (a non-convex loss: the penalized minimizers jump between
    # basins): spectral projected gradient from the projection
    theta, L, done, k = _spg(f, theta, radius, atol, max_iter, history)
    return FitResult(theta, L, iters[0] + k, done, calls[0], history)


def _spg(f: Callable, theta: np.ndarray, radius: float, atol: float, max_iter: int,
         history: list[float]) -> tuple[np.ndarray, float, bool, int]:
    """Spectral projected gradient on the ball (Birgin, Martinez & Raydan 2000: Barzilai-
    Borwein steps, nonmonotone Armijo search over the last 10 values); stops when the
    projected gradient ``||P(theta - g) - theta||_inf <= atol``."""
    L, g = f(theta)
    step = 1.0 / max(float(np.max(np.abs(project_ball(theta - g, radius) - theta))), 1e-300)
    recent = [L]
    for k in range(1, max_iter + 1):
        if float(np.max(np.abs(project_ball(theta - g, radius) - theta))) <= atol:
            return theta, L, True, k
        d = project_ball(theta - step * g, radius) - theta
        gd = float(g @ d)
        if gd >= 0:
            return theta, L, True, k
        ref, alpha = max(recent[-10:]), 1.0
        for _ in range(60):
            new = theta + alpha * d
            Ln, gn = f(new)
            if np.isfinite(Ln) and Ln <= ref + 1e-4 * alpha * gd:
                break
            alpha *= 0.5
        else:
            return theta, L, False, k
        sv, yv = new - theta, gn - g
        sy = float(sv @ yv)
        step = float(np.clip((sv @ sv) / sy, 1e-30, 1e30)) if sy > 0 else 1e30
        theta, L, g = new, Ln, gn
        recent.append(L)
        history.append(L)
    return theta, L, False, max_iter


def fit_cross_entropy(oracle: Oracle, model: Model, theta0: np.ndarray, radius: float,
                      tol: float = 1e-12, max_iter: int = 200) -> FitResult:
    """A C-output model's loss over the ball by the method that fits the model (module
    docstring): :func:`fit_ball` with the exact Hessian for ``softmax:<C>`` (its oracle
    returns ``gn``: the CE Hessian, or for squared loss the Gauss-Newton matrix, exact for
    logits linear in theta), else :func:`fit_ball_smooth` from the gradient alone (networks;
    at least :data:`CE_MIN_ITER` iterations). ``oracle`` is :func:`ce_oracle` or
    :func:`multi_squared_oracle` on a sample, or a distributed pass of :func:`gn_block`."""
    if getattr(model, "kron_design", None) is not None:
        return fit_ball(oracle, theta0, radius, tol=tol, max_iter=max_iter)
    return fit_ball_smooth(oracle, theta0, radius, max_iter=max(max_iter, CE_MIN_ITER))


def train_on_sample(
    model: Model,
    X: np.ndarray,
    y: np.ndarray,
    weights: np.ndarray,
    radius: float,
    theta0: np.ndarray | None = None,
    tol: float = 1e-12,
    max_iter: int = 200,
    loss: str = "squared",
) -> FitResult:
    """Train on a weighted sample (single node, PyTorch) over the ball ||theta|| <= radius.

    Parameters
    ----------
    model : Model
    X : ndarray (s, d)
    y : ndarray (s,)
    weights : ndarray (s,)
    radius : float
    theta0 : ndarray (p,), optional
        Default ``model.initial_theta()`` (zeros for GLMs; a seeded random start for
        networks, where 0 is a stationary point).
    loss : str
        ``"squared"``, ``"bce"`` or ``"poisson"`` (:mod:`nldist.models.losses`).

    Returns
    -------
    FitResult
    """
    X = model.check_X(X)
    theta0 = model.initial_theta() if theta0 is None else model.check_theta(theta0)
    model.check_outputs(loss)
    if loss == "cross_entropy":
        return fit_cross_entropy(ce_oracle(model, X, y, weights), model, theta0, radius,
                                 tol=tol, max_iter=max_iter)
    if model.n_outputs > 1:  # multi-output regression (squared loss summed over outputs)
        return fit_cross_entropy(multi_squared_oracle(model, X, y, weights), model, theta0,
                                 radius, tol=tol, max_iter=max_iter)
    return fit_ball(sample_oracle(model, X, y, weights, loss), theta0, radius, tol=tol,
                    max_iter=max_iter)
