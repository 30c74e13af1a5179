"""The paper's protocol (Fig. 1): median relative error over repeated draws, per s and kind.

For every kind of ``job.experiment``: its scores (reused from the run when finished), all
``len(s) x repeats`` draws in one pass over the scores, every draw's rows in one pass over
X, a training per draw (the same draw -> gather -> fit loop as :func:`nldist.pipeline.run`),
and their full-data losses in one distributed pass. Writes ``experiment.json``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from nldist._version import __version__
from nldist.errors import NldistError
from nldist.pipeline import budget, stages
from nldist.pipeline.context import RunContext
from nldist.store.records import write_json

log = logging.getLogger("nldist")


def experiment(ctx: RunContext, force: bool = False) -> dict:
    """Median relative error over repeated draws, per s and score kind (experiment.json).

    ``force`` replaces the outputs of another job in ``ctx.out`` (:func:`stages.outputs.claim`).
    """
    job = ctx.job
    exp = job.experiment
    if exp is None:
        raise NldistError("the job has no 'experiment:' section; add s: [..] and repeats")
    t0 = time.perf_counter()
    stages.outputs.claim(ctx, "experiment", force)
    stages.data.ingest(ctx)
    budget.check_memory(ctx, list(exp.kinds))
    X, _ = stages.data.xy(ctx)
    at = stages.theta.theta(ctx)
    theta_star, star_info = stages.theta.optimum(ctx)
    rel: dict[str, list[list[float]]] = {}
    ranks: dict[str, object] = {}
    ctx.emit("train", "start", total=len(exp.s) * exp.repeats * len(exp.kinds))
    for kind in exp.kinds:
        probs, attrs = stages.scoring.scores(ctx, kind, at)
        ranks[kind] = attrs.get("rank")
        keys = [(s, r) for s in exp.s for r in range(exp.repeats)]
        got = stages.fitting.draw(ctx, probs,
                                  [(s, stages.fitting.rng(ctx, s, r)) for s, r in keys], kind)
        draws = dict(zip(keys, got, strict=True))
        fits = stages.fitting.fit_draws(ctx, draws, dict.fromkeys(keys, kind))
        losses = stages.fitting.evaluate(
            ctx, np.vstack([theta_star, *(fits[k].theta for k in keys)]), kind)
        errs = (losses[1:] - losses[0]) / losses[0]
        rel[kind] = errs.reshape(len(exp.s), exp.repeats).tolist()
        log.info("experiment %s done", kind)
    ctx.emit("train", "end")
    ctx.timings["total"] = time.perf_counter() - t0
    summary = {
        kind: {str(s): {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                        "q75": float(np.quantile(v, 0.75))}
               for s, v in zip(exp.s, rows, strict=True)}
        for kind, rows in rel.items()
    }
    result = {
        "name": job.name, "dataset": stages.data.dataset_name(ctx), "model": job.model,
        "n_rows": int(X.shape[0]), "n_params": stages.data.model(ctx).n_params, "s": exp.s,
        "repeats": exp.repeats, "seed": job.seed, "radius": job.radius,
        "theta_source": job.theta, "loss_opt": star_info["loss"],
        "theta_star": star_info, "ranks": ranks, "summary": summary, "rel_error": rel,
        "timings": {k: round(v, 4) for k, v in ctx.timings.items()},
        "nldist_version": __version__,
    }
    write_json(ctx.path("experiment.json"), result)
    stages.outputs.complete(ctx)
    return result
