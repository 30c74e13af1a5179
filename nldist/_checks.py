"""Cheap input checks shared by every ring: X and y at the front door (:func:`check_xy`),
finiteness of a block, the job's random state.

Each raises a one-line :class:`nldist.errors.NldistError` that names the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nldist.errors import NldistError


def _meta(a: Any) -> tuple[tuple, np.dtype]:
    """Shape and dtype of an array-like without reading it (a dask array's from its
    metadata: the tiny stand-in dask-ml's ``check_array`` validates)."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    return tuple(a.shape), np.dtype(a.dtype)


def check_xy(X: Any, y: Any = None, y_cols: int | None = 1) -> int:
    """The one front door for X and y (``nldist.scores``, :func:`nldist.graph.inputs.as_dask_xy`):
    shapes, dtypes, rows and targets, from the arrays' metadata alone (NumPy or dask; nothing
    is read), each failure a one-line error that names the fix.

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d)
        A dask array's unknown row count (NaN) skips the row checks; check again once known.
    y : ndarray or dask array of shape (n,), (n, 1) or (n, y_cols), optional
    y_cols : int or None
        Target columns expected (C for a multi-output regression); None: as y is (one, or
        the columns of a 2-D y).

    Returns
    -------
    int
        The target columns (1 without y).
    """
    shape, dtype = _meta(X)
    if len(shape) != 2:
        raise NldistError(f"X must be 2-D (n, d), got shape {shape}; reshape it")
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise NldistError(f"X has dtype {dtype}; convert it to float32/float64 (one-hot encode "
                          "categorical columns, e.g. with `nldist ingest`)")
    n, d = shape
    if d == 0:
        raise NldistError("X has no columns; check the dataset's feature columns")
    known = not (isinstance(n, float) and np.isnan(n))
    if known and n == 0:
        raise NldistError("X has no rows; check the dataset path and any row filter")
    if y is None:
        return 1
    yshape, ydtype = _meta(y)
    if y_cols is None:  # infer: one target, or the columns of a 2-D y
        y_cols = int(yshape[1]) if len(yshape) == 2 and yshape[1] > 1 else 1
    got = yshape[:1] if len(yshape) == 2 and yshape[1] == 1 and y_cols == 1 else yshape
    want = (n,) if y_cols == 1 else (n, y_cols)
    rows_known = known and not (len(got) and isinstance(got[0], float) and np.isnan(got[0]))
    if (len(got) != len(want) or got[1:] != want[1:]) or (rows_known and got != want):
        raise NldistError(
            f"y has shape {got} but X has {n} rows; pass y of shape {want}"
            + ("" if y_cols == 1 else f" (one column per output of the {y_cols}-output "
                                      "model)"))
    if not (np.issubdtype(ydtype, np.number) or ydtype == np.bool_):
        raise NldistError(f"y has dtype {ydtype}; convert the target to numbers")
    return y_cols


def check_finite_block(X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> None:
    """Raise a one-line error if a block holds NaN/inf, naming the first bad row."""
    bad = ~np.isfinite(X).all(axis=1)
    if y is not None:
        fin = np.isfinite(y)
        bad |= ~(fin.all(axis=1) if fin.ndim == 2 else fin)  # 2-D: multi-output targets
    if bad.any():
        first = int(np.argmax(bad)) + offset
        raise NldistError(
            f"data contain NaN or inf in {int(bad.sum())} row(s) of rows "
            f"{offset}..{offset + len(bad) - 1} (first bad row {first}); drop or impute them, "
            "e.g. `nldist ingest ... --dropna`"
        )


def as_rng(random_state: Any) -> np.random.Generator:
    """A Generator from an int, None, SeedSequence or Generator (the job's one random_state)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise NldistError(
            "random_state must be an int, a SeedSequence or a numpy Generator, "
            f"got {random_state!r}"
        ) from None
