"""Training constrained to the ball ||theta|| <= R (MATH.md §4, the paper's problem (12)).

The solver is a Levenberg-Marquardt / trust-region method on the ball: each step minimizes
the Gauss-Newton model ``L + g^T d + 1/2 d^T (H + mu I) d`` exactly over the ball (an
eigendecomposition of the small p x p matrix and a 1-D root find), and mu adapts to the
ratio of actual to predicted decrease. It needs an *oracle* theta -> (L, g, H) with
H = 2 J^T W J; two are provided:

* :func:`sample_oracle`: the weighted sample on one node, in PyTorch (``torch.func.jacfwd``).
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
per evaluation (:func:`gn_block`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import optimize

from nldist._checks import check_finite_block
from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.losses import check_labels, get_loss, softmax, targets
from nldist.scores.linalg import kron_gram

Oracle = Callable[[np.ndarray], dict]

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


def ce_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
              ) -> Oracle:
    """(loss, gradient) of the weighted cross-entropy ``sum_i w_i CE_i(theta)`` of a C-output
    model: a NumPy vector-Jacobian product for closed forms (``softmax:<C>``), torch
    autograd otherwise."""
    ce = get_loss("cross_entropy")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    yi = check_labels(y, model.n_outputs)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    if model.closed_form:
        kron = getattr(model, "kron_design", None)
        Xd = None if kron is None else kron(X)

        def oracle(theta: np.ndarray) -> dict:
            Z = model.predict(theta, X)
            ell = ce.row_loss(Z, yi)
            P = softmax(Z)
            E = P.copy()
            E[np.arange(len(yi)), yi] -= 1.0
            out = {"loss": float(w @ ell), "grad": model.vjp(theta, X, w[:, None] * E)}
            if Xd is not None:  # softmax: the exact Hessian sum_i w_i H_i (x) x~ x~^T
                out["gn"] = kron_gram(w[:, None, None] * (
                    P[:, :, None] * np.eye(P.shape[1])[None] - P[:, :, None] * P[:, None, :]),
                    Xd)
            return out

        return oracle
    import torch

    return _torch_grad_oracle(model, X, yi, w, lambda Z, yt: torch.nn.functional.cross_entropy(
        Z, yt, reduction="none"))


def _torch_grad_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                       row_loss: Callable) -> Oracle:
    """(loss, gradient) of ``sum_i w_i row_loss(f_i(theta), y_i)`` by torch autograd, for a
    C-output network (``row_loss`` maps the (n, C) outputs and y to (n,) losses)."""
    import torch

    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(y)
    wt = torch.as_tensor(w)

    def oracle(theta: np.ndarray) -> dict:
        th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        L = (wt * row_loss(model.torch_forward(th, Xt), yt)).sum()
        (g,) = torch.autograd.grad(L, th)
        return {"loss": float(L.detach()), "grad": g.numpy()}

    return oracle


def multi_squared_oracle(model: Model, X: np.ndarray, y: np.ndarray,
                         w: np.ndarray | None = None) -> Oracle:
    """(loss, gradient) of the weighted multi-output squared loss
    ``sum_i w_i ||f_i(theta) - y_i||^2`` of a C-output model (y (n, C)): with the exact
    Gauss-Newton matrix ``2 sum_i w_i J_i^T J_i`` from the model's Jacobian for closed forms
    (``softmax:<C>`` as a linear C-output regression), torch autograd (gradient only) for
    networks."""
    Y = targets(y, len(X), model.n_outputs)
    w = np.ones(len(Y)) if w is None else np.asarray(w, dtype=np.float64)
    if model.closed_form:
        def oracle(theta: np.ndarray) -> dict:
            R = model.predict(theta, X) - Y
            J = model.jacobian(theta, X)  # (n, C, p)
            wR = w[:, None] * R
            return {"loss": float((wR * R).sum()),
                    "grad": 2.0 * np.einsum("nc,ncp->p", wR, J),
                    "gn": 2.0 * np.einsum("n,ncp,ncq->pq", w, J, J)}

        return oracle
    return _torch_grad_oracle(model, X, Y, w, lambda Z, Yt: ((Z - Yt) * (Z - Yt)).sum(dim=1))


def sample_oracle(
    model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray, loss: str = "squared"
) -> Oracle:
    """Oracle of the weighted sample loss sum_j w_j (f_j(theta) - y_j)^2 in PyTorch.

    Parameters
    ----------
    model : Model
    X : ndarray (s, d)
    y : ndarray (s,)
    w : ndarray (s,)
        Importance weights 1 / (s pi_j).
    loss : str
        ``"squared"``, or a loss of :mod:`nldist.models.losses`: then sum_j w_j r_j(theta)^2 with
        its residuals r_j and J_r = dr/df * J.

    Models with closed forms (``model.closed_form``: linear, GLM, relu2) are evaluated in
    NumPy (their own ``predict`` and ``jacobian``, as the distributed passes do): no torch
    import or warm-up for them. Others run on torch.func.
    """
    if model.closed_form:
        return _numpy_oracle(model, X, y, w, loss)
    import torch
    from torch.func import jacfwd, jvp

    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64))
    res = None
    if loss != "squared":
        lo = get_loss(loss)
        lo.check(None, np.asarray(y, dtype=np.float64))
        res = lo.torch_residual
    # per-row gradients: a model's own torch_jacobian (torch.func per-sample gradients for
    # networks), else forward-mode over theta (cheap for small p)
    jac = getattr(model, "torch_jacobian", None)

    def fwd(t: Any) -> Any:
        return model.torch_forward(t, Xt)

    def oracle(theta: np.ndarray) -> dict:
        th = torch.as_tensor(theta, dtype=torch.float64)
        with torch.no_grad():
            f = fwd(th)
            J = jac(th, Xt) if jac is not None else jacfwd(fwd)(th)
            if res is None:
                r = f - yt
            else:
                r, dr = jvp(lambda v: res(v, yt), (f,), (torch.ones_like(f),))
                J = J * dr[:, None]
            wr = wt * r
            return {
                "loss": float((wr * r).sum()),
                "grad": (2.0 * (J.T @ wr)).numpy(),
                "gn": (2.0 * (J.T @ (wt[:, None] * J))).numpy(),
            }

    return oracle


def _numpy_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray, loss: str
                  ) -> Oracle:
    """:func:`sample_oracle` in NumPy for closed-form models."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    lo = None if loss == "squared" else get_loss(loss)
    if lo is not None:
        lo.check(None, y)

    def oracle(theta: np.ndarray) -> dict:
        f = model.predict(theta, X)
        J = model.jacobian(theta, X)
        if lo is None:
            r = f - y
        else:
            r = lo.residual(f, y)
            J = J * lo.dresidual(f, y)[:, None]
        wr = w * r
        return {"loss": float(wr @ r), "grad": 2.0 * (J.T @ wr),
                "gn": 2.0 * (J.T @ (w[:, None] * J))}

    return oracle


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


# --------------------------------------------------------------------------------------
# Full-data pieces (one row block each; nldist.graph reduces them over blocks)
# --------------------------------------------------------------------------------------


def gn_block(
    model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, offset: int = 0,
    loss: str = "squared",
) -> dict:
    """Loss, gradient and Gauss-Newton matrix of L = sum (f_i - y_i)^2 on one block.

    With another ``loss`` (:mod:`nldist.models.losses`) the same for L = sum r_i^2, with
    J_r = dr/df * J.

    Returns
    -------
    dict with ``loss`` (float), ``grad`` (p,), ``gn`` (p, p) = 2 J^T J — for
    ``cross_entropy`` the CE's own (loss, gradient) and, for ``softmax:<C>``, its exact
    Hessian (:func:`ce_oracle`; networks have no ``gn``: :func:`fit_cross_entropy`)
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    y = np.asarray(y, dtype=np.float64)
    if loss == "cross_entropy":
        return ce_oracle(model, np.asarray(X, dtype=np.float64), y)(theta)
    if model.n_outputs > 1:
        return multi_squared_oracle(model, np.asarray(X, dtype=np.float64), y)(theta)
    if loss == "squared":
        r = model.predict(theta, X) - y
        J = model.jacobian(theta, X)
    else:
        lo = get_loss(loss)
        f = model.predict(theta, X)
        lo.check(f, y)
        r = lo.residual(f, y)
        J = model.jacobian(theta, X) * lo.dresidual(f, y)[:, None]
    return {"loss": float(r @ r), "grad": 2.0 * (J.T @ r), "gn": 2.0 * (J.T @ J)}


def combine_sum(parts: list[dict]) -> dict:
    """Sum dicts of arrays/scalars key by key (tree-reduction step)."""
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def losses_block(
    model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str = "squared"
) -> np.ndarray:
    """Full-data loss contributions of several parameter vectors at once.

    Parameters
    ----------
    thetas : ndarray (m, p)
    loss : str
        ``"squared"``: sum_i (f(theta_j; x_i) - y_i)^2; another loss: sum_i r_i(theta_j)^2.

    Returns
    -------
    ndarray (m,) over the block's rows
    """
    y = np.asarray(y, dtype=np.float64)
    lo = None if loss == "squared" else get_loss(loss)
    out = np.empty(thetas.shape[0])
    for j, th in enumerate(thetas):
        f = model.predict(th, X)
        if lo is None:
            r = (f - y).reshape(-1)  # multi-output regression: summed over the outputs
        else:
            lo.check(f, y)
            r = lo.residual(f, y)
        out[j] = r @ r
    return out


def estimate_losses(model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray,
                    rate: float, loss: str = "squared") -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimates of the full-data losses of several thetas from a Bernoulli sample.

    Rows that joined the evaluation sample independently with probability ``rate`` give
    the Horvitz-Thompson estimate ``L̂ = Σ_E ℓ_i / rate`` of ``L = Σ_i ℓ_i`` (the loss of
    :func:`losses_block`), with the unbiased variance estimate
    ``(1 - rate) Σ_E ℓ_i² / rate²``.

    Parameters
    ----------
    thetas : ndarray (m, p)
    X : ndarray (k, d), y : ndarray (k,)
        The evaluation rows.
    rate : float in (0, 1]

    Returns
    -------
    estimate : ndarray (m,)
    standard_error : ndarray (m,) (0 when rate = 1: the exact loss)
    """
    if not 0 < rate <= 1:
        raise NldistError(f"evaluation rate must be in (0, 1], got {rate}")
    est = np.empty(len(thetas))
    se = np.empty(len(thetas))
    for j, th in enumerate(thetas):
        ell = row_losses_block(model, th, X, y, loss) if len(X) else np.zeros(0)
        est[j] = float(ell.sum()) / rate
        se[j] = float(np.sqrt((1.0 - rate) * float(ell @ ell))) / rate
    return est, se


def row_losses_block(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                     loss: str = "squared") -> np.ndarray:
    """Per-row loss r_i(theta)^2 (n_b,) of one block (squared: (f_i - y_i)^2; multi-output
    regression: ||f_i - y_i||^2, summed over the outputs)."""
    r2 = np.asarray(get_loss(loss).residual(model.predict(theta, X), y), dtype=np.float64) ** 2
    return r2.sum(axis=1) if r2.ndim == 2 else r2
