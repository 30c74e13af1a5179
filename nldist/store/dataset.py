"""The dataset store: X (n, d) and y (n,) of a job as a row-chunked Zarr v3 group.

A dataset is a Zarr group with ``X`` (n, d) float (row chunks, one column chunk), ``y`` (n,)
and attrs: feature names, target, source, task, categories of one-hot encoded columns,
standardization (means and scales), dropped rows, chunk rows and the nldist version.
Writes go to ``OUT.partial`` and are renamed into place only when complete. On object
storage, where a rename is a copy of every object, the group is written at OUT itself with
the attribute ``nldist_partial`` and its final attributes replace them in one PUT when it is
complete; :func:`open_dataset` refuses a group still marked partial.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from nldist._budget import x_chunk_rows
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.store.counting import CountingStore
from nldist.store.records import digest, read_record, tree_fingerprint, write_record
from nldist.store.remote import as_path, is_remote, open_group, rmtree

#: attribute of a group on object storage that is still being written
PARTIAL = "nldist_partial"


def open_dataset(path: str | Path, count: str | None = None) -> tuple[Any, Any | None]:
    """The Zarr arrays X (n, d) and y (n,) (or None) of a dataset group, with one-line
    errors for a missing path, a non-group, a partially written group and a group without
    X. ``count``: X is opened through a :class:`nldist.store.counting.CountingStore` that
    counts its chunk reads under that token."""
    path = as_path(path)
    if not path.exists():
        raise NldistError(f"dataset {str(path)!r} does not exist; run `nldist ingest` first")
    try:
        group = open_group(path, mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise NldistError(
            f"{str(path)!r} is not a Zarr group ({type(exc).__name__}); point at a store "
            "written by `nldist ingest`"
        ) from None
    if group.attrs.get(PARTIAL):
        raise NldistError(f"dataset {str(path)!r} is a partially written ingest; run "
                          "`nldist ingest` again with --overwrite")
    if "X" not in group:
        raise NldistError(f"Zarr group {str(path)!r} has no array 'X'; re-run `nldist ingest`")
    X = group["X"]
    if count:
        X = zarr.open_array(CountingStore(group.store, count), path=_child(group, "X"),
                            mode="r")
    return X, (group["y"] if "y" in group else None)


def _child(group: Any, name: str) -> str:
    """The store path of a group's child array."""
    return f"{group.path}/{name}" if group.path else name


def fingerprint(path: str | Path) -> str:
    """What the dataset's content is, for cache keys: the SHA-256 of its X and y recorded
    when nldist wrote it, plus a stat digest of every file of the store (an in-place rewrite
    by any tool changes it)."""
    attrs = read_attrs(path)
    return digest({"content": attrs.get("content_sha256"), "files": tree_fingerprint(path)})


def open_arrays(path: str | Path) -> dict[str, Any]:
    """{name: Zarr array} of every array of a group (empty when the path does not exist)."""
    if not as_path(path).exists():
        return {}
    group = open_group(path, mode="r")
    return {name: group[name] for name in group.array_keys()}


def open_member(path: str | Path, name: str) -> Any | None:
    """The Zarr array ``name`` of a group, or None when the group has none."""
    group = open_group(path, mode="r")
    return group[name] if name in group else None


def is_dataset(path: str | Path) -> bool:
    """Whether path is a Zarr group directory (a dataset to use in place)."""
    p = as_path(path)
    if is_remote(p):
        try:
            return (p / "zarr.json").exists()
        except OSError:
            return False
    return p.is_dir() and (p / "zarr.json").exists()


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The dataset path to write, refused (one line) when it exists without ``overwrite``
    or is a file (``--overwrite`` replaces only a dataset directory)."""
    out = as_path(out)
    if is_partial(out):  # a killed ingest on object storage: resumed or replaced
        return out
    if out.exists() and not overwrite:
        raise NldistError(f"{out} already exists; pass --overwrite or choose another path")
    if out.exists() and not out.is_dir():
        raise NldistError(f"{out} is a file, not a Zarr dataset; --overwrite replaces only a "
                          "dataset directory: remove the file or choose another path")
    if out.exists() and not is_nldist_store(out) and any(out.iterdir()):
        raise NldistError(f"{out} is not a dataset nldist wrote (no Zarr group with nldist's "
                          "attributes); --overwrite replaces only those: move its files away "
                          "or choose another path")
    return out


def is_nldist_store(path: str | Path) -> bool:
    """Whether ``path`` is a Zarr group nldist wrote (its attributes name the nldist version
    or mark a partial write): what ``--overwrite`` may replace."""
    if not is_dataset(path):
        return False
    try:
        attrs = read_attrs(path)
    except Exception:  # noqa: BLE001 - unreadable: not ours to replace
        return False
    return bool(attrs.get("nldist_version") or attrs.get(PARTIAL) or attrs.get("ingest_resume"))


def is_partial(path: str | Path) -> bool:
    """Whether ``path`` is a store on object storage still marked :data:`PARTIAL` (an
    ingest in progress or killed)."""
    p = as_path(path)
    if not is_remote(p):
        return False
    try:
        return bool((p / "zarr.json").exists() and open_group(p, mode="r").attrs.get(PARTIAL))
    except Exception:  # noqa: BLE001 - unreadable: not ours to resume
        return False


#: rows of the seeded uniform sample written beside X at ingest (the pilot's rows)
RESERVOIR_ROWS = 10_000


def write_dataset(
    out: str | Path, X: np.ndarray, y: np.ndarray, attrs: dict, chunk_rows: int | None = None,
    overwrite: bool = False, reservoir: int = RESERVOIR_ROWS, seed: int = 0,
) -> Path:
    """Write X, y and attrs to a Zarr v3 group atomically (OUT.partial, then rename).

    Beside them goes ``reservoir/`` (X, y, index): ``min(reservoir, n)`` rows drawn
    uniformly without replacement, in random order, seeded by ``seed`` — a pilot sample
    that costs no pass over X later (:func:`read_reservoir`). ``reservoir=0`` writes none.
    """
    out = check_out(out, overwrite)
    n, d = X.shape
    cr = int(chunk_rows or x_chunk_rows(d, X.dtype.itemsize))
    if cr < 1:
        raise NldistError(f"chunk_rows must be >= 1, got {chunk_rows}")
    tmp = partial_path(out)
    try:
        g, _ = create_partial(out, {})
        ax = g.create_array("X", shape=(n, d), chunks=(min(cr, n), d), dtype=X.dtype)
        ay = g.create_array("y", shape=(n,), chunks=(min(cr, n),), dtype=y.dtype)
        h = hashlib.sha256()
        for start in range(0, n, cr):
            xb, yb = X[start : start + cr], y[start : start + cr]
            ax[start : start + cr] = xb
            ay[start : start + cr] = yb
            h.update(np.ascontiguousarray(xb).tobytes())
            h.update(np.ascontiguousarray(yb).tobytes())
        res = _write_reservoir(g, X, y, reservoir, seed)
        commit_partial(out, {**attrs, "n_rows": n, "n_features": d, "chunk_rows": cr,
                             "content_sha256": h.hexdigest(), "nldist_version": __version__,
                             **({"reservoir": res} if res else {})})
    except BaseException:
        rmtree(tmp)
        raise
    return out


def reservoir_index(n: int, rows: int, seed: int) -> np.ndarray:
    """Rows of the reservoir: ``min(rows, n)`` of ``range(n)`` uniformly without replacement,
    in random order (seeded)."""
    k = min(int(rows), int(n))
    if k <= 0:
        return np.empty(0, dtype=np.int64)
    return np.random.default_rng([int(seed), 0x5E5E]).choice(n, size=k, replace=False
                                                            ).astype(np.int64)


def _write_reservoir(g: Any, X: np.ndarray, y: np.ndarray, rows: int, seed: int) -> dict | None:
    idx = reservoir_index(X.shape[0], rows, seed)
    return write_reservoir_rows(g, X[idx], y[idx], idx, seed)


def write_reservoir_rows(g: Any, X: np.ndarray, y: np.ndarray, idx: np.ndarray, seed: int
                         ) -> dict | None:
    """Write the reservoir rows (X (k, d), y (k,), their row index) into group g."""
    if idx.size == 0:
        return None
    r = g.create_group("reservoir")
    for name, arr in (("X", X), ("y", y), ("index", idx.astype(np.int64))):
        r.create_array(name, shape=arr.shape, chunks=arr.shape, dtype=arr.dtype)[...] = arr
    return {"rows": int(idx.size), "seed": int(seed), "method": "uniform without replacement "
            "at ingest, random order"}


def _xy_sha(X: np.ndarray, y: np.ndarray) -> str:
    h = hashlib.sha256()
    h.update(np.ascontiguousarray(X).tobytes())
    h.update(np.ascontiguousarray(y).tobytes())
    return h.hexdigest()


def write_xy_chunk(X: np.ndarray, y: np.ndarray, i: int, start: int, path: str, key: str,
                   picks: np.ndarray) -> tuple[int, str, np.ndarray, np.ndarray]:
    """Write row chunk i of X and y into the group at ``path`` (on a worker), then its
    completion record ``X/done/<i>.json`` (rows, SHA-256, the ingest's resume ``key``).

    Returns
    -------
    (i, SHA-256 of the X bytes then the y bytes, X[picks], y[picks]) — the picks being the
    chunk's reservoir rows (local indices).
    """
    g = open_group(path, mode="r+")
    X, y = np.ascontiguousarray(X), np.ascontiguousarray(y)
    stop = start + X.shape[0]
    g["X"][start:stop] = X
    g["y"][start:stop] = y
    sha = _xy_sha(X, y)
    write_record(as_path(path) / "X", i, {"chunk": int(i), "start": int(start),
                                          "stop": int(stop), "sha256": sha, "key": key})
    return int(i), sha, X[picks], y[picks]


def verify_xy_chunk(path: str, i: int, start: int, stop: int, key: str, picks: np.ndarray
                    ) -> tuple[int, str, np.ndarray, np.ndarray] | None:
    """A chunk a killed ingest finished (on a worker): its record has this ``key`` and rows,
    and the stored chunk still hashes to the recorded SHA-256 — then what
    :func:`write_xy_chunk` returned; None (write it again) otherwise."""
    rec = read_record(as_path(path) / "X", i)
    if rec is None or rec.get("key") != key or (rec.get("start"), rec.get("stop")) != (
            start, stop):
        return None
    try:
        g = open_group(path, mode="r")
        X, y = np.asarray(g["X"][start:stop]), np.asarray(g["y"][start:stop])
    except Exception:  # noqa: BLE001 - a damaged chunk raises codec-specific errors
        return None
    sha = _xy_sha(X, y)
    return (int(i), sha, X[picks], y[picks]) if sha == rec.get("sha256") else None


def resumable(out: str | Path, key: str) -> dict | None:
    """The attributes of the partial store of a killed ingest with this resume ``key`` (its
    encoding plan and row counts are in ``ingest_state``), or None (start afresh)."""
    tmp = partial_path(out)
    try:
        if not (tmp / "zarr.json").exists():
            return None
        attrs = dict(open_group(tmp, mode="r").attrs)
    except Exception:  # noqa: BLE001 - unreadable: start afresh
        return None
    return attrs if attrs.get("ingest_resume") == key and "ingest_state" in attrs else None


def drop_chunk_records(out: str | Path) -> None:
    """Remove the per-chunk records of a finished ingest (``X/done``)."""
    rmtree(as_path(out) / "X" / "done")


def read_reservoir(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ingest-time uniform sample (X (k, d), y (k,), row index (k,)), or None when the
    store has none (made by another tool or an older nldist)."""
    try:
        g = open_group(path, mode="r")
        if "reservoir" not in g:
            return None
        r = g["reservoir"]
        return np.asarray(r["X"][...]), np.asarray(r["y"][...]), np.asarray(r["index"][...])
    except Exception:  # noqa: BLE001 - an unreadable reservoir: the pilot uses chunks
        return None


def read_attrs(path: str | Path) -> dict:
    """Attributes of a Zarr group (dataset or output store)."""
    return dict(open_group(path, mode="r").attrs)


def create_partial(out: str | Path, arrays: dict[str, tuple[tuple, tuple, Any]]) -> tuple:
    """A fresh ``OUT.partial`` group with empty arrays {name: (shape, chunks, dtype)}.

    Returns
    -------
    (the group, {name: Zarr array}); finish with :func:`commit_partial`. On object storage
    the group is OUT itself, marked with :data:`PARTIAL`.
    """
    tmp = partial_path(out)
    rmtree(tmp)
    g = open_group(tmp, mode="w", zarr_format=3)
    if is_remote(tmp):
        g.attrs[PARTIAL] = True
    made = {name: g.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
            for name, (shape, chunks, dtype) in arrays.items()}
    return g, made


def commit_partial(out: str | Path, attrs: dict) -> Path:
    """Set the attrs of ``OUT.partial`` and rename it into place (replacing OUT); on object
    storage, replace the group's attributes (dropping :data:`PARTIAL`) in one write."""
    out = as_path(out)
    tmp = partial_path(out)
    g = open_group(tmp, mode="r+")
    if is_remote(out):
        g.attrs.put({k: v for k, v in {**dict(g.attrs), **attrs}.items() if k != PARTIAL})
        return out
    g.attrs.update(attrs)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def partial_path(out: str | Path) -> Path:
    """Where a dataset at ``out`` is written until complete: ``OUT.partial`` on local disk,
    OUT itself (marked :data:`PARTIAL`) on object storage."""
    out = as_path(out)
    return out if is_remote(out) else out.with_name(out.name + ".partial")
