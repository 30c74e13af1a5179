"""A whole job: ingest -> theta -> scores -> sample -> gather -> train -> evaluate -> metrics.

:func:`run` is what ``nldist run`` (and the stage verbs ``score``, ``sample``, ``train``,
``evaluate``) executes; it writes ``metrics.json``. Every stage reuses its finished output
when its cache key matches (:mod:`nldist.pipeline.stages`), so re-running a job resumes.
"""

from __future__ import annotations

import time

import numpy as np

from nldist._version import __version__
from nldist.errors import NldistError
from nldist.pipeline import budget, stages
from nldist.pipeline.context import RunContext
from nldist.store.records import save_npy, save_npz, write_json
from nldist.store.scores import path_name

STOPS = ("score", "sample", "train", "evaluate")


def run(ctx: RunContext, stop_after: str = "evaluate", force: bool = False) -> dict:
    """Run every stage for the chosen kind and its baselines; write metrics.json.

    Parameters
    ----------
    ctx : RunContext
    stop_after : {"score", "sample", "train", "evaluate"}
        Last stage to run (the CLI verbs of the same names); earlier outputs are reused.
    force : bool
        Replace the outputs of another job in ``ctx.out`` (:func:`stages.outputs.claim`).

    Returns
    -------
    dict: the metrics (``evaluate``), else ``{"stage", "kinds", "out"}``.
    """
    if stop_after not in STOPS:
        raise NldistError(f"stop_after must be one of {STOPS}, got {stop_after!r}")
    job = ctx.job
    t0 = time.perf_counter()
    stages.outputs.claim(ctx, "run", force)
    stages.data.ingest(ctx)
    budget.check_memory(ctx, job.kinds())
    X, _ = stages.data.xy(ctx)
    at = stages.theta.theta(ctx)
    results: dict[str, dict] = {}
    draws: dict[str, tuple[np.ndarray, ...]] = {}
    for kind in job.kinds():
        if stop_after == "score":
            _, attrs = stages.scoring.scores(ctx, kind, at)
            results[kind] = {"rank": attrs.get("rank")}
            continue
        _, attrs, got, _ = stages.scoring.scores_and_sample(
            ctx, kind, at, [(stages.theta.sample_size(ctx, kind), stages.fitting.rng(ctx))])
        results[kind] = {"rank": attrs.get("rank")}
        idx, w = got[0][0], got[0][1]
        save_npz(ctx.path("samples", f"{path_name(kind)}.npz"), indices=idx, weights=w,
                 seed=job.seed, kind=kind, s=job.s, alpha=job.alpha, n=int(X.shape[0]),
                 model=job.model, theta_sha=str(attrs.get("theta_sha")),
                 nldist_version=__version__)
        draws[kind] = got[0]
        if kind == job.kind:
            stages.fitting.hand_over(ctx, kind, got[0])
        results[kind]["unique_rows"] = int(np.unique(idx).size)
        if attrs.get("persist"):
            results[kind]["persist"] = attrs["persist"]
    thetas = []
    if stop_after in ("train", "evaluate") and draws:
        ctx.emit("train", "start", total=len(draws))
        fits = stages.fitting.fit_draws(ctx, draws, {k: k for k in draws})
        for kind, fit in fits.items():
            idx, w = draws[kind][:2]
            save_npy(ctx.path(f"theta_{path_name(kind)}.npy"), fit.theta)
            thetas.append(fit.theta)
            prev = results[kind]
            results[kind] = {"rank": prev["rank"], "fit": stages.theta.fit_info(fit),
                             "unique_rows": prev["unique_rows"], "max_weight": float(w.max()),
                             "s": int(idx.size),
                             **({"persist": prev["persist"]} if "persist" in prev else {})}
        ctx.emit("train", "end")
    if stop_after != "evaluate":
        stages.outputs.complete(ctx)
        return {"stage": stop_after, "kinds": results, "out": str(ctx.out)}
    theta_star, star_info = stages.theta.optimum(ctx)
    losses = stages.fitting.evaluate(ctx, np.vstack([theta_star, *thetas]))
    loss_opt = float(losses[0])
    for res, loss in zip(results.values(), losses[1:], strict=True):
        res["loss_full"] = float(loss)
        res["rel_error"] = (float(loss) - loss_opt) / loss_opt if loss_opt > 0 else None
    ctx.timings["total"] = time.perf_counter() - t0
    main = results[job.kind]
    m = stages.data.model(ctx)
    metrics = {
        "name": job.name, "dataset": stages.data.dataset_name(ctx),
        "n_rows": int(X.shape[0]), "n_features": int(X.shape[1]),
        "n_params": m.n_params, "model": job.model, "loss": job.loss,
        "kind": job.kind, "rank": main["rank"], "s": job.s, "seed": job.seed,
        "alpha": job.alpha, "radius": job.radius, "theta_source": job.theta,
        "loss_full": main["loss_full"], "loss_opt": loss_opt, "rel_error": main["rel_error"],
        "theta_star": star_info, "kinds": results,
        "timings": {k: round(v, 4) for k, v in ctx.timings.items()},
        "resume": ctx.resume_stats,
        "cached_x": ctx.cached_x,
        "cost": ctx.cost(stages.data.x_bytes(ctx)),
        "nldist_version": __version__,
    }
    save_npy(ctx.path("theta.npy"), thetas[0])
    write_json(ctx.path("metrics.json"), metrics)
    stages.outputs.complete(ctx)
    return metrics
