"""``nldist fit``: the full-data optimum theta* in fewer, cheaper passes (issue 27; MATH.md §9,
"The sample as a preconditioner").

From the pilot theta_0 (no pass over X) and a leverage sample drawn at theta_0 (the select
path's one-read sampler: :func:`sample_rows`), iterate to the full-data optimum over the ball:
each iteration one distributed pass for the exact full-data loss and gradient
(:func:`nldist.graph.oracles.grad_pass`: n p work per row) and a step from the sample's
Gauss-Newton model, refreshed at each accepted theta from the same rows on the driver
(:func:`nldist.precond.fit_precond`). Or full Gauss-Newton from theta_0 (one pass forming
J^T J per iteration, :func:`nldist.graph.oracles.gn_pass`), or L-BFGS on all rows (one
gradient pass per evaluation, :func:`nldist.precond.fit_lbfgs`), when that is estimated
cheaper: the choice (:func:`nldist.precond.choose`) times the first gradient pass (kept: it
is the chosen gradient method's first) and a gradient block and a Gauss-Newton block on one
chunk (the extra per-row cost of J^T J), and runs the three methods on the sample to count
the passes each needs; ``method`` forces one. Writes ``theta_fit.npy`` and ``metrics.json``
(``"mode": "fit"``: the choice and its reason, and per iteration the full loss, gradient
norm, time and passes).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from nldist import graph, precond
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.pipeline import budget, stages
from nldist.pipeline import oneread as oneread_stage
from nldist.pipeline.context import RunContext
from nldist.scores.kinds import get_kind
from nldist.scores.oneread import ONE_READ_KINDS
from nldist.store.records import save_npy, write_json
from nldist.train import fit_ball, fit_cross_entropy

#: what ``method`` may be
METHODS = ("auto", "precond", "gn", "lbfgs")
#: sample kinds whose H_S is a preconditioner (leverage: a subspace embedding; uniform for
#: comparison), by number of outputs; another job kind falls back to the first
EMBEDDING = {1: ("nonlinear-leverage", "linear-leverage", "ridge-leverage", "uniform"),
             2: ("block-leverage", "block-sketch", "uniform")}
#: fewest sample rows per parameter (H_S must have full rank)
ROWS_PER_PARAM = 4


def sample_kind(ctx: RunContext) -> str:
    """The kind the preconditioning sample is drawn by: the job's kind when it gives a
    subspace embedding (:data:`EMBEDDING`), else nonlinear-leverage (block-leverage for
    C-output models)."""
    allowed = EMBEDDING[2 if stages.data.model(ctx).n_outputs > 1 else 1]
    base = ctx.job.kind.split(":")[0]
    return ctx.job.kind if base in allowed and not get_kind(ctx.job.kind).response_aware \
        else allowed[0]


def sample_rows(ctx: RunContext, kind: str, theta0: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The preconditioning sample: (indices (s,), Horvitz-Thompson weights (s,), X rows,
    y rows), s = max(job's s, :data:`ROWS_PER_PARAM` x p). ``nonlinear-leverage`` and
    ``uniform`` are drawn in ONE read by the select path's sampler (generalised leverage
    against the pilot's factor, which never underestimates the exact leverage: still a
    subspace embedding); other kinds (linear, ridge, block) by the exact two-pass scores
    (pass 1, then one read for pass 2 + sample + gather)."""
    s = max(stages.theta.sample_size(ctx, kind), ROWS_PER_PARAM * stages.data.model(ctx).n_params)
    if kind in ONE_READ_KINDS and ctx.job.sketch is None:
        got = oneread_stage.sample(ctx, kind, theta0, s, 0.0)
        return got["indices"], got["weights"], got["X"], got["y"]
    _, _, draws, _ = stages.scoring.scores_and_sample(ctx, kind, theta0,
                                                      [(s, stages.fitting.rng(ctx))])
    return draws[0]


def _choose(ctx: RunContext, method: str, theta0: np.ndarray, rows: tuple, xtol: float
            ) -> dict:
    """The method to run and why: forced, or the cheaper estimate (module docstring). With
    ``auto`` the preconditioned method's first pass (the gradient at theta_0) is run and
    timed here (returned as ``start``, reused by the fit)."""
    job = ctx.job
    m = stages.data.model(ctx)
    X, y = stages.data.xy(ctx)
    n = int(X.shape[0])
    with ctx.timed("choose"):
        Xb, yb = graph.draws.read_blocks(X, y, [0])
        ctx.read("cost probe (one chunk)", Xb.shape[0] / n)
        costs = precond.chunk_costs(m, theta0, Xb, yb, job.loss)
        if method != "auto":
            return {"method": method, "forced": True, "costs": costs,
                    "reason": f"forced (method {method})"}
        _, w, Xs, ys = rows
        passes = precond.sample_passes(m, Xs, ys, w, theta0, job.radius, loss=job.loss,
                                       tol=job.tol, xtol=xtol, max_iter=job.max_iter)
        t0 = time.perf_counter()
        start = _grad_oracle(ctx)(precond.project_ball(theta0, job.radius))
        costs["grad_pass_s"] = time.perf_counter() - t0
        got = precond.choose(costs["grad_pass_s"], n, costs, passes,
                             graph.oracles.parallelism())
    return {**got, "forced": False, "costs": costs, "sample_estimate": passes,
            "start": start}


def _grad_oracle(ctx: RunContext) -> Any:
    """theta -> the full-data loss and gradient, one counted pass per call."""
    job = ctx.job
    m = stages.data.model(ctx)
    X, y = stages.data.xy(ctx)

    def full(theta: np.ndarray) -> dict:
        ctx.read("gradient pass")
        return graph.oracles.grad_pass(X, y, m, theta, job.split_every, loss=job.loss)

    return full


def fit(ctx: RunContext, method: str = "auto", xtol: float = precond.XTOL,
        force: bool = False) -> dict:
    """Fit theta* on all rows by the preconditioned method or full Gauss-Newton; return (and
    write) the metrics.

    Parameters
    ----------
    ctx : RunContext
    method : {"auto", "precond", "gn", "lbfgs"}
        ``auto``: the estimated cheaper one (module docstring).
    xtol : float
        Relative tolerance of the preconditioned method (:func:`nldist.precond.fit_precond`;
        Gauss-Newton stops by the job's ``tol``).
    force : bool
        Replace the outputs of another job in ``ctx.out`` (:func:`stages.outputs.claim`).

    Returns
    -------
    dict: the metrics.
    """
    if method not in METHODS:
        raise NldistError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    job = ctx.job
    t_start = time.perf_counter()
    ctx.adjoint_accuracy = "sampling"
    ctx.model_cache = None
    stages.outputs.claim(ctx, "fit", force)
    stages.data.ingest(ctx)
    budget.check_memory(ctx, [sample_kind(ctx)])
    t_ingested = time.perf_counter()
    X, y = stages.data.xy(ctx)
    n = int(X.shape[0])
    m = stages.data.model(ctx)
    theta0, source = stages.theta.select_theta(ctx)
    kind = sample_kind(ctx)
    rows = sample_rows(ctx, kind, theta0)
    choice = _choose(ctx, method, theta0, rows, xtol)
    history: list[dict] = []
    t_fit = time.perf_counter()
    with ctx.timed("fit", kind=choice["method"]):
        start = choice.pop("start", None)
        if choice["method"] == "precond":
            result = _precond(ctx, theta0, rows, xtol, history, start)
        elif choice["method"] == "lbfgs":
            result = _lbfgs(ctx, theta0, rows, xtol, history, start)
        else:
            result = _gauss_newton(ctx, theta0, history)
    result["seconds"] = round(time.perf_counter() - t_fit, 4)
    save_npy(ctx.path("theta_fit.npy"), result.pop("theta"))
    idx, w = rows[0], rows[1]
    now = time.perf_counter()
    cost = {**ctx.cost(stages.data.x_bytes(ctx)), "wall_s": round(now - t_ingested, 4),
            "ingest_s": round(t_ingested - t_start, 4),
            "note": "after ingest: pilot, scores, sample, the choice and the fit"}
    metrics = {
        "mode": "fit", "name": job.name, "dataset": stages.data.dataset_name(ctx), "n_rows": n,
        "n_features": int(X.shape[1]), "n_params": m.n_params, "model": job.model,
        "loss": job.loss, "radius": job.radius, "seed": job.seed, "theta_source": source,
        "pilot": ctx.pilot_info,
        "sample": {"kind": kind, "s": int(idx.size), "unique_rows": int(np.unique(idx).size),
                   "max_weight": float(np.max(w))},
        "method": choice["method"], "choice": choice, "xtol": xtol, "tol": job.tol,
        "result": result, "history": history, "cost": cost,
        "resume": ctx.resume_stats, "cached_x": ctx.cached_x,
    }
    ctx.timings["total"] = time.perf_counter() - t_start
    metrics["timings"] = {k: round(v, 4) for k, v in ctx.timings.items()}
    metrics["nldist_version"] = __version__
    write_json(ctx.path("metrics.json"), metrics)
    stages.outputs.complete(ctx)
    return metrics


def _precond(ctx: RunContext, theta0: np.ndarray, rows: tuple, xtol: float,
             history: list[dict], start: dict | None = None) -> dict:
    """The preconditioned method: one gradient pass per trial step (``start``: the first,
    when the choice ran it)."""
    job = ctx.job
    m = stages.data.model(ctx)
    _, w, Xs, ys = rows

    res = precond.fit_precond(_grad_oracle(ctx), precond.sample_gn(m, Xs, ys, w, job.loss),
                              theta0, job.radius, xtol=xtol, max_iter=job.max_iter,
                              on_iter=_recorder(ctx, history, "precond"), start=start)
    return _summary(res, driver_s=round(res.driver_s, 4))


def _recorder(ctx: RunContext, history: list[dict], kind: str) -> Any:
    """The ``on_iter`` of a gradient method: each record into ``history``, one progress
    step."""

    def step(rec: dict) -> None:
        history.append(rec)
        ctx.emit("fit", "advance", kind=kind)

    return step


def _summary(res: precond.PrecondResult, **extra: Any) -> dict:
    """The ``result`` of metrics.json from a gradient method's result (θ kept for the
    caller to save)."""
    return {"theta": res.theta, "loss": res.loss, "grad_norm": res.grad_norm,
            "iterations": res.iterations, "passes": res.passes,
            "converged": bool(res.converged), "reason": res.reason, **extra,
            "theta_norm": float(np.linalg.norm(res.theta))}


def _lbfgs(ctx: RunContext, theta0: np.ndarray, rows: tuple, xtol: float,
           history: list[dict], start: dict | None = None) -> dict:
    """L-BFGS on all rows (:func:`nldist.precond.fit_lbfgs`), one gradient pass per function
    evaluation (``start``: the first, when the choice ran it). L-BFGS does not see the ball:
    when its result leaves it, the preconditioned method (which takes the ball exactly)
    finishes from the projection, in the same history."""
    job = ctx.job
    res, inside = precond.fit_lbfgs(_grad_oracle(ctx), theta0, job.radius, tol=job.tol,
                                    max_iter=job.max_iter,
                                    on_iter=_recorder(ctx, history, "lbfgs"), start=start)
    out = _summary(res)
    if inside:
        return out
    done = len(history)
    rest = _precond(ctx, precond.project_ball(res.theta, job.radius), rows, xtol, history)
    for rec in history[done:]:
        rec["passes"] = rec.get("passes", 0) + res.passes
    rest["passes"] += res.passes
    rest["reason"] = (f"{res.reason}; its theta left the ball (|theta| "
                      f"{out['theta_norm']:.4g} > R = {job.radius:g}): the preconditioned "
                      f"method finished from the projection: {rest['reason']}")
    return rest


def _gauss_newton(ctx: RunContext, theta0: np.ndarray, history: list[dict]) -> dict:
    """Full Gauss-Newton from theta_0 (the machinery of :func:`stages.theta.optimum`): one pass
    forming J^T J per oracle call; every call recorded."""
    job = ctx.job
    m = stages.data.model(ctx)
    X, y = stages.data.xy(ctx)
    t0 = time.perf_counter()

    def gn(theta: np.ndarray) -> dict:
        ctx.read("Gauss-Newton pass")
        out = graph.oracles.gn_pass(X, y, m, theta, job.split_every, loss=job.loss)
        history.append({"iteration": len(history), "loss": float(out["loss"]),
                        "grad_norm": precond.kkt_norm(theta, out["grad"], job.radius),
                        "passes": len(history) + 1,
                        "seconds": round(time.perf_counter() - t0, 6)})
        ctx.emit("fit", "advance", kind="gn")
        return out

    if job.loss == "cross_entropy" or m.n_outputs > 1:
        fit = fit_cross_entropy(gn, m, theta0, job.radius, tol=job.tol, max_iter=job.max_iter)
    else:
        fit = fit_ball(gn, theta0, job.radius, tol=job.tol, max_iter=job.max_iter)
    best = min(history, key=lambda h: h["loss"]) if history else {}
    return {"theta": fit.theta, "loss": float(fit.loss),
            "grad_norm": best.get("grad_norm"), "iterations": fit.iterations,
            "passes": len(history), "converged": bool(fit.converged),
            "reason": "Gauss-Newton's relative-decrease tolerance (job tol)" if fit.converged
            else "max_iter reached", "theta_norm": float(np.linalg.norm(fit.theta))}
