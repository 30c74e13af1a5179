"""The stages of a job, one function each, over a :class:`~nldist.pipeline.context.RunContext`.

Every stage that writes an output declares the job fields its output depends on in
:data:`KEYS`; the output is reused by a later run only when the digest of those fields
(and, for scores, the digest of theta and the chunking) matches what was recorded with it
(:mod:`nldist.store`). Stages do no numerics themselves: they call :mod:`nldist.graph`
(distributed passes), :mod:`nldist.train` (single-node training) and the stores.

=================  ==================================================  ====================
stage              output                                               reused when
=================  ==================================================  ====================
:func:`ingest`     ``OUT/dataset.zarr`` (or the source Zarr itself)     KEYS["ingest"]
:func:`optimum`    ``OUT/theta_star.npz`` (full-data theta*)            KEYS["optimum"]
:func:`pilot`      ``OUT/theta_pilot.npz`` (theta_0 of a uniform pilot)  KEYS["pilot"]
:func:`scores`     ``OUT/scores.zarr/<kind>`` chunk by chunk            provenance + chunks
:func:`draw`       the sample's indices and weights                     (recomputed: cheap)
:func:`fit_draws`  theta per draw (the shared draw -> gather -> fit loop of run and
                   experiment)
:func:`evaluate`   full-data losses of several theta in one pass
=================  ==================================================  ====================
"""

from __future__ import annotations

import fnmatch
import hashlib
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist import ingest as ingest_mod
from nldist._budget import cache_budget
from nldist._checks import as_rng
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.base import Model
from nldist.models.glm import swish_ratio
from nldist.models.losses import check_labels, target_columns
from nldist.pipeline.context import RunContext
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import RFactor
from nldist.scores.reductions import Normalizer
from nldist.scores.spec import ScoreSpec, make_spec
from nldist.store import dual_blocks, stage_cache
from nldist.store.dataset import (
    RESERVOIR_ROWS,
    fingerprint,
    is_dataset,
    is_partial,
    read_attrs,
    read_reservoir,
    write_dataset,
)
from nldist.store.records import array_digest, digest, write_json
from nldist.store.remote import as_path, check_bucket, is_remote, rmtree
from nldist.store.sample_table import write_sample_table
from nldist.store.scores import ChunkedScores
from nldist.train import FitResult, fit_ball, fit_cross_entropy, train_on_sample

log = logging.getLogger("nldist")

#: job fields each cached stage output depends on (its cache key is their digest)
KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("dataset",),
    "optimum": ("dataset", "model", "radius", "tol", "max_iter", "loss"),
    "pilot": ("dataset", "model", "radius", "tol", "max_iter", "loss", "pilot_s", "pilot_from",
              "seed"),
    "dual_blocks": ("adjoint",),
}
#: the dataclasses a stored pass-1 result may hold (nothing else is ever constructed)
PASS1_CLASSES = {"Normalizer": Normalizer, "RFactor": RFactor}


def fit_info(fit: FitResult) -> dict:
    """The JSON summary of a training."""
    return {"loss": fit.loss, "iterations": fit.iterations, "converged": bool(fit.converged),
            "oracle_calls": fit.oracle_calls, "theta_norm": float(np.linalg.norm(fit.theta))}


# --------------------------------------------------------------------------------------
# dataset, data, model
# --------------------------------------------------------------------------------------


def dataset_fingerprint(path: Path) -> str:
    """The content fingerprint of a dataset store (:func:`nldist.store.dataset.fingerprint`),
    with a one-line error when it cannot be read."""
    try:
        return fingerprint(path)
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot read dataset {path} ({type(exc).__name__}: {exc}); "
                          "re-ingest it") from None


def data_key(ctx: RunContext, *fields: str) -> str:
    """:meth:`RunContext.key` with the dataset's fingerprint taken first if no stage has
    (a context that did not run :func:`ingest` keys its outputs the same way)."""
    if ctx.dataset_fp is None and "dataset" in fields:
        path = dataset_path(ctx)
        if path.exists():
            ctx.dataset_fp = table_view(ctx)["key"] if in_place(ctx) else \
                dataset_fingerprint(path)
    return ctx.key(*fields)


#: what a Parquet table scored in place leaves in OUT instead of dataset.zarr
TABLE_VIEW = "table.json"


def in_place(ctx: RunContext) -> bool:
    """Whether the job scores its Parquet source in place (``dataset.format: parquet``)."""
    return ctx.job.dataset.format == "parquet"


def dataset_path(ctx: RunContext) -> Path:
    """The Zarr dataset: the source itself when it is one, else OUT/dataset.zarr; for a
    Parquet table scored in place, its statistics (OUT/table.json)."""
    if in_place(ctx):
        return ctx.out / TABLE_VIEW
    src = as_path(ctx.job.dataset.source)
    return src if is_dataset(src) else ctx.out / "dataset.zarr"


def dataset_name(ctx: RunContext) -> str:
    """The dataset the outputs name: the store's path, or the in-place Parquet source."""
    return str(ctx.job.dataset.source) if in_place(ctx) else str(dataset_path(ctx))


def dataset_attrs(ctx: RunContext) -> dict:
    """What the dataset records about itself (columns, encoding, standardization, ...)."""
    return table_view(ctx)["attrs"] if in_place(ctx) else read_attrs(dataset_path(ctx))


def table_view(ctx: RunContext) -> dict:
    """The statistics of the in-place Parquet table (:func:`nldist.ingest.table_view`),
    as :func:`ingest` left them in OUT/table.json."""
    view = ctx.memo.get(TABLE_VIEW)
    if view is None:
        path = ctx.out / TABLE_VIEW
        try:
            view = json.loads(path.read_text())
        except FileNotFoundError:
            raise NldistError(f"{path} is missing; run the job (its first stage takes the "
                              "table's statistics)") from None
        except (OSError, ValueError) as exc:
            raise NldistError(f"cannot read {path} ({type(exc).__name__}); delete it and run "
                              "the job again") from None
        ctx.memo[TABLE_VIEW] = view
    return view


def _ingest_in_place(ctx: RunContext) -> Path:
    """:func:`ingest` for ``format: parquet``: the statistics pass only, keyed like an
    ingest (settings and the source files' fingerprint); no copy of the data."""
    ds = ctx.job.dataset
    path = ctx.out / TABLE_VIEW
    key = digest({"settings": ctx.job.digest(*KEYS["ingest"]),
                  "source": ingest_mod.source_fingerprint(ds.source)}, 16)
    old = None
    if path.exists():
        ctx.memo.pop(TABLE_VIEW, None)
        try:
            old = table_view(ctx)
        except NldistError:
            old = None
    if old is not None and old.get("key") == key:
        ctx.note("ingest", True)
    else:
        if path.exists():
            ctx.note("ingest", False, "source or settings changed")
        with ctx.timed("table"):
            view = ingest_mod.table_view(
                ds.source, target=ds.target, features=ds.features, classes=ds.classes,
                dropna=ds.dropna, standardize=ds.standardize,
                standardize_target=ds.standardize_target, chunk_rows=ds.chunk_rows,
                dtype=ds.dtype)
            ctx.read("table statistics", 1.0, store=True)
        view["key"] = key
        ctx.out.mkdir(parents=True, exist_ok=True)
        write_json(path, view)
        ctx.memo[TABLE_VIEW] = view
    ctx.dataset_fp = key
    return path


def ingest(ctx: RunContext) -> Path:
    """Ingest the source into OUT/dataset.zarr unless one made from the same source content
    with the same settings is there; sets the context's dataset fingerprint.

    The key is the digest of the job's ``dataset`` settings and the source's fingerprint
    (:func:`nldist.ingest.source_fingerprint`: a file's size, mtime and SHA-256, a packaged
    dataset's pinned package); a Zarr source used in place is fingerprinted by
    :func:`nldist.store.dataset.fingerprint` (its recorded content hash and a stat digest of
    its files), so an edited source invalidates every stage that depends on the data.
    """
    if in_place(ctx):
        return _ingest_in_place(ctx)
    path = dataset_path(ctx)
    ds = ctx.job.dataset
    if path != ctx.out / "dataset.zarr" or is_dataset(as_path(ds.source)):
        ctx.dataset_fp = dataset_fingerprint(path)  # a Zarr source, in place: never replaced
        return path
    key = digest({"settings": ctx.job.digest(*KEYS["ingest"]),
                  "source": ingest_mod.source_fingerprint(ds.source)}, 16)
    if path.exists() and not is_partial(path):  # a killed ingest's partial store: resumed
        if read_attrs(path).get("ingest_key") == key:
            ctx.dataset_fp = dataset_fingerprint(path)
            ctx.note("ingest", True)
            return path
        rmtree(path)
        ctx.note("ingest", False, "source or settings changed")
    if ingest_mod.table_format(ds.source) is not None:  # directory, glob or URL: distributed
        with ctx.timed("ingest"):
            ctx.out.mkdir(parents=True, exist_ok=True)
            ingest_mod.ingest_table(
                ds.source, path, target=ds.target, features=ds.features, classes=ds.classes,
                dropna=ds.dropna, standardize=ds.standardize,
                standardize_target=ds.standardize_target, chunk_rows=ds.chunk_rows,
                dtype=ds.dtype, overwrite=True, reservoir=max(RESERVOIR_ROWS, ctx.job.pilot_s),
                extra_attrs={"ingest_key": key})
        ctx.dataset_fp = dataset_fingerprint(path)
        return path
    with ctx.timed("ingest"):
        df, meta = ingest_mod.read_source(ds.source, ds.target)
        X, y, attrs = ingest_mod.prepare(
            df, meta["target"], features=ds.features, classes=ds.classes, dropna=ds.dropna,
            standardize=ds.standardize, standardize_target=ds.standardize_target,
            dtype=ds.dtype,
        )
        attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
        attrs["ingest_key"] = key
        ctx.out.mkdir(parents=True, exist_ok=True)
        write_dataset(path, X, y, attrs, chunk_rows=ds.chunk_rows, overwrite=True,
                      reservoir=max(RESERVOIR_ROWS, ctx.job.pilot_s))
    ctx.dataset_fp = dataset_fingerprint(path)
    return path


def _cached(ctx: RunContext, stage: str, npz: Path, key: str, pick: Any) -> Any:
    """This run's result of a cached stage, else ``pick(arrays)`` of its cache file with this
    key (noted as reused), else None (noted as recomputed when a stale file was there)."""
    if key in ctx.memo:
        return ctx.memo[key]
    hit = stage_cache.load(npz, key)
    if hit is not None:
        ctx.note(stage, True)
        ctx.memo[key] = pick(hit)
        return ctx.memo[key]
    if npz.exists():
        ctx.note(stage, False, "inputs changed")
    return None


def open_xy(ctx: RunContext) -> tuple[Any, Any]:
    """Lazy X, y of the dataset (not cached; cheap: metadata only)."""
    if in_place(ctx):
        return graph.inputs.as_dask_xy(*ingest_mod.open_table_view(table_view(ctx),
                                                             count=ctx.run_id))
    X, y = graph.inputs.open_zarr_xy(dataset_path(ctx), count=ctx.run_id)
    if y is None:
        raise NldistError(f"dataset {dataset_path(ctx)} has no y; ingest with a target")
    return graph.inputs.as_dask_xy(X, y, y_cols=None)


def store_reads(ctx: RunContext) -> dict:
    """Reads of X's chunks from the store by this run so far, counted where they happened
    (:func:`nldist.graph.inputs.store_reads`), and as passes (reads / chunks of X)."""
    if in_place(ctx):
        chunks = len(table_view(ctx)["sizes"])
        note = ("Parquet partitions (row groups) read and encoded by this run's tasks, "
                "counted where they were read (nldist.store.counting)")
    else:
        chunks = len(open_xy(ctx)[0].chunks[0])
        note = ("chunk files of X read by this run's tasks, counted by the store "
                "(nldist.store.counting)")
    got = graph.inputs.store_reads(ctx.run_id)
    return {"chunk_reads": got, "x_chunks": chunks, "passes": round(got / max(1, chunks), 4),
            "note": note}


def xy(ctx: RunContext) -> tuple[Any, Any]:
    """X, y for the passes: kept in worker memory per ``job.cache_x`` on first use."""
    if ctx.xy_cache is None:
        ctx.xy_cache = _cache(ctx, *open_xy(ctx))
    return ctx.xy_cache


def _cache(ctx: RunContext, X: Any, y: Any) -> tuple[Any, Any]:
    mode = ctx.job.cache_x
    if mode == "never":
        return X, y
    nbytes = int(X.nbytes + y.nbytes)
    c = graph.inputs.current_client()
    budget = cache_budget(graph.memory.worker_memory_limits(c))
    if mode == "auto" and (budget is None or nbytes > budget):
        log.info("X not cached in worker memory (%.0f MiB; budget %s)", nbytes / 2**20,
                 "none without a distributed client" if budget is None
                 else f"{budget / 2**20:.0f} MiB")
        return X, y
    with ctx.timed("cache"):
        X, y = graph.memory.persist_xy(X, y, c)
    ctx.read("cache", 1.0, store=True)
    log.info("X and y cached in worker memory (%.0f MiB, one read of the store)",
             nbytes / 2**20)
    ctx.cached_x = True
    return X, y


def x_bytes(ctx: RunContext) -> int:
    """Uncompressed bytes of X and y (one pass over X reads this much)."""
    X, y = open_xy(ctx)
    return int(X.nbytes + y.nbytes)


def model(ctx: RunContext) -> Model:
    """The job's model for the dataset's d with the job's adjoint options (accuracy, when the
    job does not set it: the verb's, ``ctx.adjoint_accuracy``)."""
    if ctx.model_cache is None:
        X, _ = ctx.xy_cache or open_xy(ctx)
        m = get_model(ctx.job.model, X.shape[1])
        adj = ctx.job.adjoint
        opts = {} if adj is None else adj.model_dump()
        if adj is None or "accuracy" not in adj.model_fields_set:
            opts["accuracy"] = ctx.adjoint_accuracy  # the verb's default
        if not m.closed_form:
            m.configure(**opts)
        check_targets(ctx, m)
        ctx.model_cache = m
    return ctx.model_cache


def check_targets(ctx: RunContext, m: Model) -> None:
    """The dataset's targets fit the model and the loss, before any pass computes with
    them (one-line errors): as many target columns as the model takes (one; C for a
    C-output model with squared loss), and for cross-entropy integer labels 0..C-1 of which
    every class occurs (a declared C that does not match the labels is an error). The
    labels are read once (y only), unless the dataset records its classes."""
    job = ctx.job
    _, y = ctx.xy_cache or open_xy(ctx)
    cols, C = target_columns(y), m.n_outputs
    want = C if C > 1 and job.loss == "squared" else 1
    if cols != want:
        raise NldistError(
            f"y has {cols} column(s) but model {job.model!r} with loss {job.loss!r} takes "
            + (f"{want} (one per output)" if want > 1 else "one target per row")
            + (f"; use a {cols}-output model (softmax:{cols} or mlp:<h>:{cols} with loss: "
               "squared) or a single target column" if cols > 1 else "")
            + ("; for class labels use loss: cross_entropy" if want > 1 and cols == 1 else ""))
    if job.loss != "cross_entropy":
        return
    classes = dataset_attrs(ctx).get("classes")
    if classes:
        labels = np.arange(len(classes))
    else:
        bad, lo, hi, counts = graph.reports.label_summary(y, C)
        if bad:
            raise NldistError(f"{bad:,} class label(s) are NaN, inf or not integers; loss "
                              f"cross_entropy needs integer labels 0..{C - 1}: ingest the "
                              "target as classes (drop standardize_target)")
        labels = np.concatenate([[lo, hi], np.flatnonzero(counts)])
    check_labels(labels, C, declared=True)


# --------------------------------------------------------------------------------------
# theta: full-data optimum, pilot, or given
# --------------------------------------------------------------------------------------


def optimum(ctx: RunContext) -> tuple[np.ndarray, dict]:
    """Full-data theta* over the ball (distributed Gauss-Newton passes), cached."""
    key = data_key(ctx, *KEYS["optimum"])
    npz = ctx.path("theta_star.npz")
    got = _cached(ctx, "theta*", npz, key, lambda z: (z["theta"], z["info"]))
    if got is not None:
        return got
    X, y = xy(ctx)
    m = model(ctx)
    job = ctx.job
    def gn(t: np.ndarray) -> dict:
        ctx.read("theta*")
        return graph.oracles.gn_pass(X, y, m, t, job.split_every, loss=job.loss)

    with ctx.timed("optimum"):
        if job.loss == "cross_entropy" or m.n_outputs > 1:  # softmax: exact Hessian (CE)
            # or Gauss-Newton (multi-output squared); networks: gradients only
            fit = fit_cross_entropy(gn, m, m.initial_theta(), job.radius, tol=job.tol,
                                    max_iter=job.max_iter)
        else:
            fit = fit_ball(gn, m.initial_theta(), job.radius, tol=job.tol,
                           max_iter=job.max_iter)
    info = fit_info(fit)
    if not fit.converged:
        log.warning("theta* did not converge in %d iterations", fit.iterations)
    stage_cache.save(npz, key, info=info, theta=fit.theta)
    ctx.memo[key] = fit.theta, info
    return fit.theta, info


def pilot(ctx: RunContext) -> np.ndarray:
    """theta_0 of the pilot scheme (MATH.md §5): train on a uniform pilot sample of pilot_s rows.

    Where the rows come from is ``job.pilot_from`` (:func:`pilot_rows`); weights n / s,
    trained like the final sample (same loss, ball and tolerance). Cached in
    OUT/theta_pilot.npz with its provenance (``info["pilot"]``).
    """
    key = data_key(ctx, *KEYS["pilot"])
    npz = ctx.path("theta_pilot.npz")
    got = _cached(ctx, "pilot theta_0", npz, key,
                  lambda z: (z["theta"], z.get("info", {}).get("pilot")))
    if got is not None:
        ctx.pilot_info = got[1]
        return got[0]
    job = ctx.job
    with ctx.timed("pilot"):
        Xs, ys, idx, prov = pilot_rows(ctx)
        w = np.full(idx.size, prov["n"] / idx.size)
        fit = train_on_sample(model(ctx), Xs, ys, w, job.radius, tol=job.tol,
                              max_iter=job.max_iter, loss=job.loss)
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
        frac = _touched(rows, idx)
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


def _touched(rows: np.ndarray, idx: np.ndarray) -> float:
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


def select_theta(ctx: RunContext) -> tuple[np.ndarray, str]:
    """theta_0 of the practical path and its source: the pilot, unless the job gives a
    theta (a file, ``zeros`` or ``init``); ``optimum`` is never fitted here."""
    src = ctx.job.theta
    if src in ("optimum", "pilot"):
        return pilot(ctx), "pilot"
    return theta(ctx), src


def full_fit_estimate(ctx: RunContext, iterations: int | None) -> dict:
    """What fitting theta* on all rows would cost on this cluster, estimated: one measured
    pass (pass 1 of the scores: a read of X, a Jacobian-sized block and a Gram per chunk,
    like a Gauss-Newton pass) times ``iterations`` (the sample fit's: the same problem on
    fewer rows — a rough guide; measured on 20M rows, 29 sample iterations vs 18 full-data
    passes to converge, 6 to the sample's quality)."""
    pass_s = ctx.pass1_s
    if pass_s is None or not iterations:
        return {"estimated": None, "note": "no measured pass or fit to estimate from"}
    return {"estimated": {"passes_over_x": int(iterations),
                          "seconds": round(pass_s * iterations, 3),
                          "seconds_per_pass": round(pass_s, 4)},
            "note": "rough: one measured pass (pass 1) x the sample fit's Gauss-Newton "
                    "iterations; run with --compare-full to measure it"}


def start_theta(ctx: RunContext) -> np.ndarray:
    """Where training on a sample starts: the pilot theta_0 (pilot scheme) or the default."""
    return pilot(ctx) if ctx.job.theta == "pilot" else model(ctx).initial_theta()


def sample_size(ctx: RunContext, kind: str) -> int:
    """s for a kind: with ``swish_bound`` the main kind draws ceil(s * c2 / c1) rows."""
    if ctx.job.swish_bound and kind == ctx.job.kind:
        return int(np.ceil(ctx.job.s * swish_ratio(model(ctx))))
    return ctx.job.s


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------


def _score_output(ctx: RunContext, kind: str, at: np.ndarray
                  ) -> tuple[ChunkedScores, ScoreSpec, dict, Any]:
    """The kind's score store (records checked), its spec, provenance and sketch options."""
    X, y = xy(ctx)
    job = ctx.job
    k = get_kind(kind)
    sk = None
    if job.sketch is not None and kind == job.kind and not k.uniform:
        sk = job.sketch
    spec = make_spec(k, model(ctx), at, X.shape[1], True, job.linear_augment_y,
                     loss=job.loss, sketch=sk, device=job.device, seed=job.seed,
                     y_cols=target_columns(y))
    prov = {
        "kind": kind, "model": job.model,
        "theta_sha": array_digest(at) if k.nonlinear else None,
        "loss": job.loss if k.nonlinear else None,
        "ridge": job.ridge if k.ridge else 0.0,
        "dataset_key": data_key(ctx, "dataset"),
        "linear_augment_y": True if k.nonlinear else job.linear_augment_y,
        "n": int(X.shape[0]), "nldist_version": __version__,
    }
    if sk is not None:
        prov["sketch"] = sk.model_dump()
    if k.seeded:  # block-sketch signs: the job's random state
        prov["seed"] = job.seed
    m = model(ctx)
    if k.nonlinear and not m.closed_form:  # quadrature settings (accuracy) make the scores
        opts = getattr(m, "quad_options", None)
        prov["adjoint"] = None if opts is None else opts.model_dump()
    # per-chunk completion records (nldist.store.scores): a re-run verifies them and
    # computes only unfinished or damaged chunks; pass 1 is kept once done
    out = ChunkedScores(ctx.path("scores.zarr"), kind, prov, X.chunks[0], ctx.run_id)
    out.check(graph.writes.map_tasks)
    ctx.resume_stats[kind] = out.stats
    if out.finished:
        ctx.note(f"scores {kind}", True)
    elif out.stats["reused"]:
        ctx.note(f"scores {kind}", False, f"{out.stats['reused']} of {out.stats['chunks']} "
                 "chunks reused")
    elif out.replaced:
        ctx.note(f"scores {kind}", False, "inputs changed")
    return out, spec, prov, sk


def _pass1(ctx: RunContext, out: ChunkedScores, spec: ScoreSpec, store: Any) -> Normalizer:
    """Pass 1 of a kind (with the chunk masses), or its stored result."""
    X, y = xy(ctx)
    norm = out.load_pass1(PASS1_CLASSES)
    if norm is None or (norm.masses is None and not spec.kind.uniform):
        t0 = time.perf_counter()
        norm = graph.passes.pass1(X, y, spec, ridge=ctx.job.ridge, split_every=ctx.job.split_every,
                           store=store, masses=True)
        if not spec.kind.uniform:
            ctx.read("pass 1")
            ctx.pass1_s = time.perf_counter() - t0
        out.save_pass1(norm, PASS1_CLASSES)
    return norm


def _finish(ctx: RunContext, out: ChunkedScores, spec: ScoreSpec, prov: dict, norm: Normalizer,
            t: tuple[float, float, float]) -> None:
    """Mark a kind's scores complete with their attributes (rank, R, persist statistics)."""
    attrs = {**prov, "rank": norm.rank, "total": norm.total, "complete": True}
    if norm.factor is not None:
        attrs["svals"] = norm.factor.svals.tolist()
        attrs["R"] = norm.factor.R.tolist()
        if spec.kind.ridge:
            attrs["effective_dimension"] = norm.total
    if spec.persistable:
        attrs["persist"] = {"mode": ctx.job.persist, **(norm.persist or {}),
                            "pass1": out.stats["pass1"], "pass1_s": round(t[1] - t[0], 4),
                            "pass2_s": round(t[2] - t[1], 4)}
    out.finish(attrs)


def scores(ctx: RunContext, kind: str, at: np.ndarray) -> tuple[Any, dict]:
    """Scores of one kind written to OUT/scores.zarr/<kind> (reused when provenance matches).

    Parameters
    ----------
    kind : str
    at : ndarray (p,)
        theta of the nonlinear kinds.

    Returns
    -------
    (lazy (n,) probabilities read back from the store, the array's attrs)
    """
    X, y = xy(ctx)
    job = ctx.job
    out, spec, prov, sk = _score_output(ctx, kind, at)
    scratch = ctx.out / "dual.zarr.partial" / kind
    if out.finished:
        dual_blocks.remove(scratch)  # left by a run killed after its last chunk
        return graph.memory.open_array(out.path.parent, out.path.name), out.attrs
    with ctx.timed("score", kind=kind, key=f"score:{kind}"):
        if sk is not None and sk.rows:
            probs, info = graph.passes.rowsketch_scores(X, y, spec, sk, job.split_every)
            ctx.read("row sketch", 2.0)
            out.write(probs, graph.writes.store_chunks, graph.writes.store_whole)
            out.finish({**prov, "rank": info["rank"], "complete": True})
            return graph.memory.open_array(out.path.parent, out.path.name), out.attrs
        store = dual_store(ctx, spec, out.key, scratch)
        t0 = time.perf_counter()
        norm = _pass1(ctx, out, spec, store)
        t1 = time.perf_counter()
        probs = graph.passes.pass2(X, y, spec, norm, store=store)
        out.write(probs, graph.writes.store_chunks, graph.writes.store_whole)
        if not spec.kind.uniform:
            ctx.read("pass 2", out.stats["computed"] / max(1, len(out.chunks)))
        _finish(ctx, out, spec, prov, norm, (t0, t1, time.perf_counter()))
        dual_blocks.remove(scratch)
    return graph.memory.open_array(out.path.parent, out.path.name), out.attrs


def scores_and_sample(ctx: RunContext, kind: str, at: np.ndarray,
                      requests: list[tuple[int, Any]], eval_rate: float = 0.0) -> tuple[
                          Any, dict, list[tuple[np.ndarray, ...]], tuple | None]:
    """A kind's scores, its samples with their rows, and an evaluation sample: the fused pass.

    When the kind's scores must be computed from scratch, pass 2, the sampling and the
    gather of the sampled rows run as one read of X (:func:`nldist.graph.draws.sample_pass`), the
    scores still written chunk by chunk to OUT/scores.zarr. Otherwise (scores reused or a
    killed run half done, row-sketch scores, irregular chunks) the same samples come from
    :func:`scores` + :func:`draw` + a gather.

    Parameters
    ----------
    requests : list of (s, random_state)
    eval_rate : float
        Bernoulli rate of the evaluation sample (0: none).

    Returns
    -------
    probs : lazy (n,) probabilities from the store
    attrs : dict
    draws : list of (indices (s,), weights (s,), X rows (s, d), y rows (s,)), per request
    eval : (indices (m,), X (m, d), y (m,)) or None
    """
    X, y = xy(ctx)
    job = ctx.job
    eval_seed = int(job.seed) + 0x3E7A1
    out, spec, prov, sk = _score_output(ctx, kind, at)
    scratch = ctx.out / "dual.zarr.partial" / kind
    fused = (not out.finished and not out.stats["reused"] and out.aligned
             and not (sk is not None and sk.rows))
    if fused:
        with ctx.timed("score", kind=kind, key=f"score:{kind}"):
            store = dual_store(ctx, spec, out.key, scratch)
            t0 = time.perf_counter()
            norm = _pass1(ctx, out, spec, store)
            t1 = time.perf_counter()
            got = graph.draws.sample_pass(X, y, spec, norm, requests, job.alpha, store=store,
                                    eval_rate=eval_rate, eval_seed=eval_seed,
                                    sink=out.sink())
            ctx.read("pass 2 + sample + gather")
            out.stored(got["stored"])
            _finish(ctx, out, spec, prov, norm, (t0, t1, time.perf_counter()))
            dual_blocks.remove(scratch)
        ev = got["eval"] if eval_rate > 0 else None
        return graph.memory.open_array(out.path.parent, out.path.name), out.attrs, got["draws"], ev
    probs, attrs = scores(ctx, kind, at)
    norm = out.stored_pass1(PASS1_CLASSES)  # its chunk masses: the fused pass's routing
    drawn = draw(ctx, probs, requests, kind, None if norm is None else norm.masses)
    allidx = np.unique(np.concatenate([idx for idx, _ in drawn]))
    with ctx.timed("gather"):
        Xu, yu = graph.draws.gather_rows(X, y, allidx)
    ctx.read("gather", _touched(np.asarray(X.chunks[0]), allidx))
    draws = []
    for idx, w in drawn:
        pos = np.searchsorted(allidx, idx)
        draws.append((idx, w, Xu[pos], yu[pos]))
    ev = None
    if eval_rate > 0:
        with ctx.timed("gather"):
            ev = graph.draws.bernoulli_rows(X, y, eval_rate, eval_seed)
        ctx.read("evaluation sample")
    return probs, attrs, draws, ev


def dual_store(ctx: RunContext, spec: ScoreSpec, key: str, scratch: Path) -> Any:
    """The scratch store of persisted dual blocks for one kind (job.persist), or None.

    Lives in OUT/dual.zarr.partial/<kind>; its key ties it to the scores' resume key and
    the quadrature settings, so blocks of other inputs are deleted rather than read. It
    is removed when the kind's scores are complete; a killed run's blocks are reused.
    """
    if ctx.job.persist == "never" or not spec.persistable or is_remote(ctx.out):
        # on object storage, a round trip of every dual block costs more than rebuilding it
        dual_blocks.remove(scratch)
        return None
    adj = ctx.key(*KEYS["dual_blocks"])
    dkey = hashlib.sha256(f"{key}:{adj}".encode()).hexdigest()[:32]
    return dual_blocks.prepare(scratch, dkey, ctx.job.persist)


# --------------------------------------------------------------------------------------
# sample, gather, train, evaluate: the draw -> gather -> fit loop of run and experiment
# --------------------------------------------------------------------------------------


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
        ctx.read("gather", _touched(np.asarray(X.chunks[0]), allidx))
        for key in need:
            pos = np.searchsorted(allidx, draws[key][0])
            rows[key] = Xu[pos], None if yu is None else yu[pos]
    return {key: train(ctx, *rows[key], d[1], kind_of[key]) for key, d in draws.items()}


def evaluate(ctx: RunContext, thetas: np.ndarray) -> np.ndarray:
    """Full-data losses (m,) of m parameter vectors in one distributed pass."""
    X, y = xy(ctx)
    ctx.read("evaluate")
    with ctx.timed("evaluate"):
        return graph.oracles.losses_pass(X, y, model(ctx), thetas, ctx.job.split_every,
                                 loss=ctx.job.loss)


def rng(ctx: RunContext, *extra: int) -> np.random.Generator:
    """The job's random state (with ``extra`` spawn words for repeated draws)."""
    return as_rng(ctx.job.seed) if not extra else np.random.default_rng([ctx.job.seed, *extra])


# --------------------------------------------------------------------------------------
# one run per output directory: the run manifest
# --------------------------------------------------------------------------------------

#: the run manifest in the output directory
MANIFEST = "run.json"
#: outputs that belong to one completed verb: removed when it starts again
VERB_OUTPUTS = {
    "run": ("metrics.json", "report.html", "report.md"),
    "experiment": ("experiment.json", "report.html", "report.md"),
    "diagnose": ("diagnostics.json", "report.html", "report.md"),
    "select": ("metrics.json", "report.html", "report.md"),
    "fit": ("metrics.json", "report.html", "report.md", "theta_fit.npy"),
}
#: outputs of any earlier settings of the job: removed when the job's settings change
SETTINGS_OUTPUTS = ("metrics.json", "experiment.json", "diagnostics.json", "report.html",
                    "report.md", "samples", "theta.npy", "sample.parquet")


#: the names nldist writes at the top of an output directory (with :data:`OWN_PATTERNS`):
#: what a ``--force`` of another job may remove, beside what its manifest records
OWN_NAMES = frozenset({
    MANIFEST, "run.log", "metrics.json", "experiment.json", "diagnostics.json", "report.html",
    "report.md", "table.json", "dataset.zarr", "dataset.zarr.partial", "scores.zarr",
    "dual.zarr.partial", "samples", "sample.parquet", "theta.npy", "theta_star.npz",
    "theta_pilot.npz", "noisy.zarr", "noisy.zarr.partial", "experiment.png", "scores.png",
    "timings.png", "diagnostics.png"})
OWN_PATTERNS = ("theta_*.npy", "top_*.png", "bottom_*.png")


#: memo key of the names in the output directory when :func:`claim` made it this job's
CLAIMED = "claim:entries"


def is_own(name: str) -> bool:
    """Whether ``name`` (an entry at the top of an output directory) is one nldist writes."""
    return name in OWN_NAMES or any(fnmatch.fnmatchcase(name, p) for p in OWN_PATTERNS)


def identity(job: Any) -> dict:
    """What makes an output directory one job's: its name, data source, model and loss."""
    return {"name": job.name, "source": str(job.dataset.source), "model": job.model,
            "loss": job.loss}


def _remove(path: Path) -> None:
    """Remove a file or directory tree; a symbolic link is unlinked, never followed."""
    if is_remote(path):
        rmtree(path)
    elif path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def _entries(out: Path) -> set[str]:
    """Names at the top of the output directory (none when it does not exist)."""
    try:
        if is_remote(out):
            return {p.name for p in out.iterdir()} if out.exists() else set()
        return {p.name for p in out.iterdir()} if out.is_dir() else set()
    except (FileNotFoundError, NotADirectoryError):
        return set()


def _sources_inside(out: Path, sources: list[str]) -> set[str]:
    """Top-level names of ``out`` that are, or hold, one of the jobs' data sources (never
    removed)."""
    names = set()
    base = str(out).rstrip("/") + "/"
    for src in sources:
        p = as_path(src)
        text = str(p if is_remote(p) else p.absolute())
        if not is_remote(p):
            try:
                text = str(p.resolve())
            except OSError:
                pass
        if text.startswith(base):
            names.add(text[len(base):].split("/", 1)[0])
    return names


def check_confined(out: Path) -> None:
    """Every output nldist writes resolves inside ``out``: a symbolic link among them (at
    the top, or inside a directory nldist writes, such as ``samples/`` or ``scores.zarr``)
    that points outside ``out`` is a one-line error; nothing is written through it."""
    if is_remote(out) or not out.is_dir():
        return
    root = out.resolve()

    def check(p: Path) -> None:
        if p.is_symlink():
            target = p.resolve()
            if not target.is_relative_to(root):
                raise NldistError(f"{p} is a symbolic link to {target}, outside the output "
                                  f"directory {root}; nldist writes only inside --out: remove "
                                  "the link or choose another --out")

    for name in sorted(_entries(out)):
        if not is_own(name):
            continue
        top = out / name
        check(top)
        if top.is_dir() and not top.is_symlink():
            for d, dirs, files in os.walk(top):
                for n in [*dirs, *files]:
                    check(Path(d) / n)


def claim(ctx: RunContext, verb: str, force: bool = False) -> None:
    """Make the output directory this job's before a verb writes into it.

    A directory whose manifest names another job (:func:`identity`) is refused with a
    one-line error, unless ``force``: then that job's outputs are removed first — the names
    its manifest records as written and the names nldist writes (:func:`is_own`), never an
    entry that was there before it ran (recorded as ``foreign``), a job's data source or
    anything else (a user's notes.txt stays); a symbolic link is unlinked, never followed.
    The outputs of this verb's previous run (and, when the job's settings changed, every
    per-settings output) are removed, so a failed run never leaves an old metrics.json or
    report looking current; the manifest is marked incomplete until :func:`complete`, which
    records what this job wrote.
    """
    out = ctx.out
    check_bucket(out)
    check_confined(out)
    path = out / MANIFEST
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
    ident = identity(ctx.job)
    if old is None and out.is_dir() and (out / "metrics.json").exists():
        try:  # a run written before manifests existed
            m = json.loads((out / "metrics.json").read_text())
            old = {"identity": {"name": m.get("name"), "model": m.get("model"),
                                "loss": m.get("loss"), "source": ident["source"]}}
        except (OSError, ValueError):
            old = {}
    present = _entries(out)
    keep = _sources_inside(out, [ident["source"], str((old or {}).get("identity", {}).get(
        "source") or ident["source"])])
    if old is not None and old.get("identity") != ident:
        if not force:
            who = (old.get("identity") or {})
            raise NldistError(
                f"output directory {out} holds the outputs of another job ({who.get('name')!r}, "
                f"model {who.get('model')!r}, data {who.get('source')!r}); choose another "
                "--out, or pass --force to delete them and run this job there")
        theirs = set(old.get("outputs") or [])
        foreign = set(old.get("foreign") or [])
        for name in sorted(present):
            if (name in theirs or is_own(name)) and name not in foreign | keep:
                _remove(out / name)
        old = None
        present = _entries(out)
    digest_now = ctx.job.digest()
    stale = set(VERB_OUTPUTS[verb])
    if old is not None and old.get("job_digest") != digest_now:
        stale |= set(SETTINGS_OUTPUTS) | {p.name for p in out.glob("theta_*.npy")}
    for name in sorted(stale - keep):
        _remove(out / name)
    if old is None:  # what was here before any job wrote: never this job's
        foreign = sorted(n for n in present if not is_own(n) or n in keep)
        outputs: list[str] = []
    else:
        foreign = list(old.get("foreign") or [])
        outputs = list(old.get("outputs") or [])
    out.mkdir(parents=True, exist_ok=True)
    ctx.memo[CLAIMED] = _entries(out)
    write_json(path, {"identity": ident, "job_digest": digest_now, "verb": verb,
                      "complete": False, "started": time.time(), "nldist_version": __version__,
                      "foreign": foreign, "outputs": outputs})


def complete(ctx: RunContext) -> None:
    """Mark the manifest's current verb complete (its outputs are current) and record the
    names this job has written in the output directory (``outputs``: what a ``--force`` of
    another job removes)."""
    path = ctx.out / MANIFEST
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    now = _entries(ctx.out)
    new = now - ctx.memo.get(CLAIMED, now)  # appeared while this job ran
    foreign = set(man.get("foreign") or [])
    outputs = sorted((set(man.get("outputs") or []) | new | {n for n in now if is_own(n)})
                     - foreign)
    write_json(path, {**man, "complete": True, "finished": time.time(), "outputs": outputs})
