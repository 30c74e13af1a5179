"""The data stages: the dataset (ingest, or a Parquet table scored in place), X and y for the
passes (kept in worker memory per ``cache_x``), the store-counted reads, the model, the
targets' checks, and :data:`KEYS`, the job fields each reusable output depends on.

Part of :mod:`nldist.pipeline.stages`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist import ingest as ingest_mod
from nldist._budget import cache_budget
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.base import Model
from nldist.models.coded import Codes
from nldist.models.losses import check_labels, target_columns
from nldist.pipeline.context import RunContext
from nldist.store import stage_cache
from nldist.store.dataset import (
    RESERVOIR_ROWS,
    fingerprint,
    is_dataset,
    is_partial,
    read_attrs,
    write_dataset,
)
from nldist.store.records import digest, write_json
from nldist.store.remote import as_path, rmtree

log = logging.getLogger("nldist")


@dataclass(frozen=True)
class Key:
    """What invalidates one reusable output (a row of :data:`KEYS`).

    Attributes
    ----------
    output : str
        The file or store in OUT it keys.
    fields : tuple of str
        The job fields it depends on (the digest of their values,
        :meth:`nldist.jobs.JobConfig.digest`; with ``"dataset"``, also the dataset's content
        fingerprint, except for the ingest, which makes it).
    inputs : tuple of str
        What else it depends on, not a job setting: its stage passes these by name to
        :func:`stage_key` (an input passed as None is left out of the key).
    """

    output: str
    fields: tuple[str, ...]
    inputs: tuple[str, ...] = ()


#: every reusable output and what invalidates it: a later run reuses the output only when
#: its key (:func:`stage_key`) is the one recorded with it
KEYS: dict[str, Key] = {
    "ingest": Key("dataset.zarr (or table.json)", ("dataset",),
                  ("source",)),  # nldist.ingest.source_fingerprint
    "optimum": Key("theta_star.npz", ("dataset", "model", "radius", "tol", "max_iter",
                                      "loss")),
    "pilot": Key("theta_pilot.npz", ("dataset", "model", "radius", "tol", "max_iter", "loss",
                                     "pilot_s", "pilot_from", "seed"),
                 ("rows",)),  # select's factor pilot: its own size
    # narrowed per kind (Kind.depends_on; the rest recorded as UNUSED_SCORE_FIELDS), kept as
    # the array's provenance attrs; the key is their digest with the chunking
    # (nldist.store.scores.resume_key): stages.scoring.score_provenance
    "scores": Key("scores.zarr/<kind>", ("dataset", "model", "loss", "ridge",
                                         "linear_augment_y", "sketch", "seed", "adjoint"),
                  ("kind", "theta", "n", "nldist_version", "chunks")),
    "dual_blocks": Key("dual.zarr.partial/<kind>", ("adjoint",),
                       ("scores",)),  # the scores' resume key
}


def stage_key(ctx: RunContext, stage: str, **inputs: Any) -> str:
    """The cache key of a stage's output: the digest of the job fields :data:`KEYS` declares
    for it (:func:`data_key`) and of the inputs it declares, passed here by name."""
    decl = KEYS[stage]
    if set(inputs) != set(decl.inputs):
        raise TypeError(f"the {stage} key takes {decl.inputs}, not {tuple(inputs)}")
    base = ctx.job.digest(*decl.fields) if stage == "ingest" else data_key(ctx, *decl.fields)
    given = {k: v for k, v in inputs.items() if v is not None}
    return digest({"settings": base, **given}, 16) if given else base

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
    fp = ingest_mod.source_fingerprint(ds.source)
    key = stage_key(ctx, "ingest", source=fp)
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
            view = ingest_mod.table_view(ds.source, options=ds.ingest_options(), fingerprint=fp)
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
    fp = ingest_mod.source_fingerprint(ds.source)
    key = stage_key(ctx, "ingest", source=fp)
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
                ds.source, path, options=ds.ingest_options(), overwrite=True,
                reservoir=max(RESERVOIR_ROWS, ctx.job.pilot_s), extra_attrs={"ingest_key": key},
                fingerprint=fp)
        ctx.dataset_fp = dataset_fingerprint(path)
        return path
    with ctx.timed("ingest"):
        df, meta = ingest_mod.read_source(ds.source, ds.target)
        X, y, attrs = ingest_mod.prepare(df, meta["target"], options=ds.ingest_options())
        attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
        attrs["ingest_key"] = key
        ctx.out.mkdir(parents=True, exist_ok=True)
        write_dataset(path, X, y, attrs, chunk_rows=ds.chunk_rows, overwrite=True,
                      reservoir=max(RESERVOIR_ROWS, ctx.job.pilot_s))
    ctx.dataset_fp = dataset_fingerprint(path)
    return path

def cached(ctx: RunContext, stage: str, npz: Path, key: str, pick: Any) -> Any:
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
        m = get_model(ctx.job.model, X.shape[1], Codes.from_attrs(dataset_attrs(ctx)))
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
