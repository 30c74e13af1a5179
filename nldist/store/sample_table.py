"""The sample handed over: ``OUT/sample.parquet``, a small self-describing table.

One row per distinct sampled row of the dataset, columns:

* ``row`` — the row's index in the dataset (int64);
* ``multiplicity`` — how many of the s draws picked it;
* ``weight`` — its importance weight per draw, 1 / (s π_i);
* ``sample_weight`` — ``multiplicity × weight``: the weight of the row in a weighted loss
  (scikit-learn's ``sample_weight``; the sampled loss Σ_j w_j ℓ_j over draws equals
  Σ_rows sample_weight · ℓ);
* one column per feature *as trained* (the dataset's encoding: standardized, one-hot),
  named as in the dataset's attrs (a categorical stored as integer codes: the code, and
  ``<name>__orig`` its level), and ``y`` (the target as trained; a multi-output
  regression's C targets as ``y0 .. y<C-1>``, or the names in the dataset's ``targets``
  attribute);
* where ingest standardized, the same in original units: ``<feature>__orig`` and ``y__orig``.

A feature whose name is one of the bookkeeping columns keeps its name and moves the
bookkeeping column aside instead (Diamonds has a feature ``y``: its target column is
``y_target``, ``y_target__orig``); the metadata names the columns that were used.

The Parquet metadata (key ``nldist``) holds the kind, s, seed, alpha, n, model, dataset path,
feature names and ``columns`` (bookkeeping name -> column). Written atomically (temporary
file, then rename).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from nldist.errors import NldistError
from nldist.store.remote import as_path, is_remote, write_bytes_atomic

#: the bookkeeping columns of a sample table, by their default names
BOOKKEEPING = ("row", "multiplicity", "weight", "sample_weight", "y")


def bookkeeping_columns(features: list[str]) -> dict[str, str]:
    """Bookkeeping name -> column name: the default, or ``<name>_target`` (then more
    underscores) where a feature (or a feature's ``__orig``) already has that name."""
    taken = set(features) | {f"{f}__orig" for f in features}
    out = {}
    for name in BOOKKEEPING:
        col = name
        if col in taken:
            col = _unused(f"{name}_target" if name == "y" else f"{name}_", taken)
        out[name] = col
        taken.add(col)
    return out


def _unused(col: str, taken: set[str]) -> str:
    """``col``, with underscores appended until neither it nor its ``__orig`` is taken."""
    while col in taken or f"{col}__orig" in taken:
        col += "_"
    return col


def write_sample_table(path: Path, indices: np.ndarray, weights: np.ndarray, X: np.ndarray,
                       y: np.ndarray, attrs: dict, meta: dict) -> Path:
    """Write the sample (draws: indices (s,), weights (s,), rows X (s, d), y (s,)).

    ``attrs`` are the dataset's (feature names, standardization); ``meta`` goes into the
    Parquet metadata.
    """
    indices = np.asarray(indices, dtype=np.int64)
    uniq, first, counts = np.unique(indices, return_index=True, return_counts=True)
    Xu = np.asarray(X)[first]
    yu = np.asarray(y)[first]
    w = np.asarray(weights, dtype=np.float64)[first]
    names = list(attrs.get("features") or [f"x{j}" for j in range(Xu.shape[1])])
    col = bookkeeping_columns(names)
    cols: dict[str, Any] = {col["row"]: uniq, col["multiplicity"]: counts.astype(np.int64),
                            col["weight"]: w, col["sample_weight"]: w * counts}
    for j, name in enumerate(names):
        cols[name] = Xu[:, j]
    if yu.ndim == 2 and yu.shape[1] > 1:  # multi-output regression: a column per target
        used = set(cols) | {f"{f}__orig" for f in names}
        names_y = []
        for name in list(attrs.get("targets") or [f"{col['y']}{c}" for c in
                                                  range(yu.shape[1])]):
            names_y.append(_unused(name, used))  # a feature has the name: move it aside
            used.add(names_y[-1])
        for c, name in enumerate(names_y):
            cols[name] = yu[:, c]
        col = {**col, "y": names_y}  # type: ignore[dict-item]
    else:
        cols[col["y"]] = yu.reshape(-1)
    st = attrs.get("standardize")
    if st:
        mu, sd = np.asarray(st["mean"]), np.asarray(st["scale"])
        for j, name in enumerate(names):
            cols[f"{name}__orig"] = Xu[:, j] * sd[j] + mu[j]
    for name, levels in (attrs.get("codes") or {}).items():  # coded categoricals: the level
        if name in names:
            cols[f"{name}__orig"] = pd.Categorical.from_codes(
                Xu[:, names.index(name)].astype(np.int64), categories=list(levels))
    sty = attrs.get("standardize_target")
    if sty and isinstance(col["y"], str):
        cols[f"{col['y']}__orig"] = yu * sty["scale"] + sty["mean"]
    table = pa.Table.from_pandas(pd.DataFrame(cols), preserve_index=False)
    info = {**meta, "features": names, "columns": col, "rows": int(uniq.size),
            "draws": int(indices.size)}
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           b"nldist": json.dumps(info).encode()})
    path = as_path(path)
    buf = pa.BufferOutputStream()
    pq.write_table(table, buf)
    write_bytes_atomic(path, buf.getvalue().to_pybytes())
    return path


def read_sample_table(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """The sample table and its metadata, with a one-line error for a file that is not one."""
    path = as_path(path)
    if path.is_dir():
        path = path / "sample.parquet"
    if not path.exists():
        raise NldistError(f"{path} not found; run `nldist select` (or `nldist run`) first — "
                          "it writes OUT/sample.parquet")
    try:
        table = pq.read_table(io.BytesIO(path.read_bytes()) if is_remote(path) else path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types
        raise NldistError(f"cannot read {path} as Parquet ({type(exc).__name__})") from None
    raw = (table.schema.metadata or {}).get(b"nldist")
    if raw is None:
        raise NldistError(f"{path} is not an nldist sample (no 'nldist' metadata)")
    try:
        meta = json.loads(raw)
    except ValueError:
        meta = None
    if not isinstance(meta, dict):
        raise NldistError(f"{path} is a damaged nldist sample (its 'nldist' metadata is not a "
                          "JSON object); run the job again to rewrite it")
    return table.to_pandas(), meta
