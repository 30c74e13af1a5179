"""Which matrix a score kind is computed on: the rows of one block, built from X and y.

Every ``Rows`` maps a row block ``X_b`` (n_b, d), ``y_b`` (n_b,) to its block of a tall
matrix A (n_b, q), float64, and says what the engine needs to plan around it:

==================  ========================================================  ============
class               block of A                                                 q
==================  ========================================================  ============
:class:`DualRows`   ``[F*(theta), f(0) - y]`` (MATH.md §2); other losses:      p (+1 with y)
                    ``[r*(theta), r(0)]`` (§6)
:class:`DataRows`   ``[X, 1, y]`` (bias and y optional)                        d (+1) (+1)
:class:`RawRows`    ``X`` itself (:func:`nldist.leverage`)                     d
:class:`SketchedRows` another Rows' block with its columns projected (large p)  k
==================  ========================================================  ============

Flags: ``cheap`` (the block is a copy of X plus columns: never worth keeping),
``persistable`` (pass 1 may keep it on disk for pass 2), ``cheap_to_rebuild`` (rebuilding
costs about a copy of X: linear rows, closed-form adjoints), ``needs_y``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nldist.models.base import Model
from nldist.models.losses import get_loss
from nldist.scores import sketch


def dual_block(
    model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray | None, loss: str = "squared"
) -> np.ndarray:
    """Augmented nonlinear dual block [F*(theta), f(0) - y] (MATH.md §2).

    Parameters
    ----------
    model : Model
    theta : ndarray (p,)
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
        Without labels the unaugmented F* (n_b, p) is returned.
    loss : str
        ``"squared"`` (the block above) or another loss of :mod:`nldist.models.losses`:
        then ``[r*(theta), r(0)]`` for the residuals r_i = sign(f_i - y_i) sqrt(l_i)
        (MATH.md §6), with ``out @ [theta, 1] = r(theta)`` row by row.

    Returns
    -------
    ndarray, shape (n_b, p + 1) or (n_b, p), float64
    """
    if loss != "squared" and y is not None:
        lo = get_loss(loss)
        theta, X = model.check_theta(theta), model.check_X(X)
        y = np.asarray(y, dtype=np.float64).reshape(-1)
        lo.check(model.predict(theta, X), y)
        F = model.residual_adjoint(theta, X, y, lo)
        out = np.empty((F.shape[0], F.shape[1] + 1), dtype=np.float64)
        out[:, :-1] = F
        out[:, -1] = lo.residual(model.f0(X), y)
        return out
    F = model.adjoint(theta, X)
    if y is None:
        return F
    out = np.empty((F.shape[0], F.shape[1] + 1), dtype=np.float64)
    out[:, :-1] = F
    out[:, -1] = model.f0(X) - np.asarray(y, dtype=np.float64)
    return out


def linear_block(
    X: np.ndarray, y: np.ndarray | None = None, bias: bool = True, out: np.ndarray | None = None
) -> np.ndarray:
    """Data matrix block [X, 1] (or X without bias), optionally augmented with y.

    Parameters
    ----------
    out : ndarray (>= n_b, q) float64 C-contiguous, optional
        Buffer to write into (its first n_b rows are returned); then X is always copied.

    Returns
    -------
    ndarray, shape (n_b, d + bias + (y is not None)), float64
    """
    X = np.asarray(X)
    extra = int(bias) + int(y is not None)
    if not extra and out is None:
        return np.asarray(X, dtype=np.float64)
    d = X.shape[1]
    if out is None:
        out = np.empty((X.shape[0], d + extra), dtype=np.float64)
    else:
        out = out[: X.shape[0]]
    out[:, :d] = X
    if bias:
        out[:, d] = 1.0
    if y is not None:
        out[:, -1] = np.asarray(y, dtype=np.float64).reshape(-1)
    return out


@dataclass(frozen=True)
class DualRows:
    """The (augmented) nonlinear dual matrix of ``model`` at ``theta``."""

    model: Model
    theta: np.ndarray
    use_y: bool = True
    loss: str = "squared"

    cheap = False
    persistable = True

    @property
    def needs_y(self) -> bool:
        return self.use_y

    @property
    def cheap_to_rebuild(self) -> bool:
        return bool(self.model.closed_form)

    def n_cols(self, d: int) -> int:
        return self.model.n_params + int(self.use_y)

    def matrix(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return dual_block(self.model, self.theta, X, y if self.use_y else None, self.loss)


@dataclass(frozen=True)
class DataRows:
    """The data matrix ``[X, 1, y]`` (linear kinds)."""

    bias: bool = True
    use_y: bool = False

    cheap = True
    persistable = False
    cheap_to_rebuild = True

    @property
    def needs_y(self) -> bool:
        return self.use_y

    def n_cols(self, d: int) -> int:
        return d + int(self.bias) + int(self.use_y)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, out: np.ndarray | None = None
               ) -> np.ndarray:
        return linear_block(X, y if self.use_y else None, bias=self.bias, out=out)

    def add_gram(self, G: np.ndarray, X: np.ndarray, y: np.ndarray | None) -> None:
        """G += AᵀA for A = [X, 1 (bias), y (augmented)] without forming A (saves a copy)."""
        d = X.shape[1]
        G[:d, :d] += X.T @ X
        extra = []
        if self.bias:
            extra.append(np.ones(X.shape[0]))
        if self.use_y and y is not None:
            extra.append(np.asarray(y, dtype=np.float64))
        if not extra:
            return
        E = np.stack(extra)  # (k, n_s)
        XE = E @ X  # (k, d)
        G[d:, :d] += XE
        G[:d, d:] += XE.T
        G[d:, d:] += E @ E.T


@dataclass(frozen=True)
class RawRows:
    """The rows of X itself (``nldist.leverage`` of a tall matrix)."""

    cheap = True
    persistable = False
    cheap_to_rebuild = True
    needs_y = False

    def n_cols(self, d: int) -> int:
        return d

    def matrix(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)


@dataclass(frozen=True)
class SketchedRows:
    """Another Rows' block with its columns projected to ``sk.cols`` dims (large p)."""

    inner: Any
    sk: Any

    cheap = False
    persistable = True

    @property
    def needs_y(self) -> bool:
        return self.inner.needs_y

    @property
    def cheap_to_rebuild(self) -> bool:
        return isinstance(self.inner, DualRows) and self.inner.cheap_to_rebuild

    def n_cols(self, d: int) -> int:
        return int(self.sk.cols)

    def matrix(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray:
        return sketch.sketched_matrix(self.inner, self.sk, X, y)
