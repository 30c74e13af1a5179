"""The dataset store: X (n, d) and y (n,) of a job as a row-chunked Zarr v3 group.

A dataset is a Zarr group with ``X`` (n, d) float (row chunks, one column chunk), ``y`` (n,)
and attrs: feature names, target, source, task, categories of one-hot encoded columns,
standardization (means and scales), dropped rows, chunk rows and the nldist version.
Writes go to ``OUT.partial`` and are renamed into place only when complete.
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
from nldist.store.records import digest, tree_fingerprint


def open_dataset(path: str | Path) -> tuple[Any, Any | None]:
    """The Zarr arrays X (n, d) and y (n,) (or None) of a dataset group, with one-line
    errors for a missing path, a non-group and a group without X."""
    path = Path(path)
    if not path.exists():
        raise NldistError(f"dataset {str(path)!r} does not exist; run `nldist ingest` first")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for "not a group"
        raise NldistError(
            f"{str(path)!r} is not a Zarr group ({type(exc).__name__}); point at a store "
            "written by `nldist ingest`"
        ) from None
    if "X" not in group:
        raise NldistError(f"Zarr group {str(path)!r} has no array 'X'; re-run `nldist ingest`")
    return group["X"], (group["y"] if "y" in group else None)


def fingerprint(path: str | Path) -> str:
    """What the dataset's content is, for cache keys: the SHA-256 of its X and y recorded
    when nldist wrote it, plus a stat digest of every file of the store (an in-place rewrite
    by any tool changes it)."""
    attrs = read_attrs(path)
    return digest({"content": attrs.get("content_sha256"), "files": tree_fingerprint(path)})


def open_arrays(path: str | Path) -> dict[str, Any]:
    """{name: Zarr array} of every array of a group (empty when the path does not exist)."""
    if not Path(path).exists():
        return {}
    group = zarr.open_group(str(path), mode="r")
    return {name: group[name] for name in group.array_keys()}


def open_member(path: str | Path, name: str) -> Any | None:
    """The Zarr array ``name`` of a group, or None when the group has none."""
    group = zarr.open_group(str(path), mode="r")
    return group[name] if name in group else None


def is_dataset(path: str | Path) -> bool:
    """Whether path is a Zarr group directory (a dataset to use in place)."""
    p = Path(path)
    return p.is_dir() and (p / "zarr.json").exists()


def check_out(out: str | Path, overwrite: bool) -> Path:
    """The dataset path to write, refused (one line) when it exists without ``overwrite``
    or is a file (``--overwrite`` replaces only a dataset directory)."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise NldistError(f"{out} already exists; pass --overwrite or choose another path")
    if out.exists() and not out.is_dir():
        raise NldistError(f"{out} is a file, not a Zarr dataset; --overwrite replaces only a "
                          "dataset directory: remove the file or choose another path")
    return out


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
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
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
        g.attrs.update({**attrs, "n_rows": n, "n_features": d, "chunk_rows": cr,
                        "content_sha256": h.hexdigest(), "nldist_version": __version__,
                        **({"reservoir": res} if res else {})})
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
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


def write_xy_chunk(X: np.ndarray, y: np.ndarray, start: int, path: str) -> str:
    """Write one row chunk of X and y into the group at ``path`` (on a worker); its SHA-256
    (of the X bytes, then the y bytes) for the content digest."""
    g = zarr.open_group(str(path), mode="r+")
    X, y = np.ascontiguousarray(X), np.ascontiguousarray(y)
    g["X"][start : start + X.shape[0]] = X
    g["y"][start : start + y.shape[0]] = y
    h = hashlib.sha256()
    h.update(X.tobytes())
    h.update(y.tobytes())
    return h.hexdigest()


def read_reservoir(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """The ingest-time uniform sample (X (k, d), y (k,), row index (k,)), or None when the
    store has none (made by another tool or an older nldist)."""
    try:
        g = zarr.open_group(str(path), mode="r")
        if "reservoir" not in g:
            return None
        r = g["reservoir"]
        return np.asarray(r["X"][...]), np.asarray(r["y"][...]), np.asarray(r["index"][...])
    except Exception:  # noqa: BLE001 - an unreadable reservoir: the pilot uses chunks
        return None


def read_attrs(path: str | Path) -> dict:
    """Attributes of a Zarr group (dataset or output store)."""
    return dict(zarr.open_group(str(path), mode="r").attrs)


def create_partial(out: str | Path, arrays: dict[str, tuple[tuple, tuple, Any]]) -> tuple:
    """A fresh ``OUT.partial`` group with empty arrays {name: (shape, chunks, dtype)}.

    Returns
    -------
    (the group, {name: Zarr array}); finish with :func:`commit_partial`.
    """
    tmp = Path(out).with_name(Path(out).name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    made = {name: g.create_array(name, shape=shape, chunks=chunks, dtype=dtype)
            for name, (shape, chunks, dtype) in arrays.items()}
    return g, made


def commit_partial(out: str | Path, attrs: dict) -> Path:
    """Set the attrs of ``OUT.partial`` and rename it into place (replacing OUT)."""
    out = Path(out)
    tmp = out.with_name(out.name + ".partial")
    zarr.open_group(str(tmp), mode="r+").attrs.update(attrs)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
