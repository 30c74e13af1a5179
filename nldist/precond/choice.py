"""The choice between full Gauss-Newton, the preconditioned method and L-BFGS on all rows
(:func:`choose`).

A full Gauss-Newton pass forms J^T J (n p^2 per row), a gradient pass n p (the
preconditioned method's and L-BFGS's); a gradient pass is timed, the extra per-row cost of
J^T J on one chunk (:func:`chunk_costs`), the passes each needs estimated by running the
three methods on the sample (:func:`sample_passes`), and the cheapest estimate wins.
"""

from __future__ import annotations

import math
import time

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.precond.driver import XTOL, fit_precond
from nldist.precond.gradient import grad_block, sample_oracle_any
from nldist.precond.lbfgs import fit_lbfgs
from nldist.precond.sample_model import sample_gn
from nldist.train import gn_block, train_on_sample


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
      and no row drops out, so a rare category held by one sampled row stays represented);
    * L-BFGS: :func:`fit_lbfgs` on the sample from theta0 with the Gauss-Newton tolerance
      (curvature it gathers from gradients: the sample's conditioning is the full data's
      when the sample is a subspace embedding).

    Returns
    -------
    dict with ``gn_passes``, ``precond_passes`` (None: it did not converge in ``max_iter``),
    ``lbfgs_passes`` (None: it did not converge, or its optimum leaves the ball, which
    L-BFGS does not see), ``driver_s_per_iteration`` (seconds of H_S and its
    eigendecomposition per iteration)
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
    lb, inside = fit_lbfgs(sample_oracle_any(model, Xs, ys, w, loss), theta0, radius, tol=tol,
                           max_iter=max_iter)
    return {"gn_passes": int(gn), "precond_passes": res.passes if ok else None,
            "lbfgs_passes": lb.passes if lb.converged and inside else None,
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
    """Pick ``gn``, ``precond`` or ``lbfgs`` by estimated wall time.

    A gradient pass costs ``grad_pass_s`` (one measured: the preconditioned method's first
    pass); a Gauss-Newton pass that plus ``n_rows / parallel`` x the extra compute per row of
    forming J^T J (``costs``: both blocks timed on one chunk). The preconditioned method adds
    ``passes["driver_s_per_iteration"]`` (H_S and its factorizations) per pass on the driver;
    L-BFGS costs its gradient passes. A method whose run on the sample did not converge
    (``passes[...]`` None; for L-BFGS also an optimum outside the ball) is not a candidate;
    Gauss-Newton always is. Ties go to Gauss-Newton, then the preconditioned method.

    Returns
    -------
    dict: ``method``, ``reason``, ``estimate`` (seconds and passes of each)
    """
    pc_pass = float(grad_pass_s)
    gn_pass = pc_pass + n_rows / max(1, parallel) * max(
        0.0, costs["gn_s_per_row"] - costs["grad_s_per_row"])
    driver_s = passes["driver_s_per_iteration"]
    est = {"gn": {"passes": passes["gn_passes"], "seconds_per_pass": gn_pass,
                  "seconds": passes["gn_passes"] * gn_pass},
           "precond": {"passes": passes["precond_passes"], "seconds_per_pass": pc_pass,
                       "driver_s_per_pass": driver_s},
           "lbfgs": {"passes": passes.get("lbfgs_passes"), "seconds_per_pass": pc_pass}}
    if passes["precond_passes"] is not None:
        est["precond"]["seconds"] = passes["precond_passes"] * (pc_pass + driver_s)
    if est["lbfgs"]["passes"] is not None:
        est["lbfgs"]["seconds"] = est["lbfgs"]["passes"] * pc_pass
    names = {"gn": "Gauss-Newton", "precond": "preconditioned", "lbfgs": "L-BFGS"}
    ranked = sorted((m for m in ("gn", "precond", "lbfgs") if "seconds" in est[m]),
                    key=lambda m: est[m]["seconds"])  # stable: ties keep this order
    best = ranked[0]
    ratio = costs["gn_s_per_row"] / max(costs["grad_s_per_row"], 1e-300)
    parts = [f"{names[m]} est. {est[m]['seconds']:.3g} s (~{est[m]['passes']} passes)"
             for m in ranked]
    left = [names[m] + (" did not converge on the sample" if m == "precond" else
                        " did not converge on the sample or left the ball")
            for m in ("precond", "lbfgs") if "seconds" not in est[m]]
    why = (f"{names[best]}: " + " <= ".join(parts)
           + (f" ({'; '.join(left)})" if left else "")
           + f"; gradient pass {pc_pass:.3g} s vs Gauss-Newton pass {gn_pass:.3g} s "
             f"(compute {ratio:.1f}x per row), passes estimated on the sample")
    return {"method": best, "estimate": est, "reason": why}
