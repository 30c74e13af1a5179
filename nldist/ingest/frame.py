"""The in-memory ingest: a table that fits in memory (a packaged dataset or one file) as
numeric X (n, d), y (n,) and provenance attrs (:func:`prepare`), written through
:mod:`nldist.store.dataset` (:func:`ingest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nldist.errors import NldistError
from nldist.ingest.plan import (
    ONEHOT_MAX_LEVELS,
    check_categorical,
    class_index,
    code_column,
    coded_columns,
    select_columns,
)
from nldist.ingest.sources import read_source
from nldist.store.dataset import RESERVOIR_ROWS, check_out, read_attrs, write_dataset


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
    (sorted levels in ``attrs["codes"]``, as :func:`nldist.ingest.plan.make_plan`) — counts
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


def dataset_attrs(path: str | Path) -> dict:
    """What ingest recorded about a dataset: n_rows, n_features, chunk_rows, columns, ..."""
    return read_attrs(path)
