"""Ingest tables (packaged datasets, CSV/Parquet/NPZ/NPY files) into row-chunked Zarr datasets.

Reads a source into a table (:func:`read_source`), turns it into numeric X (n, d), y (n,)
and provenance attrs (:func:`prepare`: one-hot categories, missing values, two classes,
standardization) and writes the dataset through :mod:`nldist.store.dataset`, which
describes the layout and writes atomically.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nldist import datasets, graph
from nldist._budget import x_chunk_rows
from nldist._runtime import chunk_progress
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.store.dataset import (
    RESERVOIR_ROWS,
    check_out,
    commit_partial,
    create_partial,
    drop_chunk_records,
    partial_path,
    read_attrs,
    reservoir_index,
    resumable,
    write_dataset,
    write_reservoir_rows,
)
from nldist.store.records import digest, file_fingerprint, tree_fingerprint
from nldist.store.remote import as_path, filesystem, open_group, rmtree
from nldist.tablestats import (
    ONEHOT_MAX_LEVELS,
    check_categorical,
    class_index,
    code_column,
    coded_columns,
    encode_partition,
    make_plan,
    merge_stats,
    partition_stats,
    select_columns,
)

log = logging.getLogger("nldist")

def read_source(source: str | Path, target: str | None) -> tuple[pd.DataFrame, dict]:
    """Read a packaged dataset name or a CSV/Parquet/NPZ/NPY file into a DataFrame.

    Returns
    -------
    frame : DataFrame including the target column
    meta : dict with ``target``, ``source``, ``task`` (may be None), ``license``
    """
    src = str(source)
    path = Path(src)
    if not path.exists() and src in datasets.DATASETS:
        df, info = datasets.load(src)
        return df, {"target": target or info.target, "source": info.source, "task": info.task,
                    "license": info.license, "dataset": info.name, **info.attrs()}
    if not path.exists():
        raise NldistError(
            f"source {src!r} not found; give an existing .csv/.parquet/.npz/.npy file or one of "
            f"the packaged datasets: {', '.join(sorted(datasets.DATASETS))}"
        )
    name = path.name.lower()
    meta: dict[str, Any] = {"source": str(path.resolve()), "task": None, "license": None}
    try:
        if name.endswith((".csv", ".csv.gz", ".tsv")):
            df = pd.read_csv(path, sep="\t" if name.endswith(".tsv") else ",")
        elif name.endswith((".parquet", ".pq", ".parquet.brotli")):
            df = pd.read_parquet(path)
        elif name.endswith(".npz"):
            with np.load(path, allow_pickle=False) as z:
                if "X" not in z:
                    raise NldistError(
                        f"{path} has no array 'X'; save it with np.savez(f, X=X, y=y)"
                    )
                X = np.asarray(z["X"])
                if X.ndim != 2:
                    raise NldistError(f"{path}: X must be 2-D, got shape {X.shape}")
                df = pd.DataFrame(X, columns=[f"x{i}" for i in range(X.shape[1])])
                if "y" in z:
                    df["y"] = np.asarray(z["y"]).reshape(-1) if z["y"].size == len(df) else \
                        _bad_y(z["y"].shape, len(df))
                    target = target or "y"
        elif name.endswith(".npy"):
            A = np.load(path, allow_pickle=False)
            if A.ndim != 2 or A.shape[1] < 2:
                raise NldistError(f"{path}: a .npy source must be 2-D with the target as a column, "
                                  f"got shape {A.shape}")
            df = pd.DataFrame(A, columns=[f"x{i}" for i in range(A.shape[1])])
            target = target or df.columns[-1]
        else:
            raise NldistError(f"cannot read {path.name!r}: use .csv, .tsv, .parquet, .npz or .npy")
    except NldistError:
        raise
    except Exception as exc:
        raise NldistError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    meta["target"] = target
    return df, meta


def source_fingerprint(source: str | Path) -> dict:
    """What an ingest of ``source`` depends on: a packaged dataset's name and pinned package
    (its content is fixed by that version), or a file's size, mtime and SHA-256."""
    src = str(source)
    path = Path(src)
    if not path.exists() and src in datasets.DATASETS:
        return {"dataset": src, "source": datasets.DATASETS[src].source}
    if "://" in src or any(ch in src for ch in "*?["):
        return {"files": remote_fingerprint(src), "footers": parquet_footers(src)}
    if not path.exists():
        raise NldistError(
            f"source {src!r} not found; give an existing .csv/.parquet/.npz/.npy file or one of "
            f"the packaged datasets: {', '.join(sorted(datasets.DATASETS))}"
        )
    if path.is_dir():
        return {"directory": str(path.resolve()), "files": tree_fingerprint(path),
                "footers": parquet_footers(src)}
    return {"file": str(path.resolve()), **file_fingerprint(path)}


def parquet_footers(source: str) -> str | None:
    """SHA-256 of the footer (schema, row groups, their sizes and column statistics) of every
    Parquet file a directory, glob or URL names (the files nldist reads): a rewrite of the
    same size and mtime changes it. One small read per file; None when there are none."""
    fs, files = _source_files(source)
    files = [f for f in files if f.lower().endswith((".parquet", ".pq"))]
    if not files:
        return None
    h = hashlib.sha256()
    try:
        for f in files:
            size = int(fs.size(f) or 0)
            h.update(f"{f}\0{size}\0".encode())
            if size < 12:
                continue
            with fs.open(f, "rb") as fh:
                fh.seek(size - 8)
                tail = fh.read(8)
                n = min(int.from_bytes(tail[:4], "little"), size - 8)
                fh.seek(size - 8 - n)
                h.update(fh.read(n))
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot read the Parquet footers of {source!r}: "
                          f"{type(exc).__name__}: {exc}; check the path, bucket and "
                          "credentials (AWS_* variables, fsspec config)") from None
    return h.hexdigest()


def remote_fingerprint(source: str) -> list:
    """(path, size, mtime or ETag) of every file a glob or an fsspec URL names (listing
    only: no data read), so a rewritten file or a new one invalidates the ingest."""
    try:
        fs, path = filesystem(source)
        paths = sorted(fs.glob(path)) if any(ch in path for ch in "*?[") else \
            sorted(fs.find(path)) if fs.isdir(path) else [path]
        out = []
        for p in paths:
            info = fs.info(p)
            out.append([p, info.get("size"), str(info.get("mtime") or info.get("LastModified")
                                                 or info.get("ETag") or "")])
    except (FileNotFoundError, OSError, ValueError) as exc:
        raise NldistError(f"cannot list source {source!r}: {type(exc).__name__}: {exc}; check "
                          "the path, bucket and credentials (AWS_* variables, fsspec config)"
                          ) from None
    if not out:
        raise NldistError(f"source {source!r} matches no files; check the path or glob")
    return out


def _bad_y(shape: tuple, n: int):
    raise NldistError(f"y has shape {shape} but X has {n} rows; save y with shape ({n},)")


def prepare(
    df: pd.DataFrame,
    target: str | None,
    *,
    features: list[str] | None = None,
    classes: list[Any] | None = None,
    dropna: bool = False,
    standardize: bool = False,
    standardize_target: bool = False,
    dtype: str = "float64",
    onehot_max_levels: int = ONEHOT_MAX_LEVELS,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Turn a table into numeric X (n, d), y (n,) and provenance attrs.

    One-hot encodes categorical columns (categories recorded) — a column with more than
    ``onehot_max_levels`` levels becomes one column of integer codes after the others
    (sorted levels in ``attrs["codes"]``, as :func:`nldist.tablestats.make_plan`) — counts
    missing values (error
    unless ``dropna``), optionally keeps two classes of the target (mapped to 0/1) and
    standardizes features / target (means and scales recorded).
    """
    if target is None:
        raise NldistError("no target column given; pass --target NAME (or target: in the job)")
    df = select_columns(df, target, features, None)
    attrs: dict[str, Any] = {"target": str(target)}
    if classes is not None:
        if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
            raise NldistError(f"classes must name two or more distinct target values, got "
                              f"{classes!r}")
        if standardize_target and len(classes) > 2:
            raise NldistError(f"{len(classes)} classes are labels 0..{len(classes) - 1}, not a "
                              "number to standardize; drop standardize_target")
        keep = df[target].isin(classes)
        df = df[keep]
        df = df.assign(**{target: class_index(df[target], classes)})
        attrs["classes"] = [str(c) for c in classes]
    n_missing = int(df.isna().sum().sum())
    if n_missing:
        rows = int(df.isna().any(axis=1).sum())
        if not dropna:
            raise NldistError(f"the table has {n_missing} missing value(s) in {rows} row(s); pass "
                              "--dropna (dropna: true in the job) to drop those rows")
        df = df.dropna()
        attrs["dropped_rows"] = rows
    if len(df) == 0:
        raise NldistError("the table has no rows left; check the source, classes and dropna")
    y_raw = df[target]
    if not pd.api.types.is_numeric_dtype(y_raw) or pd.api.types.is_bool_dtype(y_raw):
        cats = sorted(pd.unique(y_raw.astype(str)))
        if len(cats) != 2:
            raise NldistError(f"target {target!r} is not numeric and has {len(cats)} values; "
                              "choose two with --classes A,B or pick a numeric target")
        attrs["classes"] = cats
        y = (y_raw.astype(str) == cats[1]).to_numpy(np.float64)
    else:
        y = y_raw.to_numpy(np.float64)
    Xdf = df.drop(columns=[target])
    categorical = [c for c in Xdf.columns if not pd.api.types.is_numeric_dtype(Xdf[c])
                   or pd.api.types.is_bool_dtype(Xdf[c])]
    for c in categorical:
        check_categorical(Xdf[c], len(Xdf), str(c))
    coded = coded_columns({c: int(Xdf[c].astype(str).nunique()) for c in categorical},
                          onehot_max_levels)
    categorical = [c for c in categorical if c not in coded]
    codes = {str(c): sorted(pd.unique(Xdf[c].astype(str))) for c in coded}
    code_cols = [code_column(Xdf[c], codes[str(c)], str(c)) for c in coded]
    Xdf = Xdf.drop(columns=coded)
    if categorical:
        attrs["categories"] = {str(c): [str(v) for v in pd.unique(Xdf[c].astype(str))]
                               for c in categorical}
        Xdf = pd.get_dummies(Xdf.astype({c: str for c in categorical}), columns=categorical,
                             drop_first=True, dtype=np.float64)
    if Xdf.shape[1] == 0 and not coded:
        raise NldistError("no feature columns left; the table needs at least one besides target")
    X = Xdf.to_numpy(np.float64)
    if coded:
        X = np.column_stack([X, *code_cols])
        attrs["codes"] = codes
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)):
        raise NldistError("the table contains inf values; drop or clip them before ingest")
    attrs["features"] = [str(c) for c in Xdf.columns] + [str(c) for c in coded]
    if standardize:
        with np.errstate(over="ignore", invalid="ignore"):
            mu, sd = X.mean(axis=0), X.std(axis=0)
            sd[sd == 0] = 1.0
            if coded:  # codes are labels, not numbers
                mu[-len(coded):], sd[-len(coded):] = 0.0, 1.0
            X = (X - mu) / sd
        bad = ~np.isfinite(X).all(axis=0) | ~np.isfinite(mu) | ~np.isfinite(sd)
        if bad.any():
            names = [attrs["features"][j] for j in np.flatnonzero(bad)]
            raise NldistError(f"standardizing column(s) {', '.join(names[:5])} overflows "
                              "(values near the float64 limit); rescale or drop them before "
                              "ingest")
        attrs["standardize"] = {"mean": mu.tolist(), "scale": sd.tolist()}
    if standardize_target:
        with np.errstate(over="ignore", invalid="ignore"):
            ym, ys = float(y.mean()), float(y.std()) or 1.0
            y = (y - ym) / ys
        if not (np.all(np.isfinite(y)) and np.isfinite(ym) and np.isfinite(ys)):
            raise NldistError(f"standardizing the target {target!r} overflows (values near the "
                              "float64 limit); rescale it before ingest")
        attrs["standardize_target"] = {"mean": ym, "scale": ys}
    if dtype not in ("float32", "float64"):
        raise NldistError(f"dtype must be float32 or float64, got {dtype!r}")
    with np.errstate(over="ignore", invalid="ignore"):
        X, y = X.astype(dtype), y.astype(dtype)
    finite = np.isfinite(X).all(axis=0)
    if not finite.all() or not np.isfinite(y).all():
        names = [attrs["features"][j] for j in np.flatnonzero(~finite)] or [str(target)]
        raise NldistError(f"column(s) {', '.join(names[:5])} are not finite in {dtype} (values "
                          f"near the {dtype} limit); rescale or drop them before ingest")
    return X, y, attrs


def ingest(
    source: str | Path,
    out: str | Path,
    *,
    target: str | None = None,
    features: list[str] | None = None,
    classes: list[Any] | None = None,
    dropna: bool = False,
    standardize: bool = False,
    standardize_target: bool = False,
    chunk_rows: int | None = None,
    dtype: str = "float64",
    overwrite: bool = False,
    reservoir: int = RESERVOIR_ROWS,
    seed: int = 0,
    onehot_max_levels: int = ONEHOT_MAX_LEVELS,
) -> Path:
    """Ingest a packaged dataset or a CSV/Parquet/NPZ/NPY file into a Zarr dataset.

    Parameters
    ----------
    source : str or Path
        A packaged dataset name (``nldist.datasets.DATASETS``) or a file path.
    out : str or Path
        The Zarr group to write (must not exist unless ``overwrite``).
    target : str, optional
        Target column (defaults: the packaged dataset's, ``y`` of an .npz, last .npy column).
    reservoir, seed : int
        Rows (and seed) of the uniform sample written beside X for the pilot
        (:func:`nldist.store.dataset.write_dataset`; 0: none).
    onehot_max_levels : int
        A text column with more levels is stored as integer codes, not one-hot columns.

    Returns
    -------
    Path of the written group.
    """
    out = check_out(out, overwrite)  # before reading the source
    df, meta = read_source(source, target)
    X, y, attrs = prepare(df, meta["target"], features=features, classes=classes, dropna=dropna,
                          standardize=standardize, standardize_target=standardize_target,
                          dtype=dtype, onehot_max_levels=onehot_max_levels)
    attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
    return write_dataset(out, X, y, attrs, chunk_rows=chunk_rows, overwrite=overwrite,
                         reservoir=reservoir, seed=seed)


#: file endings of table sources the distributed ingest reads
TABLE_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".parquet": "parquet", ".pq": "parquet"}


def table_format(source: str) -> str | None:
    """``"csv"``, ``"tsv"`` or ``"parquet"`` for a source the distributed ingest reads — a
    directory of such files, a glob, or a URL (``s3://``, ``gs://``, ``file://``, ...) —
    else None (a single local file or a packaged dataset: the in-memory ingest)."""
    src = str(source)
    remote = "://" in src
    glob = any(ch in src for ch in "*?[")
    path = Path(src)
    if not (remote or glob or path.is_dir()):
        return None
    names = [src]
    if path.is_dir():
        names = [p.name for p in sorted(path.iterdir()) if p.is_file()]
    elif remote and not glob:
        try:  # a prefix: what files it holds (listing only)
            fs, root = filesystem(src)
            if fs.isdir(root):
                names = [str(p) for p in sorted(fs.find(root))]
        except (OSError, ValueError):  # unreachable here: the read says why, in one line
            pass
    for name in names:
        for suffix, fmt in TABLE_SUFFIXES.items():
            if name.lower().endswith(suffix) or name.lower().endswith(suffix + ".gz"):
                return fmt
    if (path.is_dir() or remote) and names != [src]:
        raise NldistError(f"directory {src!r} holds no .csv, .tsv or .parquet files")
    return "parquet" if remote else None  # a remote prefix without a suffix: Parquet files


def _pattern(src: str, fmt: str) -> str:
    """A CSV directory (local or remote) as the glob of its files (Parquet reads dirs)."""
    if fmt == "parquet" or any(ch in src for ch in "*?["):
        return src
    fs, root = filesystem(src)
    return src.rstrip("/") + f"/*.{fmt}" if fs.isdir(root) else src


def _source_files(pattern: str) -> tuple[Any, list[str]]:
    """The data files a directory, glob or URL names (listing only; hidden and _-files out)."""
    try:
        fs, root = filesystem(pattern)
        files = sorted(fs.glob(root)) if any(ch in root for ch in "*?[") else \
            sorted(fs.find(root)) if fs.isdir(root) else ([root] if fs.exists(root) else [])
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot list {pattern!r}: {type(exc).__name__}: {exc}; check the "
                          "path, bucket and credentials (AWS_* variables, fsspec config)"
                          ) from None
    base = root.rstrip("/") + "/"

    def hidden(f: str) -> bool:  # any part below the root: _backup/x.parquet, .x.parquet
        rel = f[len(base):] if f.startswith(base) else Path(f).name
        return any(part.startswith(("_", ".")) for part in rel.split("/"))

    return fs, [f for f in files if not hidden(f)]


def _partitions(pattern: str, fmt: str, listed: tuple[Any, list[str]] | None = None) -> list:
    """Delayed partitions of exactly the files :func:`_source_files` lists (hidden and
    _-files, at any depth, are never read)."""
    fs, files = listed or _source_files(pattern)
    if not files:
        raise NldistError(f"source {pattern!r} matches no files; check the path or glob")
    return graph.tables.table_partitions([_shown(fs, f) for f in files], fmt)


def _shown(fs: Any, f: str) -> str:
    """A listed file as the user would write it: a plain local path, else its URL."""
    url = fs.unstrip_protocol(f)
    return url[len("file://"):] if url.startswith("file://") else url


def _arrow_kind(t: Any) -> str | None:
    """``"text"`` or ``"numeric"`` for a Parquet column's Arrow type (None: no values to
    tell, e.g. the null type of an empty column)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return None
    return "numeric" if pa.types.is_integer(t) or pa.types.is_floating(t) else "text"


def _check_schemas(fs: Any, files: list[str], fmt: str, target: str,
                   features: list[str] | None) -> None:
    """Every file has the target and the features (all of the first file's columns when none
    are chosen; then also no other columns): read from the files' footers / header lines
    only, on the driver."""
    def columns(f: str) -> list[str]:
        try:
            with fs.open(f, "rb") as fh:
                if fmt == "parquet":
                    schema = pq.read_schema(fh)
                    kinds[f] = {name: _arrow_kind(schema.field(name).type)
                                for name in schema.names}
                    return list(schema.names)
                return pd.read_csv(fh, sep="\t" if fmt == "tsv" else ",", nrows=0).columns.tolist()
        except (OSError, NldistError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged, partial or foreign file
            what = ("not a complete Parquet file (no footer: cut short, still being uploaded, "
                    "or another format)" if fmt == "parquet"
                    else f"not readable as {fmt.upper()} ({type(exc).__name__})")
            raise NldistError(f"file {_shown(fs, f)} is {what}; upload it again whole or "
                              "remove it from the source") from None

    kinds: dict[str, dict[str, str | None]] = {}
    first = columns(files[0])
    want = set(features or [c for c in first if c != target]) | {target}
    seen: dict[str, tuple[str, str]] = {}  # column -> (text | numeric, the file that said so)
    for f in files:
        have = set(columns(f))
        for c, kind in kinds.get(f, {}).items():  # declared types: empty files count too
            if kind is None or c not in want:
                continue
            if c in seen and seen[c][0] != kind:
                raise NldistError(f"column {c!r} is {kind} in file {_shown(fs, f)} but "
                                  f"{seen[c][0]} in file {_shown(fs, seen[c][1])} (its declared "
                                  "type, empty files included); fix its values (a stray "
                                  "string?) or leave it out with features: [...]")
            seen.setdefault(c, (kind, f))
        missing = sorted(want - have)
        extra = sorted(have - set(first)) if features is None else []
        if extra:
            raise NldistError(f"file {_shown(fs, f)} has column(s) {', '.join(extra)} that "
                              f"{_shown(fs, files[0])} lacks; give files of one schema or choose "
                              "the columns with features: [...]")
        if missing:
            raise NldistError(f"file {_shown(fs, f)} lacks column(s) {', '.join(missing)} (of "
                              f"{_shown(fs, files[0])}'s schema); give files of one schema or "
                              "choose the columns with features: [...]")


def _table_statistics(source: str, target: str | None, features: list[str] | None,
                      classes: list[Any] | None, dropna: bool, standardize: bool,
                      standardize_target: bool, dtype: str,
                      onehot_max_levels: int = ONEHOT_MAX_LEVELS
                      ) -> tuple[str, str, list, dict, dict]:
    """Pass 1 of a table on the cluster: (format, pattern, delayed partitions, merged
    per-partition statistics, encoding plan)."""
    fmt = table_format(source) or TABLE_SUFFIXES.get(Path(str(source)).suffix.lower(), "csv")
    if target is None:
        raise NldistError("no target column given; pass --target NAME (or target: in the job)")
    pattern = _pattern(str(source), fmt)
    fs, files = _source_files(pattern)
    if not files:
        raise NldistError(f"source {source!r} matches no files; check the path or glob")
    _check_schemas(fs, files, fmt, target, features)
    parts = _partitions(pattern, fmt, (fs, files))
    opts = {"target": target, "features": features, "classes": classes, "dropna": dropna}
    names = ([f"file {_shown(fs, f)}" for f in files] if len(files) == len(parts)
             else [f"partition {i} of {pattern}" for i in range(len(parts))])
    stats = merge_stats(graph.writes.map_tasks(partial(partition_stats, **opts),
                                        list(zip(parts, names, strict=True)), where=names))
    plan = make_plan(stats, target, classes, dropna, standardize, standardize_target, dtype,
                     onehot_max_levels)
    return fmt, pattern, parts, stats, plan


def table_view(source: str, *, target: str | None, features: list[str] | None = None,
               classes: list[Any] | None = None, dropna: bool = False,
               standardize: bool = False, standardize_target: bool = False,
               chunk_rows: int | None = None, dtype: str = "float64",
               onehot_max_levels: int = ONEHOT_MAX_LEVELS) -> dict:
    """A Parquet table scored in place, without ingest: its statistics pass only.

    The same pass 1 as :func:`ingest_table` (missing values, categories, standardization
    statistics, rows per partition after encoding) on the current cluster; nothing is
    written. :func:`open_table_view` then encodes every row group on the fly in each pass.

    Returns
    -------
    dict (JSON-ready): ``plan`` (the encoding), ``sizes`` (rows per partition), ``n_rows``,
    ``n_features``, ``chunk_rows`` (the row grid of the passes), ``options``, ``attrs``
    (what an ingested store would record) and ``source_fingerprint``.
    """
    fmt, pattern, parts, stats, plan = _table_statistics(
        source, target, features, classes, dropna, standardize, standardize_target, dtype,
        onehot_max_levels)
    if fmt != "parquet":
        raise NldistError(f"dataset.format parquet reads Parquet in place, but {source!r} is "
                          f"{fmt}; drop `format` to ingest it into Zarr")
    n, d = plan["n_rows"], len(plan["features"])
    cr = int(min(chunk_rows or x_chunk_rows(d, np.dtype(dtype).itemsize), n))
    return {"format": "parquet", "source": str(source), "pattern": pattern, "plan": plan,
            "sizes": [int(k) for k in stats["sizes"]], "n_rows": int(n), "n_features": d,
            "chunk_rows": cr, "options": {"features": features, "classes": classes,
                                          "dropna": dropna},
            "source_fingerprint": source_fingerprint(source),
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
                 progress: Callable[[int, int], None] | None = None, **opts: Any) -> Path:
    """Out-of-core, distributed ingest of a CSV / Parquet table (file, directory, glob or URL)
    on the current Dask cluster: :func:`_ingest_table`, with ``progress(done, total)`` told
    as the partition tasks of its two passes finish (a chunk-level bar; None: the listener
    already in force, e.g. a pipeline stage's)."""
    if progress is None:
        return _ingest_table(source, out, **opts)
    with chunk_progress(progress):
        return _ingest_table(source, out, **opts)


def _ingest_table(
    source: str,
    out: str | Path,
    *,
    target: str | None = None,
    features: list[str] | None = None,
    classes: list[Any] | None = None,
    dropna: bool = False,
    standardize: bool = False,
    standardize_target: bool = False,
    chunk_rows: int | None = None,
    dtype: str = "float64",
    overwrite: bool = False,
    reservoir: int = RESERVOIR_ROWS,
    seed: int = 0,
    extra_attrs: dict | None = None,
    onehot_max_levels: int = ONEHOT_MAX_LEVELS,
) -> Path:
    """Out-of-core, distributed ingest of a CSV / Parquet table (file, directory, glob or URL)
    on the current Dask cluster (:mod:`nldist.tablestats` for the two passes).

    Pass 1 on the workers: per-partition statistics (missing and infinite values per column,
    categories, Chan moments), merged on the driver into the encoding and standardization.
    Pass 2: every partition encoded, re-blocked into the store's chunk grid and each chunk
    written by one task into ``OUT.partial`` (renamed into place when complete), with the
    SHA-256 of every chunk (the content digest) and a seeded uniform reservoir. The driver
    holds per-partition statistics only. Arguments as :func:`ingest`.
    """
    out = check_out(out, overwrite)
    opts = {"target": target, "features": features, "classes": classes, "dropna": dropna}
    rkey = digest({"source": source_fingerprint(source), "options": opts, "dtype": dtype,
                   "standardize": [standardize, standardize_target], "chunk_rows": chunk_rows,
                   "onehot_max_levels": onehot_max_levels,
                   "reservoir": [reservoir, seed], "version": __version__}, 32)
    tmp = partial_path(out)
    old = resumable(out, rkey)
    if old is not None:  # a killed ingest of the same files and settings: its pass 1 and chunks
        state = old["ingest_state"]
        plan, sizes = state["plan"], np.asarray(state["sizes"], dtype=np.int64)
        fmt = state["format"]
        parts = _partitions(_pattern(str(source), fmt), fmt)
        if len(parts) != len(sizes):
            old = None
        else:
            log.info("resuming the ingest into %s (its statistics and finished chunks)", tmp)
    if old is None:
        fmt, _, parts, stats, plan = _table_statistics(
            source, target, features, classes, dropna, standardize, standardize_target, dtype,
            onehot_max_levels)
        sizes = np.asarray(stats["sizes"], dtype=np.int64)
    n, d = plan["n_rows"], len(plan["features"])
    cr = int(min(chunk_rows or x_chunk_rows(d, np.dtype(dtype).itemsize), n))
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
        done, kept = graph.tables.write_table(parts, partial(encode_partition, plan=plan, **{
            k: v for k, v in opts.items() if k != "target"}), sizes.tolist(), d,
            np.dtype(dtype), str(tmp), cr, picks, rkey, resume=old is not None)
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


def dataset_attrs(path: str | Path) -> dict:
    """What ingest recorded about a dataset: n_rows, n_features, chunk_rows, columns, ..."""
    return read_attrs(path)
