"""The distributed ingest of a CSV / Parquet table (file, directory, glob or URL) on the
current Dask cluster: pass 1 (:func:`_table_statistics`: per-partition statistics merged
into the plan, :mod:`nldist.ingest.plan`), pass 2 (:func:`ingest_table`: every partition
encoded and written as chunks of a Zarr store), or a Parquet table scored in place
(:func:`table_view`, :func:`open_table_view`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist._budget import x_chunk_rows
from nldist._runtime import chunk_progress
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.ingest.plan import (
    check_options,
    encode_partition,
    make_plan,
    merge_stats,
    partition_stats,
)
from nldist.ingest.sources import (
    TABLE_SUFFIXES,
    check_schemas,
    shown,
    source_files,
    source_fingerprint,
    table_format,
    table_pattern,
)
from nldist.options import IngestOptions
from nldist.store.dataset import (
    RESERVOIR_ROWS,
    check_out,
    commit_partial,
    create_partial,
    drop_chunk_records,
    partial_path,
    reservoir_index,
    resumable,
    write_reservoir_rows,
)
from nldist.store.records import digest
from nldist.store.remote import as_path, open_group, rmtree

log = logging.getLogger("nldist")


def _partitions(pattern: str, fmt: str, listed: tuple[Any, list[str]] | None = None) -> list:
    """Delayed partitions of exactly the files :func:`_source_files` lists (hidden and
    _-files, at any depth, are never read)."""
    fs, files = listed or source_files(pattern)
    if not files:
        raise NldistError(f"source {pattern!r} matches no files; check the path or glob")
    return graph.tables.table_partitions([shown(fs, f) for f in files], fmt)


def _table_statistics(source: str, o: IngestOptions) -> tuple[str, str, list, dict, dict]:
    """Pass 1 of a table on the cluster: (format, pattern, delayed partitions, merged
    per-partition statistics, encoding plan)."""
    fmt = table_format(source) or TABLE_SUFFIXES.get(Path(str(source)).suffix.lower(), "csv")
    target, features, classes, dropna = o.target, o.features, o.classes, o.dropna
    check_options(target, classes, o.standardize_target)
    pattern = table_pattern(str(source), fmt)
    fs, files = source_files(pattern)
    if not files:
        raise NldistError(f"source {source!r} matches no files; check the path or glob")
    check_schemas(fs, files, fmt, target, features)
    parts = _partitions(pattern, fmt, (fs, files))
    opts = {"target": target, "features": features, "classes": classes, "dropna": dropna}
    names = ([f"file {shown(fs, f)}" for f in files] if len(files) == len(parts)
             else [f"partition {i} of {pattern}" for i in range(len(parts))])
    stats = merge_stats(graph.writes.map_tasks(partial(partition_stats, **opts),
                                        list(zip(parts, names, strict=True)), where=names))
    plan = make_plan(stats, target, classes, dropna, o.standardize, o.standardize_target,
                     o.dtype, o.onehot_max_levels)
    return fmt, pattern, parts, stats, plan


def table_view(source: str, *, options: IngestOptions | None = None,
               fingerprint: dict | None = None, **settings: Any) -> dict:
    """A Parquet table scored in place, without ingest: its statistics pass only (settings:
    ``options`` or keywords, :class:`nldist.options.IngestOptions`).

    The same pass 1 as :func:`ingest_table` (missing values, categories, standardization
    statistics, rows per partition after encoding) on the current cluster; nothing is
    written. :func:`open_table_view` then encodes every row group on the fly in each pass.

    Returns
    -------
    dict (JSON-ready): ``plan`` (the encoding), ``sizes`` (rows per partition), ``n_rows``,
    ``n_features``, ``chunk_rows`` (the row grid of the passes), ``options``, ``attrs``
    (what an ingested store would record) and ``source_fingerprint`` (``fingerprint``: the
    caller's :func:`source_fingerprint` of ``source``, not taken again — for a text table it
    hashes every byte).
    """
    o = IngestOptions.of("table_view", options, **settings)
    fmt, pattern, parts, stats, plan = _table_statistics(source, o)
    if fmt != "parquet":
        raise NldistError(f"dataset.format parquet reads Parquet in place, but {source!r} is "
                          f"{fmt}; drop `format` to ingest it into Zarr")
    n, d = plan["n_rows"], len(plan["features"])
    cr = int(min(o.chunk_rows or x_chunk_rows(d, np.dtype(o.dtype).itemsize), n))
    return {"format": "parquet", "source": str(source), "pattern": pattern, "plan": plan,
            "sizes": [int(k) for k in stats["sizes"]], "n_rows": int(n), "n_features": d,
            "chunk_rows": cr, "options": {"features": o.features, "classes": o.classes,
                                          "dropna": o.dropna},
            "source_fingerprint": (fingerprint if fingerprint is not None
                                   else source_fingerprint(source)),
            "attrs": {**plan["attrs"], "source": str(source), "format": "parquet (in place)",
                      "n_rows": int(n), "n_features": d, "chunk_rows": cr,
                      "partitions": len(parts), "nldist_version": __version__}}


def open_table_view(view: dict, count: str | None = None) -> tuple[Any, Any]:
    """Lazy X (n, d), y (n,) of a :func:`table_view`: row groups read and encoded by the
    workers in every pass, in a grid of ``chunk_rows`` rows (``count``: partition reads
    counted under that token)."""
    parts = _partitions(view["pattern"], "parquet")
    if len(parts) != len(view["sizes"]):
        raise NldistError(f"the Parquet source {view['source']!r} has {len(parts)} row groups "
                          f"now, {len(view['sizes'])} when its statistics were taken; it "
                          "changed: run the job again (the statistics are redone)")
    encode = partial(encode_partition, plan=view["plan"], **view["options"])
    X, y, _ = graph.tables.table_xy(parts, encode, view["sizes"], view["n_features"],
                             np.dtype(view["plan"]["dtype"]), view["chunk_rows"], count=count)
    return X, y


def ingest_table(source: str, out: str | Path, *,
                 progress: Callable[[int, int], None] | None = None,
                 options: IngestOptions | None = None, overwrite: bool = False,
                 reservoir: int = RESERVOIR_ROWS, seed: int = 0,
                 extra_attrs: dict | None = None, fingerprint: dict | None = None,
                 **settings: Any) -> Path:
    """Out-of-core, distributed ingest of a CSV / Parquet table (file, directory, glob or URL)
    on the current Dask cluster: :func:`_ingest_table`, with ``progress(done, total)`` told
    as the partition tasks of its two passes finish (a chunk-level bar; None: the listener
    already in force, e.g. a pipeline stage's). Settings: ``options`` or keywords
    (:class:`nldist.options.IngestOptions`); ``fingerprint``: the caller's
    :func:`source_fingerprint` of ``source`` (not taken again: for a text table it hashes
    every byte); the rest as :func:`nldist.ingest.ingest`."""
    o = IngestOptions.of("ingest_table", options, **settings)
    run = partial(_ingest_table, source, out, o, overwrite=overwrite, reservoir=reservoir,
                  seed=seed, extra_attrs=extra_attrs, fingerprint=fingerprint)
    if progress is None:
        return run()
    with chunk_progress(progress):
        return run()


def _ingest_table(source: str, out: str | Path, o: IngestOptions, *, overwrite: bool,
                  reservoir: int, seed: int, extra_attrs: dict | None,
                  fingerprint: dict | None = None) -> Path:
    """Out-of-core, distributed ingest of a CSV / Parquet table (file, directory, glob or URL)
    on the current Dask cluster (:mod:`nldist.ingest.plan` for the two passes).

    Pass 1 on the workers: per-partition statistics (missing and infinite values per column,
    categories, Chan moments), merged on the driver into the encoding and standardization.
    Pass 2: every partition encoded, re-blocked into the store's chunk grid and each chunk
    written by one task into ``OUT.partial`` (renamed into place when complete), with the
    SHA-256 of every chunk (the content digest) and a seeded uniform reservoir. The driver
    holds per-partition statistics only. Arguments as :func:`ingest`.
    """
    out = check_out(out, overwrite)
    dtype = o.dtype
    # the reuse key of a killed ingest: the settings' digest, the source, the reservoir
    fp = fingerprint if fingerprint is not None else source_fingerprint(source)
    rkey = digest({"source": fp, "options": o.digest(),
                   "reservoir": [reservoir, seed], "version": __version__}, 32)
    tmp = partial_path(out)
    old = resumable(out, rkey)
    if old is not None:  # a killed ingest of the same files and settings: its pass 1 and chunks
        state = old["ingest_state"]
        plan, sizes = state["plan"], np.asarray(state["sizes"], dtype=np.int64)
        fmt = state["format"]
        parts = _partitions(table_pattern(str(source), fmt), fmt)
        if len(parts) != len(sizes):
            old = None
        else:
            log.info("resuming the ingest into %s (its statistics and finished chunks)", tmp)
    if old is None:
        fmt, _, parts, stats, plan = _table_statistics(source, o)
        sizes = np.asarray(stats["sizes"], dtype=np.int64)
    n, d = plan["n_rows"], len(plan["features"])
    cr = int(min(o.chunk_rows or x_chunk_rows(d, np.dtype(dtype).itemsize), n))
    if old is None:
        g, _ = create_partial(out, {"X": ((n, d), (cr, d), dtype), "y": ((n,), (cr,), dtype)})
        g.attrs.update({"ingest_resume": rkey, "ingest_state": {
            "plan": plan, "sizes": sizes.tolist(), "format": fmt}})
    else:
        g = open_group(tmp, mode="r+")
    res = reservoir_index(n, reservoir, seed)
    owner = res // cr  # the chunk of each reservoir row (a regular grid of cr rows)
    picks = {int(c): res[owner == c] - int(c) * cr for c in np.unique(owner)}
    try:
        encode = partial(encode_partition, plan=plan, features=o.features, classes=o.classes,
                         dropna=o.dropna)
        done, kept = graph.tables.write_table(parts, encode, sizes.tolist(), d, np.dtype(dtype),
                                              str(tmp), cr, picks, rkey, resume=old is not None)
        if old is not None:
            log.info("ingest resumed: %d of %d chunks kept, %d written", kept, len(done),
                     len(done) - kept)
        info = None
        if res.size:
            Xr = np.empty((res.size, d), dtype=dtype)
            yr = np.empty(res.size, dtype=dtype)
            for c, _, xp, yp in done:
                at = np.flatnonzero(owner == c)
                Xr[at], yr[at] = xp, yp
            if "reservoir" in g:  # left by a killed run after its chunks
                rmtree(as_path(tmp) / "reservoir")
            info = write_reservoir_rows(g, Xr, yr, res, seed)
        drop_chunk_records(tmp)
        attrs = {**plan["attrs"], **(extra_attrs or {}), "source": str(source),
                 "format": fmt, "n_rows": n, "n_features": d, "chunk_rows": cr,
                 "content_sha256": digest({"chunks": [sha for _, sha, _, _ in done]}, 64),
                 "content_scheme": "sha256 of the per-chunk sha256 list",
                 "partitions": len(parts), "nldist_version": __version__,
                 **({"reservoir": info} if info else {})}
        g.attrs.put({k: v for k, v in dict(g.attrs).items()
                     if k not in ("ingest_resume", "ingest_state")})
        return commit_partial(out, attrs)
    except KeyboardInterrupt:
        raise  # keep OUT.partial and its chunk records: the next run resumes from them
    except BaseException:
        rmtree(tmp)
        raise
