"""The draw -> gather -> fit loop of run and experiment: drawing samples, handing the main one
over as ``sample.parquet``, training on a sample, and the full-data losses of several theta
in one pass.

Part of :mod:`nldist.pipeline.stages`.
"""

from __future__ import annotations

import logging
from collections.abc import Hashable
from typing import Any

import numpy as np

from nldist import graph
from nldist._checks import as_rng
from nldist._version import __version__
from nldist.pipeline.context import RunContext
from nldist.pipeline.stages.data import dataset_attrs, dataset_name, model, open_xy, xy
from nldist.pipeline.stages.theta import start_theta, touched
from nldist.store.sample_table import write_sample_table
from nldist.train import FitResult, train_on_sample

log = logging.getLogger("nldist")


def draw(ctx: RunContext, probs: Any, requests: list[tuple[int, Any]], kind: str | None = None,
         masses: np.ndarray | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Samples [(indices, weights)] for requests [(s, random_state)] in one pass over probs
    (routed by pass 1's chunk ``masses`` when given: the fused pass's draws, bit for bit)."""
    with ctx.timed("sample", kind=kind):
        return graph.draws.sample_many(probs, requests, ctx.job.alpha, masses=masses)

def hand_over(ctx: RunContext, kind: str, draw: tuple) -> None:
    """Write the main kind's sample as ``OUT/sample.parquet`` for the user's own training
    (:mod:`nldist.store.sample_table`; :func:`nldist.load_sample`, :func:`nldist.to_torch`)."""
    idx, w, Xs, ys = draw
    job = ctx.job
    write_sample_table(ctx.path("sample.parquet"), idx, w, Xs, ys, dataset_attrs(ctx),
                       {"kind": kind, "s": int(idx.size), "seed": job.seed, "alpha": job.alpha,
                        "n": int(open_xy(ctx)[0].shape[0]), "model": job.model,
                        "dataset": dataset_name(ctx), "nldist_version": __version__})

def train(ctx: RunContext, Xs: np.ndarray, ys: np.ndarray | None, w: np.ndarray,
          kind: str | None = None, theta0: np.ndarray | None = None) -> FitResult:
    """Train on one weighted sample from ``theta0`` (default: the pilot under the pilot
    scheme, else the model's starting point)."""
    job = ctx.job
    t0 = start_theta(ctx) if theta0 is None else theta0
    with ctx.timed("train", kind=kind):
        fit = train_on_sample(model(ctx), Xs, ys, w, job.radius, theta0=t0, tol=job.tol,
                              max_iter=job.max_iter, loss=job.loss)
    ctx.emit("train", "advance", kind=kind)
    return fit

def fit_draws(ctx: RunContext, draws: dict[Hashable, tuple[np.ndarray, np.ndarray]],
              kind_of: dict[Hashable, str]) -> dict[Hashable, FitResult]:
    """Gather the draws' rows in one pass over X (those that lack them), then train on
    each draw (in order).

    Parameters
    ----------
    draws : dict key -> (indices (s,), weights (s,)) or (indices, weights, X rows (s, d),
        y rows (s,)) — rows already gathered (by the fused pass) are not read again
    kind_of : dict key -> score kind (for progress and logs)
    """
    rows = {key: (d[2], d[3]) for key, d in draws.items() if len(d) == 4}
    need = [key for key in draws if key not in rows]
    if need:
        X, y = xy(ctx)
        allidx = np.unique(np.concatenate([draws[key][0] for key in need]))
        with ctx.timed("gather"):  # random rows touch every chunk: one read for all draws
            Xu, yu = graph.draws.gather_rows(X, y, allidx)
        ctx.read("gather", touched(np.asarray(X.chunks[0]), allidx))
        for key in need:
            pos = np.searchsorted(allidx, draws[key][0])
            rows[key] = Xu[pos], None if yu is None else yu[pos]
    return {key: train(ctx, *rows[key], d[1], kind_of[key]) for key, d in draws.items()}

def evaluate(ctx: RunContext, thetas: np.ndarray, kind: str | None = None) -> np.ndarray:
    """Full-data losses (m,) of m parameter vectors in one distributed pass (``kind``: the
    score kind whose sample fits they are, for the progress label)."""
    X, y = xy(ctx)
    ctx.read("evaluate")
    with ctx.timed("evaluate", kind=kind):
        return graph.oracles.losses_pass(X, y, model(ctx), thetas, ctx.job.split_every,
                                 loss=ctx.job.loss)

def rng(ctx: RunContext, *extra: int) -> np.random.Generator:
    """The job's random state (with ``extra`` spawn words for repeated draws)."""
    return as_rng(ctx.job.seed) if not extra else np.random.default_rng([ctx.job.seed, *extra])
