"""Ingest tables (packaged datasets, CSV/Parquet/NPZ/NPY files) into row-chunked Zarr datasets.

Reads a source into a table (:func:`read_source`), turns it into numeric X (n, d), y (n,)
and provenance attrs (:func:`prepare`: one-hot categories, missing values, two classes,
standardization) and writes the dataset through :mod:`nldist.store.dataset`, which
describes the layout and writes atomically.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nldist import datasets
from nldist.errors import NldistError
from nldist.store.dataset import RESERVOIR_ROWS, read_attrs, write_dataset
from nldist.store.records import file_fingerprint, tree_fingerprint

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
    if not path.exists():
        raise NldistError(
            f"source {src!r} not found; give an existing .csv/.parquet/.npz/.npy file or one of "
            f"the packaged datasets: {', '.join(sorted(datasets.DATASETS))}"
        )
    if path.is_dir():
        return {"directory": str(path.resolve()), "files": tree_fingerprint(path)}
    return {"file": str(path.resolve()), **file_fingerprint(path)}


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
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Turn a table into numeric X (n, d), y (n,) and provenance attrs.

    One-hot encodes categorical columns (categories recorded), counts missing values (error
    unless ``dropna``), optionally keeps two classes of the target (mapped to 0/1) and
    standardizes features / target (means and scales recorded).
    """
    if target is None:
        raise NldistError("no target column given; pass --target NAME (or target: in the job)")
    if target not in df.columns:
        raise NldistError(f"target column {target!r} not in the table; columns are "
                          f"{', '.join(map(str, df.columns[:20]))}")
    cols = features if features else [c for c in df.columns if c != target]
    missing_cols = [c for c in cols if c not in df.columns]
    if missing_cols:
        raise NldistError(f"feature column(s) {missing_cols} not in the table")
    df = df[list(cols) + [target]]
    attrs: dict[str, Any] = {"target": str(target)}
    if classes is not None:
        if len(classes) != 2:
            raise NldistError(f"classes must name exactly two target values, got {classes!r}")
        keep = df[target].isin(classes)
        df = df[keep]
        df = df.assign(**{target: (df[target] == classes[1]).astype(np.float64)})
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
        check_categorical(Xdf[c], str(c))
    if categorical:
        attrs["categories"] = {str(c): [str(v) for v in pd.unique(Xdf[c].astype(str))]
                               for c in categorical}
        Xdf = pd.get_dummies(Xdf.astype({c: str for c in categorical}), columns=categorical,
                             drop_first=True, dtype=np.float64)
    if Xdf.shape[1] == 0:
        raise NldistError("no feature columns left; the table needs at least one besides target")
    X = Xdf.to_numpy(np.float64)
    if not np.all(np.isfinite(X)) or not np.all(np.isfinite(y)):
        raise NldistError("the table contains inf values; drop or clip them before ingest")
    attrs["features"] = [str(c) for c in Xdf.columns]
    if standardize:
        with np.errstate(over="ignore", invalid="ignore"):
            mu, sd = X.mean(axis=0), X.std(axis=0)
            sd[sd == 0] = 1.0
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
    return X.astype(dtype), y.astype(dtype), attrs


#: a text column with more distinct values than this share of its rows (and more than
#: :data:`ID_MIN_DISTINCT`) is an identifier, not a category
ID_MAX_SHARE = 0.5
ID_MIN_DISTINCT = 50
_NUMBER = r"^[+-]?(\d{1,3}([,_ ]\d{3})+|\d+)([.]\d+)?([eE][+-]?\d+)?$|^[+-]?[.]\d+$"


def check_categorical(col: pd.Series, name: str) -> None:
    """Refuse a text column that one-hot encoding would silently misread: numbers written as
    text (``"1,234"``, ``"12 500"``) and identifiers (nearly one value per row)."""
    if pd.api.types.is_bool_dtype(col):
        return
    text = col.astype(str).str.strip()
    looks = text.str.match(_NUMBER)
    if len(text) and looks.mean() >= 0.95:
        ex = text[looks].iloc[0]
        raise NldistError(f"column {name!r} holds numbers written as text (e.g. {ex!r}); "
                          "remove the thousands separators (pandas: thousands=',') before "
                          "ingest, or leave the column out with features: [...] in the job")
    distinct = int(text.nunique())
    if distinct > ID_MIN_DISTINCT and distinct > ID_MAX_SHARE * len(text):
        raise NldistError(f"column {name!r} has {distinct:,} distinct values in {len(text):,} "
                          "rows (an identifier?): one-hot encoding it would add a column per "
                          "row; leave it out with features: [...] in the job")


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

    Returns
    -------
    Path of the written group.
    """
    out = Path(out)
    if out.exists() and not overwrite:
        raise NldistError(f"{out} already exists; pass --overwrite or choose another path")
    df, meta = read_source(source, target)
    X, y, attrs = prepare(df, meta["target"], features=features, classes=classes, dropna=dropna,
                          standardize=standardize, standardize_target=standardize_target,
                          dtype=dtype)
    attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
    return write_dataset(out, X, y, attrs, chunk_rows=chunk_rows, overwrite=overwrite,
                         reservoir=reservoir, seed=seed)


def dataset_attrs(path: str | Path) -> dict:
    """What ingest recorded about a dataset: n_rows, n_features, chunk_rows, columns, ..."""
    return read_attrs(path)
