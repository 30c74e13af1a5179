"""The practical path (``nldist select``): pilot -> scores -> sample -> train -> estimate.

The path itself never fits on all rows. theta_0 comes from a pilot that costs no pass over
X (the ingest reservoir, or a few whole chunks: ``job.pilot_from``); pass 1 of the job's
kind at theta_0;
then one fused read of X computes pass 2, draws the sample, returns its rows and a seeded
uniform evaluation sample (:func:`nldist.pipeline.stages.scoring.scores_and_sample`); the model is
trained on the sample from theta_0, and its full-data loss is estimated, without bias and
with a 95% interval, from the evaluation sample (:func:`nldist.objectives.estimate_losses`).
About two passes over X after ingest. Its cost (wall time, passes over X, bytes read)
is written next to what the full-data Gauss-Newton fit costs on the same cluster: measured
(with ``compare_full``, or when its estimate is at most ``CHEAP_FRACTION`` of the path's
time: the fit is then run, with the exact relative error), else estimated by the model of
:func:`stages.theta.full_fit_estimate` (the pilot fit's iterations x a timed pass).
Writes ``metrics.json`` (``"mode": "select"``), ``samples/<kind>.npz``, ``sample.parquet``
(the sample for the user's own training) and ``theta.npy``.
"""

from __future__ import annotations

import time

import numpy as np

from nldist._budget import eval_rows
from nldist._version import __version__
from nldist.objectives import estimate_losses
from nldist.pipeline import budget, stages
from nldist.pipeline import oneread as oneread_stage
from nldist.pipeline.context import RunContext
from nldist.scores.oneread import CANDIDATES as ONE_READ_CANDIDATES
from nldist.scores.oneread import ONE_READ_KINDS
from nldist.store.records import array_digest, save_npy, save_npz, write_json
from nldist.store.scores import path_name


def select(ctx: RunContext, compare_full: bool = False, force: bool = False) -> dict:
    """Run the practical path of a job; return (and write) its metrics.

    Parameters
    ----------
    ctx : RunContext
    compare_full : bool
        Also fit theta* on all rows (distributed Gauss-Newton, measured) and evaluate
        theta_S, theta_0 and theta* exactly in one pass: the relative error and what the
        full-data fit cost. Not part of the path's own cost. Done without asking when the
        fit is estimated to be cheap (``stages.theta.CHEAP_FRACTION``).
    force : bool
        Replace the outputs of another job in ``ctx.out`` (:func:`stages.outputs.claim`).

    Returns
    -------
    dict: the metrics.
    """
    job = ctx.job
    t0 = time.perf_counter()
    ctx.adjoint_accuracy = "sampling"
    ctx.model_cache = None
    stages.outputs.claim(ctx, "select", force)
    stages.data.ingest(ctx)
    budget.check_memory(ctx, [job.kind])
    t_ingested = time.perf_counter()
    X0, _ = stages.data.open_xy(ctx)
    n = int(X0.shape[0])
    theta0, source = stages.theta.select_theta(ctx)
    kind = job.kind
    rate = min(1.0, eval_rows(job.eval_s, int(X0.shape[1])) / n)
    sampling = None
    if kind in ONE_READ_KINDS and not job.sketch:
        s = None if job.target_error is not None else stages.theta.sample_size(ctx, kind)
        got1 = oneread_stage.sample(ctx, kind, theta0, s, rate, exact=not job.one_read)
        sampling = got1["info"]
        idx, w, Xs, ys, ev = (got1["indices"], got1["weights"], got1["X"], got1["y"],
                              got1["eval"])
        attrs = {"rank": sampling["factor"]["rank"], "theta_sha": array_digest(theta0)}
        kind_out, s = sampling["kind"], int(idx.size)
    else:
        s = stages.theta.sample_size(ctx, kind)
        _, attrs, got, ev = stages.scoring.scores_and_sample(ctx, kind, theta0,
                                                     [(s, stages.fitting.rng(ctx))], eval_rate=rate)
        idx, w, Xs, ys = got[0]
        kind_out = kind
    extra = {} if sampling is None else {
        "candidates": np.array(ONE_READ_CANDIDATES), "values": got1["q"],
        "residual": got1["residual"]}
    save_npz(ctx.path("samples", f"{path_name(kind)}.npz"), **extra, indices=idx, weights=w,
             seed=job.seed,
             kind=kind_out, s=s, alpha=job.alpha, n=n, model=job.model,
             theta_sha=str(attrs.get("theta_sha")), nldist_version=__version__)
    stages.fitting.hand_over(ctx, kind, (idx, w, Xs, ys))
    ctx.emit("train", "start", total=1)
    Xt, yt, wt = Xs, ys, w
    if sampling is not None and sampling["pooling"]["lambda"] < 1.0:
        # the pilot used twice: its uniform rows pooled into the fit (docs/MATH.md §9)
        lam = sampling["pooling"]["lambda"]
        Xp, yp = got1["pilot"]
        Xt, yt = np.concatenate([Xs, Xp]), np.concatenate([ys, yp])
        wt = np.concatenate([lam * w, np.full(len(Xp), (1.0 - lam) * n / len(Xp))])
    fit = stages.fitting.train(ctx, Xt, yt, wt, kind_out, theta0=theta0)
    ctx.emit("train", "end")
    save_npy(ctx.path("theta.npy"), fit.theta)
    m = stages.data.model(ctx)
    with ctx.timed("estimate"):
        est, se = estimate_losses(m, np.vstack([fit.theta, theta0]), ev[1], ev[2], rate,
                                  job.loss)
    now = time.perf_counter()
    counted = stages.data.store_reads(ctx)
    cost = {**ctx.cost(stages.data.x_bytes(ctx)), "store_reads_counted": counted,
            "wall_s": round(now - t_ingested, 4),
            "ingest_s": round(t_ingested - t0, 4),
            "note": "after ingest: pilot, scores, sample, train and the estimate"}
    main = {"rank": attrs.get("rank"), "s": int(idx.size), "unique_rows": int(np.unique(idx).size),
            "max_weight": float(w.max()), "fit": stages.theta.fit_info(fit),
            "loss_estimate": float(est[0]), "loss_ci95": _ci(est[0], se[0]),
            "loss_estimate_theta0": float(est[1]), "loss_ci95_theta0": _ci(est[1], se[1])}
    full = stages.theta.full_fit_estimate(ctx, fit.iterations, theta0)
    predicted = (full.get("estimated") or {}).get("seconds")
    cheap = (predicted is not None
             and predicted <= stages.theta.CHEAP_FRACTION * cost["wall_s"])
    metrics = {
        "mode": "select", "name": job.name, "dataset": stages.data.dataset_name(ctx),
        "n_rows": n, "n_features": int(X0.shape[1]), "n_params": m.n_params,
        "model": job.model, "loss": job.loss, "kind": kind, "rank": main["rank"], "s": s,
        "seed": job.seed, "alpha": job.alpha, "radius": job.radius, "theta_source": source,
        "pilot": ctx.pilot_info, "evaluation": {"rows": int(ev[0].size), "rate": rate,
                                                "method": "Bernoulli(rate) rows by a seeded "
                                                "hash of the row index; Horvitz-Thompson "
                                                "estimate, normal 95% interval"},
        "loss_estimate": main["loss_estimate"], "loss_ci95": main["loss_ci95"],
        "loss_full": None, "loss_opt": None, "rel_error": None,
        "cost": cost, "full_fit": full, "kinds": {kind: main}, "sampling": sampling,
        "resume": ctx.resume_stats, "cached_x": ctx.cached_x,
    }
    if compare_full or cheap:
        reads = len(ctx.reads)
        theta_star, star_info = stages.theta.optimum(ctx)
        counted_star = sum(f for what, f, _ in ctx.reads[reads:] if what == "theta*")
        losses = stages.fitting.evaluate(ctx, np.vstack([theta_star, fit.theta, theta0]))
        opt = float(losses[0])
        rel = [(float(v) - opt) / opt if opt > 0 else None for v in losses[1:]]
        main.update(loss_full=float(losses[1]), rel_error=rel[0],
                    loss_full_theta0=float(losses[2]), rel_error_theta0=rel[1])
        metrics.update(loss_full=main["loss_full"], loss_opt=opt, rel_error=rel[0],
                       theta_star=star_info)
        reused = counted_star == 0  # theta* of an earlier run (OUT/theta_star.npz)
        metrics["full_fit"] = {**full, "measured": {
            # what computing theta* cost when it was computed (None: an older cache)
            # (the one figure stored with theta*, so a reuse quotes the same number)
            "seconds": star_info.get("seconds"),
            "passes_over_x": star_info.get("passes_over_x") if reused
            else round(counted_star, 4),
            "iterations": star_info.get("iterations"), "reused": reused},
            "why": "--compare-full" if compare_full else
            (f"cheap: estimated {predicted:.3g} s <= {stages.theta.CHEAP_FRACTION:g} x the "
             f"path's {cost['wall_s']:.3g} s, so run and timed")}
    ctx.timings["total"] = time.perf_counter() - t0
    metrics["timings"] = {k: round(v, 4) for k, v in ctx.timings.items()}
    metrics["nldist_version"] = __version__
    write_json(ctx.path("metrics.json"), metrics)
    stages.outputs.complete(ctx)
    return metrics


def _ci(est: float, se: float) -> list[float]:
    """Normal 95% interval of an estimate with standard error se."""
    return [float(est - 1.959964 * se), float(est + 1.959964 * se)]
