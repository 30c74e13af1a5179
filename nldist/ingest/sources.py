"""Where an ingest's rows come from: reading a source, listing a table's files, and the
fingerprint that says when a source changed.

* :func:`read_source` — a packaged dataset or one CSV/Parquet/NPZ/NPY file as a DataFrame
  (the in-memory ingest, :mod:`nldist.ingest.frame`);
* :func:`table_format`, :func:`table_pattern`, :func:`source_files`, :func:`check_schemas`
  — a directory, glob or URL of CSV/Parquet files (the distributed ingest,
  :mod:`nldist.ingest.tables`): its format, its files (hidden and _-files left out) and
  their schemas, read from footers and header lines only;
* :func:`source_fingerprint` — what an ingest of a source depends on (its reuse key, with
  :meth:`nldist.options.IngestOptions.digest`).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nldist import datasets
from nldist.errors import NldistError
from nldist.store.records import file_fingerprint, tree_fingerprint
from nldist.store.remote import filesystem


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
    (its content is fixed by that version); a file's size, mtime and SHA-256; for a
    directory, glob or URL, its files' listing (size, mtime or ETag), the footers of its
    Parquet files (:func:`parquet_footers`) and the content of its text files
    (:func:`text_contents`), so a same-size rewrite with its mtime restored is seen."""
    src = str(source)
    path = Path(src)
    if not path.exists() and src in datasets.DATASETS:
        return {"dataset": src, "source": datasets.DATASETS[src].source}
    if "://" in src or any(ch in src for ch in "*?["):
        return {"files": remote_fingerprint(src), "footers": parquet_footers(src),
                "contents": text_contents(src)}
    if not path.exists():
        raise NldistError(
            f"source {src!r} not found; give an existing .csv/.parquet/.npz/.npy file or one of "
            f"the packaged datasets: {', '.join(sorted(datasets.DATASETS))}"
        )
    if path.is_dir():
        return {"directory": str(path.resolve()), "files": tree_fingerprint(path),
                "footers": parquet_footers(src), "contents": text_contents(src)}
    return {"file": str(path.resolve()), **file_fingerprint(path)}


def parquet_footers(source: str) -> str | None:
    """SHA-256 of the footer (schema, row groups, their sizes and column statistics) of every
    Parquet file a directory, glob or URL names (the files nldist reads): a rewrite of the
    same size and mtime changes it. One small read per file; None when there are none."""
    fs, files = source_files(source)
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


#: file endings of text tables, fingerprinted by their content (:func:`text_contents`)
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")


def text_contents(source: str, block: int = 1 << 22) -> str | None:
    """SHA-256 over every text table (CSV/TSV, plain or gzipped) a directory, glob or URL
    names: each file's path, size and the SHA-256 of all its bytes, streamed in 4 MiB
    blocks. None when there are none.

    Why every byte: a CSV has no footer that summarises its rows (Parquet's does:
    :func:`parquet_footers`), and an edit in the middle of a file (``1.5`` -> ``2.5``)
    keeps its size, and with the mtime restored (``os.utime``, a copy with ``cp -p``, a
    sync tool) its stat too; a hash of the first and last blocks would miss it. The cost is
    one sequential read of the text files per fingerprint — as a single file's
    (:func:`nldist.store.records.file_fingerprint`), and less than the ingest's own read,
    parse and encode of the same bytes."""
    fs, files = source_files(source)
    files = [f for f in files if f.lower().endswith(TEXT_SUFFIXES)]
    if not files:
        return None
    h = hashlib.sha256()
    try:
        for f in files:
            fh_sha = hashlib.sha256()
            size = 0
            with fs.open(f, "rb") as fh:
                for chunk in iter(lambda fh=fh: fh.read(block), b""):
                    fh_sha.update(chunk)
                    size += len(chunk)
            h.update(f"{f}\0{size}\0{fh_sha.hexdigest()}\0".encode())
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot read the files of {source!r}: {type(exc).__name__}: {exc}; "
                          "check the path, bucket and credentials (AWS_* variables, fsspec "
                          "config)") from None
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


def table_pattern(src: str, fmt: str) -> str:
    """A CSV directory (local or remote) as the glob of its files (Parquet reads dirs)."""
    if fmt == "parquet" or any(ch in src for ch in "*?["):
        return src
    fs, root = filesystem(src)
    return src.rstrip("/") + f"/*.{fmt}" if fs.isdir(root) else src


def source_files(pattern: str) -> tuple[Any, list[str]]:
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


def shown(fs: Any, f: str) -> str:
    """A listed file as the user would write it: a plain local path, else its URL."""
    url = fs.unstrip_protocol(f)
    return url[len("file://"):] if url.startswith("file://") else url


def arrow_kind(t: Any) -> str | None:
    """``"text"`` or ``"numeric"`` for a Parquet column's Arrow type (None: no values to
    tell, e.g. the null type of an empty column)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return None
    return "numeric" if pa.types.is_integer(t) or pa.types.is_floating(t) else "text"


def check_schemas(fs: Any, files: list[str], fmt: str, target: str,
                   features: list[str] | None) -> None:
    """Every file has the target and the features (all of the first file's columns when none
    are chosen; then also no other columns): read from the files' footers / header lines
    only, on the driver."""
    def columns(f: str) -> list[str]:
        try:
            with fs.open(f, "rb") as fh:
                if fmt == "parquet":
                    schema = pq.read_schema(fh)
                    kinds[f] = {name: arrow_kind(schema.field(name).type)
                                for name in schema.names}
                    return list(schema.names)
                return pd.read_csv(fh, sep="\t" if fmt == "tsv" else ",", nrows=0).columns.tolist()
        except (OSError, NldistError):
            raise
        except Exception as exc:  # noqa: BLE001 - a damaged, partial or foreign file
            what = ("not a complete Parquet file (no footer: cut short, still being uploaded, "
                    "or another format)" if fmt == "parquet"
                    else f"not readable as {fmt.upper()} ({type(exc).__name__})")
            raise NldistError(f"file {shown(fs, f)} is {what}; upload it again whole or "
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
                raise NldistError(f"column {c!r} is {kind} in file {shown(fs, f)} but "
                                  f"{seen[c][0]} in file {shown(fs, seen[c][1])} (its declared "
                                  "type, empty files included); fix its values (a stray "
                                  "string?) or leave it out with features: [...]")
            seen.setdefault(c, (kind, f))
        missing = sorted(want - have)
        extra = sorted(have - set(first)) if features is None else []
        if extra:
            raise NldistError(f"file {shown(fs, f)} has column(s) {', '.join(extra)} that "
                              f"{shown(fs, files[0])} lacks; give files of one schema or choose "
                              "the columns with features: [...]")
        if missing:
            raise NldistError(f"file {shown(fs, f)} lacks column(s) {', '.join(missing)} (of "
                              f"{shown(fs, files[0])}'s schema); give files of one schema or "
                              "choose the columns with features: [...]")
