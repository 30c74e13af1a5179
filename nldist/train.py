"""Training constrained to the ball ||theta|| <= R (MATH.md §4, the paper's problem (12)).

The solver is a Levenberg-Marquardt / trust-region method on the ball: each step minimizes
the Gauss-Newton model ``L + g^T d + 1/2 d^T (H + mu I) d`` exactly over the ball (an
eigendecomposition of the small p x p matrix and a 1-D root find), and mu adapts to the
ratio of actual to predicted decrease. It needs an *oracle* theta -> (L, g, H) with
H = 2 J^T W J; two are provided:

* :func:`sample_oracle`: the weighted sample on one node, in PyTorch (``torch.func.jacfwd``).
* :func:`nldist.graph.gn_pass`: the full data, one distributed pass per call.

Stopping rule (the stated tolerance): an accepted step whose relative decrease
``(L_old - L_new) / L_old`` is below ``tol`` (default 1e-12), or a step whose
predicted decrease is below ``tol * L``; ``max_iter`` caps the iterations.
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
from nldist.models.losses import get_loss

Oracle = Callable[[np.ndarray], dict]


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
        raise NldistError("the loss is not finite at the starting point; check data and model")
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
    dict with ``loss`` (float), ``grad`` (p,), ``gn`` (p, p) = 2 J^T J
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    y = np.asarray(y, dtype=np.float64)
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
            r = f - y
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
    """Per-row loss r_i(theta)^2 (n_b,) of one block (squared: (f_i - y_i)^2)."""
    r = get_loss(loss).residual(model.predict(theta, X), y)
    return np.asarray(r, dtype=np.float64) ** 2
