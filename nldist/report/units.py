"""Rows back in the dataset's own units for the report's tables: de-standardised features
and target, decoded categorical columns, class labels, compact numbers.
"""

from __future__ import annotations

import numpy as np


def original_units(X: np.ndarray, y: np.ndarray | None, attrs: dict
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Undo the standardization recorded at ingest (features and target)."""
    X = np.asarray(X, dtype=np.float64)
    st = attrs.get("standardize")
    if st:
        X = X * np.asarray(st["scale"]) + np.asarray(st["mean"])
    if y is not None and attrs.get("standardize_target"):
        t = attrs["standardize_target"]
        y = np.asarray(y, dtype=np.float64) * t["scale"] + t["mean"]
    return X, y


def decode_columns(X: np.ndarray, attrs: dict) -> tuple[list[str], list[list[str]]]:
    """Feature columns for display: one-hot groups folded back into their categories, and
    integer codes (``attrs["codes"]``) shown as their levels.

    Returns the column names and, per column, the formatted values of each row.
    """
    names = list(attrs.get("features") or [f"x{i}" for i in range(X.shape[1])])
    cats: dict[str, list[str]] = attrs.get("categories") or {}
    used: set[int] = set()
    cols: list[tuple[str, list[str]]] = []
    dummy_of: dict[str, tuple[str, dict[int, str]]] = {}
    for col, values in cats.items():
        where = {names.index(f"{col}_{v}"): v for v in values if f"{col}_{v}" in names}
        if where:
            base = [v for v in values if f"{col}_{v}" not in names]
            dummy_of[col] = (base[0] if base else "?", where)
    first_pos = {col: min(where) for col, (_, where) in dummy_of.items()}
    for j, name in enumerate(names):
        hit = [c for c, pos in first_pos.items() if pos == j]
        if hit:
            col = hit[0]
            base, where = dummy_of[col]
            vals = []
            for row in X:
                on = [where[i] for i in where if row[i] > 0.5]
                vals.append(on[0] if on else base)
            cols.append((col, vals))
            used.update(where)
            continue
        if j in used or any(j in w for _, w in dummy_of.values()):
            continue
        levels = (attrs.get("codes") or {}).get(name)
        if levels is not None:  # a categorical stored as integer codes: its level
            cols.append((name, [str(levels[int(v)]) if 0 <= v < len(levels) else _fmt(v)
                                for v in X[:, j]]))
            continue
        cols.append((name, [_fmt(v) for v in X[:, j]]))
    return [c[0] for c in cols], [c[1] for c in cols]


def _fmt(v: float) -> str:
    v = float(v)
    if v == 0:
        return "0"
    if abs(v - round(v)) < 1e-9 and abs(v) < 1e7:
        return f"{int(round(v))}"
    return f"{v:.4g}"


def class_label(y: float | None, attrs: dict) -> str:
    """Class name of a target value (classes and label names from the dataset attrs)."""
    if y is None:
        return ""
    if np.ndim(y) == 1:  # the targets of a multi-output regression
        return ", ".join(_fmt(v) for v in np.asarray(y))
    classes = attrs.get("classes")
    names = attrs.get("label_names")
    if classes and float(y) in (0.0, 1.0):
        c = classes[int(y)]
        if names:
            try:
                return str(names[int(float(c))])
            except (ValueError, IndexError):
                return str(c)
        return str(c)
    return _fmt(y)
