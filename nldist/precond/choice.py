"""The choice between full Gauss-Newton and the preconditioned method (:func:`choose`).

A full Gauss-Newton pass forms J^T J (n p^2 per row), a gradient pass n p; a gradient pass is
timed, the extra per-row cost of J^T J on one chunk (:func:`chunk_costs`), the passes each
needs estimated by running both methods on the sample (:func:`sample_passes`), and the
cheaper estimate wins.
"""

from __future__ import annotations

import math
import time

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.precond.driver import XTOL, fit_precond
from nldist.precond.gradient import grad_block, sample_oracle_any
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
