"""L-BFGS on all rows (issue 27: a candidate of ``nldist fit``'s choice): one full-data pass
per function evaluation, no sample, no p x p matrix.

Where a pass is a read of a small-p table (the 20M-row logistic store of bench/RESULTS.md:
L-BFGS 1e-6 in 5 passes, full Gauss-Newton 7, the preconditioned method 5 plus the sample's
read) the cheapest pass wins and the curvature a quasi-Newton method gathers from the
gradients is enough. scipy's L-BFGS-B (Byrd, Lu, Nocedal & Zhu 1995; without bounds) with
its relative-decrease stop ``(f_k - f_{k+1}) / max(|f_k|, |f_{k+1}|, 1) <= tol``, the rule
:func:`nldist.train.fit_ball` stops Gauss-Newton by. Its line search only accepts points of
sufficient decrease, so the loss it returns never exceeds the start's.

L-BFGS does not see the ball ||theta|| <= R: :func:`fit_lbfgs` reports whether its result
lies inside it (``inside``); a caller whose constraint is active finishes from the
projection with a method that takes the ball exactly (``nldist fit``: the preconditioned
method), and the choice only offers L-BFGS where the sample's L-BFGS optimum lies inside.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
from scipy import optimize

from nldist.precond.driver import PrecondResult
from nldist.precond.steps import kkt_norm
from nldist.train import project_ball

#: curvature pairs kept (scipy's ``maxcor``)
MEMORY = 20


def fit_lbfgs(full: Callable[[np.ndarray], dict], theta0: np.ndarray, radius: float,
              tol: float = 1e-12, max_iter: int = 100, memory: int = MEMORY,
              on_iter: Callable[[dict], None] | None = None,
              start: dict | None = None) -> tuple[PrecondResult, bool]:
    """Minimize the full-data loss by L-BFGS from ``theta0`` projected on the ball.

    Parameters
    ----------
    full : callable theta (p,) -> {"loss": float, "grad": (p,)}
        The exact full-data oracle (one distributed pass per call).
    theta0 : ndarray (p,)
    radius : float
        The ball's radius: the start is projected on it; the result is checked against it.
    tol : float
        Relative-decrease tolerance (module docstring).
    max_iter : int
        Most oracle calls (passes).
    memory : int
        Curvature pairs kept.
    on_iter : callable dict -> None, optional
        Called after every pass with ``iteration``, ``loss``, ``grad_norm`` (KKT norm over
        the ball), ``passes`` and ``seconds`` (since the start).
    start : dict, optional
        The oracle's value at the projected start, when already computed (the choice's
        timed pass): not computed again.

    Returns
    -------
    (PrecondResult, bool)
        The result (``iterations``: L-BFGS iterations; ``passes``: oracle calls; ``history``
        one entry per pass) and whether its theta lies inside the ball.
    """
    x0 = project_ball(np.asarray(theta0, dtype=np.float64), radius)
    t0 = time.perf_counter()
    history: list[dict] = []
    best: dict = {}

    def f(theta: np.ndarray) -> tuple[float, np.ndarray]:
        out = start if (start is not None and not history and np.array_equal(theta, x0)) \
            else full(theta)
        loss, g = float(out["loss"]), np.asarray(out["grad"], dtype=np.float64)
        rec = {"iteration": len(history), "loss": loss,
               "grad_norm": kkt_norm(theta, g, radius), "passes": len(history) + 1,
               "seconds": round(time.perf_counter() - t0, 6)}
        history.append(rec)
        if not best or loss < best["loss"]:
            best.update(loss=loss, theta=theta.copy(), grad_norm=rec["grad_norm"])
        if on_iter is not None:
            on_iter(rec)
        return loss, g

    r = optimize.minimize(f, x0, jac=True, method="L-BFGS-B",
                          options={"maxiter": max_iter, "maxfun": max_iter, "ftol": tol,
                                   "gtol": 0.0, "maxcor": memory})
    theta = best["theta"]
    inside = bool(np.linalg.norm(theta) <= radius * (1.0 + 1e-12))
    msg = r.message if isinstance(r.message, str) else str(r.message)
    converged = bool(r.success)
    res = PrecondResult(theta=theta, loss=best["loss"], grad_norm=best["grad_norm"],
                        iterations=int(r.nit), passes=len(history), converged=converged,
                        reason=f"L-BFGS: {msg.lower()}", history=history)
    return res, inside
