"""Kernels of the distributed ingest (pure pandas/NumPy, one partition in, small things out).

A table too large for one machine is ingested in two passes over its partitions
(:func:`nldist.ingest.tables.ingest_table` maps these through :mod:`nldist.graph`;
:func:`nldist.ingest.frame.prepare` runs them on one in-memory partition):

1. :func:`partition_stats` — per partition: rows (before and after dropping missing
   values), missing and infinite values per column, the values of every text column with
   their counts, and per numeric column count / mean / M2 (after the drop); merged on the
   driver by :func:`merge_stats` (Chan et al.'s pairwise update: numerically stable, exact
   in any order up to rounding). :func:`make_plan` turns the merged statistics into the
   encoding: columns, one-hot categories (sorted, first dropped, as pandas' get_dummies),
   the target's mapping, and standardization means and scales (a one-hot column's from its
   frequency).
2. :func:`encode_partition` — the partition as X (n_b, d) and y (n_b,) under the plan.

The driver holds only these statistics (per-partition sizes and column summaries), never
rows: its memory does not grow with n.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from nldist.errors import NldistError

#: a text column with more distinct values than this share of the rows (and more than
#: :data:`ID_MIN_DISTINCT`) is an identifier, not a category
ID_MAX_SHARE = 0.5
ID_MIN_DISTINCT = 50
#: a text column with more levels than this is stored as one column of integer codes
#: (:mod:`nldist.models.coded`), not as one-hot columns
ONEHOT_MAX_LEVELS = 32
#: a number as text: digits with optional thousands separators, decimals, exponent
NUMBER_RE = r"^[+-]?(\d{1,3}([,_ ]\d{3})+|\d+)([.]\d+)?([eE][+-]?\d+)?$|^[+-]?[.]\d+$"


def is_text(col: pd.Series) -> bool:
    """A column one-hot encoding treats as categorical (text or bool)."""
    return not pd.api.types.is_numeric_dtype(col) or pd.api.types.is_bool_dtype(col)


def check_categorical(values: pd.Series, n_rows: int, name: str, distinct: int | None = None
                      ) -> None:
    """Refuse a text column that one-hot encoding would silently misread: numbers written as
    text (``"1,234"``, ``"12 500"``) and identifiers (nearly one value per row).

    Parameters
    ----------
    values : Series
        The column's values (or its distinct values, with ``distinct`` and ``n_rows``).
    n_rows : int
        Rows of the table.
    """
    text = values.astype(str).str.strip()
    looks = text.str.match(NUMBER_RE)
    if len(text) and looks.mean() >= 0.95:
        ex = text[looks].iloc[0]
        raise NldistError(f"column {name!r} holds numbers written as text (e.g. {ex!r}); "
                          "remove the thousands separators (pandas: thousands=',') before "
                          "ingest, or leave the column out with features: [...] in the job")
    distinct = int(text.nunique()) if distinct is None else distinct
    if distinct > ID_MIN_DISTINCT and distinct > ID_MAX_SHARE * n_rows:
        raise NldistError(f"column {name!r} has {distinct:,} distinct values in {n_rows:,} "
                          "rows (an identifier?): nearly every level would have a row or two "
                          "and its own coefficient; leave it out with features: [...] in the "
                          "job")


def check_options(target: str | None, classes: list[Any] | None,
                  standardize_target: bool = False) -> None:
    """The settings every partition needs before its statistics: a target, and classes
    that name two or more distinct values (the in-memory and the distributed ingest)."""
    if target is None:
        raise NldistError("no target column given; pass --target NAME (or target: in the job)")
    if classes is not None:
        if len(classes) < 2 or len(set(map(str, classes))) != len(classes):
            raise NldistError(f"classes must name two or more distinct target values, got "
                              f"{classes!r}")
        if standardize_target and len(classes) > 2:
            raise NldistError(f"{len(classes)} classes are labels 0..{len(classes) - 1}, not a "
                              "number to standardize; drop standardize_target")


def select_columns(df: pd.DataFrame, target: str, features: list[str] | None,
                   classes: list[Any] | None) -> pd.DataFrame:
    """The feature columns and the target (last), rows of the two ``classes`` only."""
    if target not in df.columns:
        raise NldistError(f"target column {target!r} not in the table; columns are "
                          f"{', '.join(map(str, df.columns[:20]))}")
    cols = features if features else [c for c in df.columns if c != target]
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise NldistError(f"feature column(s) {missing} not in the table")
    df = df[list(cols) + [target]]
    if classes is not None:
        df = df[df[target].isin(classes)]
    return df


def _moments(x: np.ndarray) -> list[float]:
    """[count, mean, M2] of a float vector."""
    n = x.size
    if n == 0:
        return [0.0, 0.0, 0.0]
    with np.errstate(over="ignore", invalid="ignore"):  # inf values: an error of the plan
        mu = float(x.mean())
        return [float(n), mu, float(((x - mu) ** 2).sum())]


def _chan(a: list[float], b: list[float]) -> list[float]:
    """Merge two [count, mean, M2] (Chan, Golub & LeVeque 1979)."""
    na, ma, sa = a
    nb, mb, sb = b
    n = na + nb
    if n == 0:
        return [0.0, 0.0, 0.0]
    if na == 0 or nb == 0:  # one side empty: the other unchanged (a single partition's
        return list(b if na == 0 else a)  # moments are exactly its own, as NumPy's)
    d = mb - ma
    return [n, ma + d * nb / n, sa + sb + d * d * na * nb / n]


def partition_stats(df: pd.DataFrame, where: str | None, target: str,
                    features: list[str] | None, classes: list[Any] | None, dropna: bool) -> dict:
    """Statistics of one partition (see the module docstring); ``where`` names it (its
    file) in errors (None: the whole table, in memory). With ``classes``, the target's
    moments are those of its labels 0..k-1 (what ``standardize_target`` standardizes)."""
    try:
        df = select_columns(df, target, features, classes)
    except NldistError as exc:
        if where is None:
            raise
        raise NldistError(f"{where}: {exc}") from None
    if classes is not None:
        df = df.assign(**{target: class_index(df[target], classes)})
    nan = {str(c): int(v) for c, v in df.isna().sum().items() if v}
    nan_rows = int(df.isna().any(axis=1).sum()) if nan else 0
    inf = {}
    for c in df.columns:
        if not is_text(df[c]):
            k = int(np.isinf(df[c].to_numpy(np.float64, na_value=np.nan)).sum())
            if k:
                inf[str(c)] = k
    rows_in = len(df)
    if dropna:
        df = df.dropna()
    out: dict[str, Any] = {"rows_in": rows_in, "rows": len(df), "nan": nan, "inf": inf,
                           "nan_rows": nan_rows,
                           "text": {}, "moments": {}, "columns": [str(c) for c in df.columns],
                           "where": where}
    for c in df.columns:
        if is_text(df[c]):
            vc = df[c].astype(str).value_counts()
            out["text"][str(c)] = {str(k): int(v) for k, v in vc.items()}
        else:
            out["moments"][str(c)] = _moments(df[c].to_numpy(np.float64))
    return out


def merge_stats(parts: list[dict]) -> dict:
    """Merge :func:`partition_stats` results (the per-partition row counts kept in order)."""
    out: dict[str, Any] = {"rows_in": 0, "rows": 0, "nan": {}, "inf": {}, "nan_rows": 0,
                           "text": {},
                           "moments": {}, "sizes": [], "columns": parts[0]["columns"]}
    first = parts[0]
    # text or numeric: as the first partition with rows says (an empty one has no values to
    # tell, and its file's declared type is checked against the others' by the ingest)
    ref = next((p for p in parts if p["rows"]), first)
    kinds0 = {c: c in ref["text"] for c in ref["columns"]}
    for p in parts:
        if p["columns"] != first["columns"]:
            extra = sorted(set(p["columns"]) ^ set(first["columns"]))
            raise NldistError(f"{p['where']} has other columns than {first['where']} "
                              f"({', '.join(extra) or 'in another order'}); give files of one "
                              "schema, or choose the columns with features: [...]")
        kinds = {c: c in p["text"] for c in p["columns"]}
        if p["rows"] and kinds != kinds0:
            bad = [c for c in kinds if kinds[c] != kinds0[c]]
            raise NldistError(f"column {bad[0]!r} is text in "
                              f"{p['where'] if kinds[bad[0]] else ref['where']} but numeric "
                              f"in {ref['where'] if kinds[bad[0]] else p['where']}; fix its "
                              "values (a stray string?) or leave it out with features: [...]")
        out["nan_rows"] += p.get("nan_rows", 0)
        if not p["rows"]:
            out["sizes"].append(0)
            out["rows_in"] += p["rows_in"]
            continue
        out["rows_in"] += p["rows_in"]
        out["rows"] += p["rows"]
        out["sizes"].append(p["rows"])
        for key in ("nan", "inf"):
            for c, v in p[key].items():
                out[key][c] = out[key].get(c, 0) + v
        for c, vc in p["text"].items():
            acc = out["text"].setdefault(c, {})
            for k, v in vc.items():
                acc[k] = acc.get(k, 0) + v
        for c, m in p["moments"].items():
            out["moments"][c] = _chan(out["moments"].get(c, [0.0, 0.0, 0.0]), m)
    return out


def class_index(col: pd.Series, classes: list[Any]) -> np.ndarray:
    """The position of each row's value in ``classes`` as float64 (0/1 for two classes,
    0..k-1 labels for k): rows of other values must have been dropped."""
    lookup = {c: float(i) for i, c in enumerate(classes)}
    return col.map(lookup).to_numpy(np.float64)


def code_column(values: pd.Series, levels: list[str], name: str) -> np.ndarray:
    """A categorical column as integer codes, its index in the sorted ``levels`` (n,)
    float64; one-line error for a value that is not a level."""
    codes = pd.Categorical(values.astype(str), categories=levels).codes
    if (codes < 0).any():
        bad = values.astype(str).to_numpy()[codes < 0][0]
        raise NldistError(f"column {name!r} holds {bad!r}, not one of the {len(levels)} levels "
                          "seen when the table's statistics were taken; re-run the ingest")
    return codes.astype(np.float64)


def coded_columns(levels: dict[str, int], onehot_max_levels: int) -> list[str]:
    """The text columns stored as integer codes: more than ``onehot_max_levels`` levels."""
    if isinstance(onehot_max_levels, bool) or int(onehot_max_levels) < 1:
        raise NldistError(f"onehot_max_levels must be an integer >= 1, got "
                          f"{onehot_max_levels!r}")
    return [c for c, k in levels.items() if k > int(onehot_max_levels)]


def make_plan(stats: dict, target: str, classes: list[Any] | None, dropna: bool,
              standardize: bool, standardize_target: bool, dtype: str,
              onehot_max_levels: int = ONEHOT_MAX_LEVELS) -> dict:
    """The encoding of every partition from the merged statistics, with one-line errors
    (missing or infinite values with their counts per column, identifiers, numbers as
    text, a non-numeric target with other than two values). A text column with more than
    ``onehot_max_levels`` levels is one column of integer codes (after the others; its
    sorted levels in ``attrs["codes"]``, never standardized), not one-hot columns."""
    check_options(target, classes, standardize_target)
    if stats["nan"] and not dropna:
        cols = ", ".join(f"{c} ({v:,})" for c, v in sorted(stats["nan"].items(),
                                                           key=lambda kv: -kv[1])[:8])
        raise NldistError(f"the table has {sum(stats['nan'].values()):,} missing value(s) in "
                          f"{stats['nan_rows']:,} row(s): {cols}; pass --dropna (dropna: true "
                          "in the job) to drop those rows")
    if stats["inf"]:
        cols = ", ".join(f"{c} ({v:,})" for c, v in stats["inf"].items())
        raise NldistError(f"the table contains inf values: {cols}; drop or clip them before "
                          "ingest")
    n = stats["rows"]
    if n == 0:
        raise NldistError("the table has no rows left; check the source, classes and dropna")
    if dtype not in ("float32", "float64"):
        raise NldistError(f"dtype must be float32 or float64, got {dtype!r}")
    columns = [c for c in stats["columns"] if c != target]
    # pandas' get_dummies layout (the in-memory ingest's): numeric columns in order, then
    # each text column's one-hot columns
    coded = coded_columns({c: len(stats["text"][c]) for c in columns if c in stats["text"]},
                          onehot_max_levels)
    columns = [c for c in columns if c not in stats["text"]] + \
        [c for c in columns if c in stats["text"] and c not in coded] + coded
    feats, means, scales, cats = [], [], [], {}
    codes: dict[str, list[str]] = {}
    overflow: list[str] = []
    for c in columns:
        if c in coded:
            counts = stats["text"][c]
            check_categorical(pd.Series(list(counts)), n, c, distinct=len(counts))
            codes[c] = sorted(counts)
            feats.append(c)
            means.append(0.0)
            scales.append(1.0)
        elif c in stats["text"]:
            counts = stats["text"][c]
            check_categorical(pd.Series(list(counts)), n, c, distinct=len(counts))
            values = sorted(counts)
            cats[c] = values
            for v in values[1:]:  # drop_first, like pd.get_dummies
                p = counts[v] / n
                feats.append(f"{c}_{v}")
                means.append(p)
                scales.append(np.sqrt(p * (1 - p)) or 1.0)
        else:
            cnt, mu, m2 = stats["moments"][c]
            feats.append(c)
            means.append(mu)
            scales.append(float(np.sqrt(m2 / cnt)) if cnt and m2 > 0 else 1.0)
            if standardize and not (np.isfinite(mu) and np.isfinite(scales[-1])):
                overflow.append(c)
    if overflow:
        raise NldistError(f"standardizing column(s) {', '.join(overflow[:5])} overflows "
                          "(values near the float64 limit); rescale or drop them before "
                          "ingest")
    if not feats:
        raise NldistError("no feature columns left; the table needs at least one besides target")
    plan: dict[str, Any] = {"columns": columns, "categories": cats, "features": feats,
                            "target": target, "dtype": dtype, "n_rows": n, "target_map": None,
                            "codes": codes}
    attrs: dict[str, Any] = {"target": target, "features": feats}
    if cats:
        attrs["categories"] = cats
    if codes:
        attrs["codes"] = codes
    if classes is not None:
        plan["target_map"] = [str(c) for c in classes]
        attrs["classes"] = [str(c) for c in classes]
    elif target in stats["text"]:
        values = sorted(stats["text"][target])
        if len(values) != 2:
            raise NldistError(f"target {target!r} is not numeric and has {len(values)} values; "
                              "choose two with --classes A,B or pick a numeric target")
        plan["target_map"] = values
        attrs["classes"] = values
    if standardize:
        plan["standardize"] = (means, scales)
        attrs["standardize"] = {"mean": [float(v) for v in means],
                                "scale": [float(v) for v in scales]}
    if standardize_target:
        if classes is None and plan["target_map"] is not None:  # two text values as 0/1
            p = stats["text"][target][plan["target_map"][1]] / float(n)
            ym, ys = p, float(np.sqrt(p * (1 - p))) or 1.0
        else:  # a number, or the 0/1 labels of two classes (their moments)
            cnt, ym, m2 = stats["moments"][target]
            ys = float(np.sqrt(m2 / cnt)) or 1.0
            if not (np.isfinite(ym) and np.isfinite(ys)):
                raise NldistError(f"standardizing the target {target!r} overflows (values near "
                                  "the float64 limit); rescale it before ingest")
        plan["standardize_target"] = (ym, ys)
        attrs["standardize_target"] = {"mean": float(ym), "scale": float(ys)}
    if stats["rows_in"] != n:
        attrs["dropped_rows"] = int(stats["rows_in"] - n)
    plan["attrs"] = attrs
    return plan


def encode_partition(df: pd.DataFrame, plan: dict, features: list[str] | None,
                     classes: list[Any] | None, dropna: bool) -> tuple[np.ndarray, np.ndarray]:
    """One partition as X (n_b, d) and y (n_b,) in ``plan["dtype"]``."""
    target = plan["target"]
    df = select_columns(df, target, features, classes)
    if dropna:
        df = df.dropna()
    n = len(df)
    X = np.empty((n, len(plan["features"])), dtype=np.float64)
    j = 0
    for c in plan["columns"]:
        if c in plan.get("codes", {}):
            X[:, j] = code_column(df[c], plan["codes"][c], c)
            j += 1
        elif c in plan["categories"]:
            col = df[c].astype(str).to_numpy()
            for v in plan["categories"][c][1:]:
                X[:, j] = col == v
                j += 1
        else:
            X[:, j] = df[c].to_numpy(np.float64)
            j += 1
    if classes is not None:
        y = class_index(df[target], classes)
    elif plan["target_map"] is not None:
        y = (df[target].astype(str).to_numpy() == plan["target_map"][1]).astype(np.float64)
    else:
        y = df[target].to_numpy(np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if "standardize" in plan:
            mu, sd = plan["standardize"]
            X = (X - np.asarray(mu)) / np.asarray(sd)
        if "standardize_target" in plan:
            ym, ys = plan["standardize_target"]
            y = (y - ym) / ys
        X, y = X.astype(plan["dtype"]), y.astype(plan["dtype"])
    finite = np.isfinite(X).all(axis=0)
    if not finite.all() or not np.isfinite(y).all():
        names = [plan["features"][j] for j in np.flatnonzero(~finite)] or [target]
        raise NldistError(f"column(s) {', '.join(names[:5])} are not finite in "
                          f"{plan['dtype']} after encoding (standardized or cast: values near "
                          f"the {plan['dtype']} limit); rescale or drop them before ingest")
    return X, y
