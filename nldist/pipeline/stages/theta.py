"""Where theta comes from: the full-data optimum theta*, the pilot theta_0 and its rows
(reservoir, chunks or a gather), a given theta, and the sample size of a kind.

Part of :mod:`nldist.pipeline.stages`.
"""

from __future__ import annotations

import io
import logging
import time
from typing import Any

import numpy as np

from nldist import graph
from nldist.errors import NldistError
from nldist.models.glm import swish_ratio
from nldist.pipeline.context import RunContext
from nldist.pipeline.stages.data import (
    cached,
    dataset_path,
    in_place,
    model,
    open_xy,
    stage_key,
    x_bytes,
    xy,
)
from nldist.store import stage_cache
from nldist.store.dataset import (
    read_reservoir,
)
from nldist.store.remote import as_path, is_remote
from nldist.train import FitResult, fit_ball, fit_cross_entropy, train_on_sample

log = logging.getLogger("nldist")


def fit_info(fit: FitResult) -> dict:
    """The JSON summary of a training."""
    return {"loss": fit.loss, "iterations": fit.iterations, "converged": bool(fit.converged),
            "oracle_calls": fit.oracle_calls, "theta_norm": float(np.linalg.norm(fit.theta))}

def optimum(ctx: RunContext) -> tuple[np.ndarray, dict]:
    """Full-data theta* over the ball (distributed Gauss-Newton passes), cached."""
    key = stage_key(ctx, "optimum")
    npz = ctx.path("theta_star.npz")
    got = cached(ctx, "theta*", npz, key, lambda z: (z["theta"], z["info"]))
    if got is not None:
        return got
    X, y = xy(ctx)
    m = model(ctx)
    job = ctx.job
    def gn(t: np.ndarray) -> dict:
        ctx.read("theta*")
        return graph.oracles.gn_pass(X, y, m, t, job.split_every, loss=job.loss)

    reads, t0 = len(ctx.reads), time.perf_counter()
    with ctx.timed("optimum"):
        if job.loss == "cross_entropy" or m.n_outputs > 1:  # softmax: exact Hessian (CE)
            # or Gauss-Newton (multi-output squared); networks: gradients only
            fit = fit_cross_entropy(gn, m, m.initial_theta(), job.radius, tol=job.tol,
                                    max_iter=job.max_iter)
        else:
            fit = fit_ball(gn, m.initial_theta(), job.radius, tol=job.tol,
                           max_iter=job.max_iter)
    # what it cost, kept with theta* so that a later run reusing it can say so
    info = {**fit_info(fit), "seconds": round(time.perf_counter() - t0, 4),
            "passes_over_x": round(sum(f for what, f, _ in ctx.reads[reads:]
                                       if what == "theta*"), 4)}
    if not fit.converged:
        log.warning("theta* did not converge in %d iterations", fit.iterations)
    stage_cache.save(npz, key, info=info, theta=fit.theta)
    ctx.memo[key] = fit.theta, info
    return fit.theta, info

def pilot(ctx: RunContext, size: int | None = None) -> np.ndarray:
    """theta_0 of the pilot scheme (MATH.md §5): train on a uniform pilot sample of pilot_s rows
    (``size``: that many rows instead — select's factor pilot, :func:`factor_rows`).

    Where the rows come from is ``job.pilot_from`` (:func:`pilot_rows`); weights n / s,
    trained like the final sample (same loss, ball and tolerance). Cached in
    OUT/theta_pilot.npz with its provenance (``info["pilot"]``).
    """
    key = stage_key(ctx, "pilot", rows=None if size is None else int(size))
    npz = ctx.path("theta_pilot.npz")
    got = cached(ctx, "pilot theta_0", npz, key,
                  lambda z: (z["theta"], z.get("info", {}).get("pilot")))
    if got is not None:
        ctx.pilot_info = got[1]
        return got[0]
    job = ctx.job
    with ctx.timed("pilot"):
        Xs, ys, idx, prov = pilot_rows(ctx, size)
        w = np.full(idx.size, prov["n"] / idx.size)
        fit = train_on_sample(model(ctx), Xs, ys, w, job.radius, tol=job.tol,
                              max_iter=job.max_iter, loss=job.loss)
    # its iterations: the full-data fit's predicted passes (full_fit_estimate)
    prov = {**prov, "iterations": int(fit.iterations)}
    ctx.pilot_info = prov
    stage_cache.save(npz, key, info={**fit_info(fit), "pilot": prov}, theta=fit.theta,
                     indices=idx)
    ctx.memo[key] = fit.theta, prov
    return fit.theta

def pilot_rows(ctx: RunContext, size: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """The pilot's rows by ``job.pilot_from``, with their provenance.

    * ``reservoir`` — pilot_s rows (chosen by the job's seed) of the uniform sample ingest
      wrote beside the store (:func:`nldist.store.dataset.read_reservoir`): no read of X;
    * ``chunks`` — pilot_s rows drawn uniformly from a seeded set of whole row chunks
      (at least :data:`PILOT_MIN_CHUNKS`, enough to hold pilot_s rows): reads only those
      chunks, but is uniform over the rows only when the store's row order is random;
    * ``gather`` — pilot_s rows drawn uniformly with replacement from all rows: a random
      gather touches (nearly) every chunk, about one full read;
    * ``auto`` — reservoir when the store has one of at least pilot_s rows, else chunks.

    ``size`` (default ``job.pilot_s``): how many rows (the one-read factor's pilot).

    Returns
    -------
    X (s, d), y (s,), row indices (s,), provenance dict (``from``, ``n``, ``rows``,
    ``fraction_read``, ...)
    """
    job = ctx.job
    src = job.pilot_from
    X0, _ = open_xy(ctx)
    n = int(X0.shape[0])
    s = min(job.pilot_s if size is None else int(size), n)
    rng = np.random.default_rng([job.seed, 0x9170] + ([] if size is None else [int(size)]))
    # the chunks' order depends on the seed alone: pilots of several sizes read nested sets
    order_rng = np.random.default_rng([job.seed, 0x9170])
    res = read_reservoir(dataset_path(ctx)) \
        if src in ("auto", "reservoir") and not in_place(ctx) else None
    if res is not None and res[2].size >= s:
        ctx.read("pilot", 0.0)
        pick = np.sort(rng.choice(res[2].size, size=s, replace=False))  # the job's seed
        return res[0][pick], res[1][pick], res[2][pick], {
            "from": "reservoir", "n": n, "rows": s, "fraction_read": 0.0,
            "note": "uniform without replacement: a seeded subset of the ingest reservoir"}
    if src == "reservoir":
        have = 0 if res is None else res[2].size
        raise NldistError(f"pilot_from: reservoir needs {s} reservoir rows but the dataset has "
                          f"{have}; re-ingest it with nldist, or set pilot_from: chunks")
    X, y = xy(ctx)
    rows = np.asarray(X.chunks[0], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(rows)[:-1]])
    if src == "gather":
        idx = rng.integers(0, n, size=s)
        frac = touched(rows, idx)
        ctx.read("pilot", frac)
        Xs, ys = graph.draws.gather_rows(X, y, idx)
        return Xs, ys, idx, {"from": "gather", "n": n, "rows": s, "fraction_read": frac,
                             "note": "uniform with replacement over all rows"}
    order = (rng if size is None else order_rng).permutation(rows.size)  # same permutation
    need = np.searchsorted(np.cumsum(rows[order]), s) + 1
    ids = np.sort(order[: max(int(need), min(PILOT_MIN_CHUNKS, rows.size))])
    Xb, yb = _pilot_blocks(ctx, X, y, ids)
    local = np.sort(rng.choice(Xb.shape[0], size=min(s, Xb.shape[0]), replace=False))
    glob = np.concatenate([np.arange(starts[i], starts[i] + rows[i]) for i in ids])[local]
    frac = float(rows[ids].sum() / n)
    ctx.read("pilot", frac)  # (its chunks already read by another pilot are not read again)
    return Xb[local], yb[local], glob, {
        "from": "chunks", "n": n, "rows": int(local.size), "chunks": ids.tolist(),
        "fraction_read": frac, "note": "uniform within a seeded set of whole chunks"}

def _pilot_blocks(ctx: RunContext, X: Any, y: Any, ids: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Whole chunks ``ids`` of X and y, each read once per run (kept in ``ctx.memo``: the
    theta_0 pilot and the one-read factor's pilot share their chunks)."""
    memo = ctx.memo.setdefault("pilot chunks", {})
    new = [int(i) for i in ids if int(i) not in memo]
    if new:
        Xn, yn = graph.draws.read_blocks(X, y, new)
        bounds = np.cumsum([0] + [int(X.chunks[0][i]) for i in new])
        for k, i in enumerate(new):
            memo[i] = (Xn[bounds[k]:bounds[k + 1]], yn[bounds[k]:bounds[k + 1]])
    return (np.concatenate([memo[int(i)][0] for i in ids]),
            np.concatenate([memo[int(i)][1] for i in ids]))

#: fewest chunks a ``pilot_from: chunks`` pilot reads (spread against a sorted store)
PILOT_MIN_CHUNKS = 4

def touched(rows: np.ndarray, idx: np.ndarray) -> float:
    """Fraction of X's rows in the chunks that hold any of ``idx`` (what a gather reads)."""
    ends = np.cumsum(rows)
    hit = np.unique(np.searchsorted(ends, np.asarray(idx), side="right"))
    return float(rows[hit].sum() / max(1, ends[-1]))

def theta(ctx: RunContext) -> np.ndarray:
    """Parameters the nonlinear scores are taken at (job.theta)."""
    src = ctx.job.theta
    m = model(ctx)
    if src == "zeros":
        return np.zeros(m.n_params)
    if src == "optimum":
        return optimum(ctx)[0]
    if src == "init":
        return m.initial_theta()
    if src == "pilot":
        return pilot(ctx)
    path = as_path(src)
    if not path.exists():
        raise NldistError(f"theta file {src!r} not found; use zeros, init, optimum, pilot, "
                          "a .npy file or a torch state_dict .pt file")
    if path.suffix in (".pt", ".pth"):
        return m.theta_from_checkpoint(path, path.read_bytes() if is_remote(path) else None)
    try:
        t = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)
    except Exception as exc:
        raise NldistError(f"cannot read theta from {src}: {exc}") from None
    return m.check_theta(np.asarray(t).reshape(-1))

def factor_rows(ctx: RunContext) -> int:
    """Rows of select's pilot: ``pilot_factor_s``, at most the ingest reservoir's rows when
    the pilot comes from it (no read of X)."""
    job = ctx.job
    size = int(job.pilot_factor_s)
    if job.pilot_from in ("auto", "reservoir") and not in_place(ctx):
        res = read_reservoir(dataset_path(ctx))
        if res is not None:
            size = min(size, int(res[2].size))
    return size


def select_theta(ctx: RunContext) -> tuple[np.ndarray, str]:
    """theta_0 of the practical path and its source: the pilot, unless the job gives a
    theta (a file, ``zeros`` or ``init``); ``optimum`` is never fitted here. The pilot is the
    one-read factor's (:func:`factor_rows` rows, used twice: theta_0 and the factor): on
    flights-3m a theta_0 from 10,000 rows instead of 1,000 took the sample from 2.4x to 3.1x
    better than uniform (bench/RESULTS.md, issue 26)."""
    src = ctx.job.theta
    if src in ("optimum", "pilot"):
        return pilot(ctx, factor_rows(ctx)), "pilot"
    return theta(ctx), src

#: X (and y) of at most this many bytes: select times one Gauss-Newton pass for its estimate
#: of the full-data fit (a pass over so little costs well under a second)
SMALL_X_BYTES = 64 * 2**20
#: select runs the full-data fit and reports it measured when the estimate says it costs at
#: most this fraction of the path's own wall time (small tables: the truth is cheap)
CHEAP_FRACTION = 0.25


def full_fit_estimate(ctx: RunContext, iterations: int | None,
                      theta0: np.ndarray | None = None) -> dict:
    """What fitting theta* on all rows (:func:`optimum`: distributed Gauss-Newton from the
    model's start) would cost on this cluster, by a stated model::

        seconds = passes x seconds_per_pass

    * ``passes``: the iterations of the pilot's fit — the same solver from the same start
      with the same tolerance, on uniform rows of the same table (Gauss-Newton's iteration
      count follows the problem's curvature and the start, not n); without a pilot (a
      given theta), the sample fit's iterations (from theta_0: fewer, so low).
    * ``seconds_per_pass``: one Gauss-Newton pass at theta_0, timed, where X is in worker
      memory or at most :data:`SMALL_X_BYTES`; else the path's own read of X (``pass1_s``:
      a Gauss-Newton pass reads the same bytes, its compute per row differs).

    ``model`` says which of each was used; tests/test_select.py checks the model against
    the measured fit."""
    pilot_fit = (ctx.pilot_info or {}).get("iterations")
    if pilot_fit:
        passes = int(pilot_fit)
        rows = (ctx.pilot_info or {}).get("rows")
        passes_from = ("the pilot fit's iterations (the same Gauss-Newton solver and start, "
                       f"on {f'{int(rows):,} ' if rows else ''}uniform rows)")
    elif iterations:
        passes = int(iterations)
        passes_from = "the sample fit's iterations (it starts at theta_0: likely low)"
    else:
        return {"estimated": None, "note": "no pilot or sample fit to estimate from"}
    pass_s, pass_from = None, None
    if theta0 is not None and (ctx.cached_x or x_bytes(ctx) <= SMALL_X_BYTES):
        X, y = xy(ctx)
        job = ctx.job
        ctx.read("full-fit estimate (one Gauss-Newton pass)")
        t0 = time.perf_counter()
        graph.oracles.gn_pass(X, y, model(ctx), theta0, job.split_every, loss=job.loss)
        pass_s = time.perf_counter() - t0
        pass_from = "one Gauss-Newton pass at theta_0, timed"
    elif ctx.pass1_s is not None:
        pass_s = ctx.pass1_s
        pass_from = "this run's read of X (a Gauss-Newton pass reads the same bytes)"
    if pass_s is None:
        return {"estimated": None, "note": "no measured pass to estimate from"}
    return {"estimated": {"passes_over_x": passes, "seconds": round(pass_s * passes, 3),
                          "seconds_per_pass": round(pass_s, 4)},
            "model": {"passes": passes_from, "seconds_per_pass": pass_from},
            "note": f"{passes} passes ({passes_from}) x {pass_s:.3g} s per pass ({pass_from})"}


def start_theta(ctx: RunContext) -> np.ndarray:
    """Where training on a sample starts: the pilot theta_0 (pilot scheme) or the default."""
    return pilot(ctx) if ctx.job.theta == "pilot" else model(ctx).initial_theta()

def sample_size(ctx: RunContext, kind: str) -> int:
    """s for a kind: with ``swish_bound`` the main kind draws ceil(s * c2 / c1) rows."""
    if ctx.job.swish_bound and kind == ctx.job.kind:
        return int(np.ceil(ctx.job.s * swish_ratio(model(ctx))))
    return ctx.job.s
