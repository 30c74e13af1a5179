"""The driver :func:`fit_precond` and its result: the sample as the Hessian of the full-data
problem (MATH.md §9, "The sample as a preconditioner"; issue 27): exact full-data gradients,
a sample's Gauss-Newton matrix.

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

import numpy as np
from scipy import linalg

from nldist.errors import NldistError
from nldist.precond.sample_model import bfgs, top_eigenvalue
from nldist.precond.steps import ball_step, chol_ball_step, kkt_norm, newton_lower_bound
from nldist.train import project_ball

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
            B = bfgs(H, pairs) if secant and pairs else H
            eig = None
            top, v_top = top_eigenvalue(B, v_top)
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
