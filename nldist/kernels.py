"""Per-block kernels that combine a model with the linear algebra (pure NumPy, no Dask).

Each function takes one row block ``X_b`` (n_b, d), ``y_b`` (n_b,) and returns small
results: a (q, q) R factor, a few scalars, per-row scores for the block, or the pieces of
a Gauss-Newton step. :mod:`nldist.graph` maps them over blocks and reduces.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nldist import linalg
from nldist.errors import NldistError
from nldist.models import Model

KINDS = (
    "nonlinear-leverage",
    "nonlinear-norm",
    "linear-leverage",
    "linear-norm",
    "uniform",
    "ridge-leverage",
)
LEVERAGE_KINDS = ("nonlinear-leverage", "linear-leverage", "ridge-leverage")
NONLINEAR_KINDS = ("nonlinear-leverage", "nonlinear-norm", "ridge-leverage")


def check_kind(kind: str) -> str:
    """Return kind or raise a one-line error listing the allowed kinds."""
    if kind not in KINDS:
        raise NldistError(f"unknown score kind {kind!r}; use one of {', '.join(KINDS)}")
    return kind


def check_finite_block(X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> None:
    """Raise a one-line error if a block holds NaN/inf, naming the first bad row."""
    bad = ~np.isfinite(X).all(axis=1)
    if y is not None:
        bad |= ~np.isfinite(y)
    if bad.any():
        first = int(np.argmax(bad)) + offset
        raise NldistError(
            f"data contain NaN or inf in {int(bad.sum())} row(s) of rows "
            f"{offset}..{offset + len(bad) - 1} (first bad row {first}); drop or impute them, "
            "e.g. `nldist ingest ... --dropna`"
        )


def dual_block(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
    """Augmented nonlinear dual block [F*(theta), f(0) - y] (MATH.md §2).

    Parameters
    ----------
    model : Model
    theta : ndarray (p,)
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
        Without labels the unaugmented F* (n_b, p) is returned.

    Returns
    -------
    ndarray, shape (n_b, p + 1) or (n_b, p), float64
    """
    F = model.adjoint(theta, X)
    if y is None:
        return F
    out = np.empty((F.shape[0], F.shape[1] + 1), dtype=np.float64)
    out[:, :-1] = F
    out[:, -1] = model.f0(X) - np.asarray(y, dtype=np.float64)
    return out


def linear_block(X: np.ndarray, y: np.ndarray | None = None, bias: bool = True) -> np.ndarray:
    """Data matrix block [X, 1] (or X without bias), optionally augmented with y.

    Returns
    -------
    ndarray, shape (n_b, d + bias + (y is not None)), float64
    """
    X = np.asarray(X, dtype=np.float64)
    cols = [X]
    if bias:
        cols.append(np.ones((X.shape[0], 1)))
    if y is not None:
        cols.append(np.asarray(y, dtype=np.float64)[:, None])
    return np.hstack(cols) if len(cols) > 1 else X


@dataclass(frozen=True)
class ScoreSpec:
    """Everything a block needs to build the matrix a score kind is computed on.

    Attributes
    ----------
    kind : str
    model : Model or None
        Needed for nonlinear kinds; for linear kinds only ``has_bias`` is used.
    theta : ndarray (p,) or None
    use_y : bool
        Augment with the label column (f(0) - y for nonlinear kinds, y for linear ones
        when ``linear_augment_y``).
    linear_bias : bool
    raw : bool
        Score the rows of X itself (``nldist.leverage``); model and y are ignored.
    """

    kind: str
    model: Model | None
    theta: np.ndarray | None
    use_y: bool = True
    linear_bias: bool = True
    raw: bool = False

    def matrix(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
        """The block of the matrix whose row scores are wanted (None for uniform)."""
        if self.raw:
            return np.asarray(X, dtype=np.float64)
        if self.kind in NONLINEAR_KINDS:
            return dual_block(self.model, self.theta, X, y if self.use_y else None)
        if self.kind in ("linear-leverage", "linear-norm"):
            return linear_block(X, y if self.use_y else None, bias=self.linear_bias)
        return None

    @property
    def needs_y(self) -> bool:
        return self.use_y and not self.raw and self.kind != "uniform"


def pass1_block(X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, offset: int = 0) -> dict:
    """Pass 1 on one block: the block's R (leverage kinds), squared Frobenius norm, row count.

    Returns
    -------
    dict with keys ``R`` ((q, q) or None), ``fro2`` (float), ``n`` (int)
    """
    X = np.asarray(X)
    check_finite_block(X, y if spec.needs_y else None, offset)
    A = spec.matrix(X, y)
    out: dict[str, Any] = {"R": None, "fro2": 0.0, "n": int(X.shape[0])}
    if A is None:
        return out
    if spec.kind in LEVERAGE_KINDS:
        out["R"] = linalg.block_r(A)
    else:
        out["fro2"] = float(np.sum(A * A))
    return out


def combine_pass1(parts: list[dict]) -> dict:
    """Tree-reduction step for :func:`pass1_block` results."""
    Rs = [p["R"] for p in parts if p["R"] is not None]
    return {
        "R": linalg.combine_r(Rs) if Rs else None,
        "fro2": float(sum(p["fro2"] for p in parts)),
        "n": int(sum(p["n"] for p in parts)),
    }


@dataclass(frozen=True)
class Normalizer:
    """Global quantities pass 2 needs: the R factor (leverage kinds) and the normalizer.

    ``total`` is rank (leverage), effective dimension (ridge), ||A||_F^2 (norm) or n
    (uniform), so that block scores divided by it sum to 1 over all rows.
    """

    kind: str
    n: int
    total: float
    factor: linalg.RFactor | None = None

    @property
    def rank(self) -> int | None:
        return None if self.factor is None else self.factor.rank


def finalize_pass1(spec: ScoreSpec, stats: dict, ridge: float = 0.0, rtol: float | None = None):
    """Turn reduced pass-1 stats into a :class:`Normalizer`, with one-line errors."""
    n = stats["n"]
    if n == 0:
        raise NldistError("the data have no rows; check the dataset path and any row filter")
    if spec.kind == "uniform":
        return Normalizer("uniform", n, float(n))
    if spec.kind in LEVERAGE_KINDS:
        fac = linalg.finalize_r(stats["R"], n, ridge=ridge if spec.kind == "ridge-leverage" else 0,
                                rtol=rtol)
        if fac.total <= 0:
            raise NldistError(
                f"the matrix for {spec.kind} is all zeros (rank 0); scores are undefined — "
                "check theta and the data, or use kind 'uniform'"
            )
        return Normalizer(spec.kind, n, fac.total, fac)
    if stats["fro2"] <= 0:
        raise NldistError(f"the matrix for {spec.kind} is all zeros; scores are undefined")
    return Normalizer(spec.kind, n, stats["fro2"])


def pass2_block(X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer):
    """Pass 2 on one block: the block's probabilities (n_b,), float64, summing to 1 globally."""
    if spec.kind == "uniform":
        return np.full(np.shape(X)[0], 1.0 / norm.total)
    A = spec.matrix(np.asarray(X), y)
    raw = linalg.row_leverage(A, norm.factor) if norm.factor is not None else linalg.row_sqnorms(A)
    return raw / norm.total


# --------------------------------------------------------------------------------------
# Losses and Gauss-Newton pieces for training on the full data
# --------------------------------------------------------------------------------------


def gn_block(
    model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, offset: int = 0
) -> dict:
    """Loss, gradient and Gauss-Newton matrix of L = sum (f_i - y_i)^2 on one block.

    Returns
    -------
    dict with ``loss`` (float), ``grad`` (p,), ``gn`` (p, p) = 2 J^T J
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    r = model.predict(theta, X) - np.asarray(y, dtype=np.float64)
    J = model.jacobian(theta, X)
    return {"loss": float(r @ r), "grad": 2.0 * (J.T @ r), "gn": 2.0 * (J.T @ J)}


def combine_sum(parts: list[dict]) -> dict:
    """Sum dicts of arrays/scalars key by key (tree-reduction step)."""
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def losses_block(model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Full-data squared loss contributions of several parameter vectors at once.

    Parameters
    ----------
    thetas : ndarray (m, p)

    Returns
    -------
    ndarray (m,): sum_i (f(theta_j; x_i) - y_i)^2 over the block's rows
    """
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(thetas.shape[0])
    for j, th in enumerate(thetas):
        r = model.predict(th, X) - y
        out[j] = r @ r
    return out
