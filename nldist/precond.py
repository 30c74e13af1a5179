"""The sample as the Hessian of the full-data problem (MATH.md §9, "The sample as a
preconditioner"; issue 27): exact full-data gradients, a sample's Gauss-Newton matrix.

Each iteration of :func:`fit_precond` costs one distributed pass that returns the exact
full-data loss L(theta) and gradient g (:func:`grad_block` per chunk: n p work per row, no
p x p matrix per row), and a step from the *sample's* model

    m(d) = L + g^T d + 1/2 d^T (B + mu I) d,    B = H_S(theta) (+ secant corrections)

minimized exactly over the ball ||theta + d|| <= R (an eigendecomposition of the p x p
matrix and a 1-D root find, as :func:`nldist.train.ball_qp`). H_S = sum_j w_j H_j(theta)
is the weighted Gauss-Newton matrix of the sample rows (weights 1 / (s pi_j): an unbiased
estimate of the full H; a subspace embedding when the rows were drawn by leverage), taken
again at every accepted theta from the same rows on the driver (no read of X). A step is
accepted only when the full loss decreases (the ratio of actual to predicted decrease, as
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
H, ||theta - theta*|| <= ||d_N|| / (1 - eps) near theta*.

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
from scipy import optimize

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
            oracle = ce_oracle(model, Xs, ys, w)
            return lambda theta: oracle(theta)["gn"]
        check_labels(np.asarray(ys).reshape(-1), model.n_outputs)
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "cross_entropy")
    if model.n_outputs > 1:
        if model.closed_form:
            oracle = multi_squared_oracle(model, Xs, ys, w)
            return lambda theta: oracle(theta)["gn"]
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "multi")
    oracle = sample_oracle(model, Xs, ys, w, loss)
    return lambda theta: oracle(theta)["gn"]


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
        ||d_N|| / ||theta||), ``mu``, ``passes``, ``seconds`` (since the start), and
        ``rejected`` (trials rejected before it).
    driver_s : float
        Seconds spent on the driver (H_S, secant updates, eigendecompositions).
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


def _bfgs(B: np.ndarray, pairs: Any) -> np.ndarray:
    """B updated by BFGS with the curvature pairs (s, y) in order (a pair with y^T s <= 0 or
    s^T B s <= 0 skipped)."""
    B = B.copy()
    for s, y in pairs:
        ys = float(y @ s)
        Bs = B @ s
        sBs = float(s @ Bs)
        if ys <= 1e-12 * float(np.linalg.norm(y) * np.linalg.norm(s)) or sBs <= 0:
            continue
        B += np.outer(y, y) / ys - np.outer(Bs, Bs) / sBs
    return 0.5 * (B + B.T)


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
    B = e = V = None
    top = newton = 0.0
    kkt0: float | None = None

    while True:
        if fresh:
            fresh = False
            t0 = time.perf_counter()
            H = np.asarray(hessian(theta), dtype=np.float64)
            if H.shape != (theta.size, theta.size) or not np.all(np.isfinite(H)):
                raise NldistError("the sample's Gauss-Newton matrix is not finite; check the "
                                  "sample rows and the model")
            B = _bfgs(H, pairs) if secant and pairs else H
            e, V = np.linalg.eigh(B)
            e = np.maximum(e, 0.0)
            top = max(float(e[-1]), 1e-300)
            if mu is None:
                mu = 1e-6 * top
            # the sample-Newton step on the range of B; the gradient off it (directions no
            # sample row and no curvature pair sees: a parametrisation's redundancy, e.g.
            # softmax's shift of all classes, where the full gradient is rounding) apart
            cg = V.T @ g
            null = e <= RCOND * top
            g_null = float(np.linalg.norm(cg[null]))
            dn = ball_step(e, V, V[:, ~null] @ cg[~null], theta, radius, 1e-12 * top) - theta
            driver += time.perf_counter() - t0
            tn = float(np.linalg.norm(theta))
            newton = float(np.linalg.norm(dn)) / max(tn, 1e-300)
            if kkt0 is None:
                kkt0 = kkt
            history.append({"iteration": iterations, "loss": L, "grad_norm": kkt,
                            "newton_step": newton, "mu": mu, "passes": passes,
                            "rejected": rejected,
                            "seconds": round(time.perf_counter() - t_start, 6)})
            if on_iter is not None:
                on_iter(history[-1])
            rejected = 0
            if kkt == 0.0 or (tn > 0 and newton <= xtol and g_null <= NULL_GTOL * kkt0):
                converged, reason = True, "sample-Newton step within xtol of theta"
                break
        if passes > max_iter:
            break
        t0 = time.perf_counter()
        new = ball_step(e, V, g, theta, radius, mu)
        d = new - theta
        pred = -(float(g @ d) + 0.5 * float(d @ B @ d))
        driver += time.perf_counter() - t0
        if not pred > 0:  # no decrease the model can see: damped to rounding
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
                converged = newton <= math.sqrt(xtol)
                reason = ("no step decreases the full loss (stationary to rounding)" if converged
                          else f"no step decreases the full loss at gradient norm {kkt:.3g} (a "
                          "kink of a non-smooth model, e.g. relu, or a loss flat to rounding)")
                break
    return PrecondResult(theta, L, kkt, iterations, passes, converged, reason, history, driver)


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
