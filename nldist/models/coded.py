"""Categorical columns stored as integer codes: a model over ``[numeric columns, codes]``.

Ingest stores a text column with many levels (airports, carriers, product ids: more than
``onehot_max_levels``) as ONE column of integer codes ``0..L-1`` (its sorted levels in the
dataset's attrs), after the numeric and one-hot columns, instead of L - 1 dense one-hot
columns. The model the user names (``linear``, ``glm:swish``, ``relu2:16``, ...) is the same
model on the one-hot design ``[x_numeric, onehot_1(code_1)[1:], ..., onehot_k(code_k)[1:]]``
(first level dropped, as pandas' ``get_dummies(drop_first=True)``; every other level keeps its
own coefficient, however rare).

:class:`CodedModel` wraps the model on that design: it takes X with the raw columns (n, d0 +
k), and its methods expand a row block to the design when they need dense rows (training on
the sample, torch and two-layer models). Single-index models (GLMs) never expand on the
passes: :meth:`CodedModel.sparse_design` gives the design rows as a sparse matrix (d0 + k + 1
nonzeros per row) whose Gram is a scatter-add (:class:`nldist.scores.rows.DualRows`).

theta layout: the inner model's on the design — for a GLM ``[w_numeric (d0), w_code_1 (L_1 -
1), ..., w_code_k (L_k - 1), b]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.glm import GLM


@dataclass(frozen=True)
class Codes:
    """The k coded columns at the end of X: their names and level counts.

    Attributes
    ----------
    levels : tuple of int
        L_c, the number of levels of each coded column (code 0 is the reference level).
    names : tuple of str
        The columns' names (for messages).
    """

    levels: tuple[int, ...]
    names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.levels or any(int(L) < 2 for L in self.levels):
            raise NldistError(f"coded columns need at least 2 levels each, got {self.levels}")

    @classmethod
    def from_attrs(cls, attrs: dict) -> Codes | None:
        """The codes a dataset's attrs declare (``codes``: name -> levels), or None."""
        codes = attrs.get("codes") or {}
        if not codes:
            return None
        return cls(tuple(len(v) for v in codes.values()), tuple(str(k) for k in codes))

    @property
    def k(self) -> int:
        """Coded columns."""
        return len(self.levels)

    @property
    def width(self) -> int:
        """One-hot columns of the design (each column's first level dropped)."""
        return sum(int(L) - 1 for L in self.levels)

    @property
    def offsets(self) -> np.ndarray:
        """Start of each coded column's block within the one-hot part, (k,)."""
        return np.concatenate([[0], np.cumsum([int(L) - 1 for L in self.levels])[:-1]]
                              ).astype(np.int64)

    def name(self, c: int) -> str:
        return self.names[c] if c < len(self.names) else f"code {c}"

    def positions(self, C: np.ndarray) -> np.ndarray:
        """Column of each row's level within the one-hot part, (n, k) int64; ``width`` for
        the reference level (code 0, no column). One-line error for a code that is not an
        integer in 0..L-1."""
        C = np.asarray(C)
        L = np.asarray(self.levels)
        with np.errstate(invalid="ignore"):
            bad = ~((C >= 0) & (C < L) & (C == np.floor(C)))
        if bad.any():
            i, c = np.argwhere(bad)[0]
            raise NldistError(f"coded column {self.name(int(c))!r} holds {float(C[i, c])!r} in row "
                              f"{int(i)}, not a code 0..{int(L[c]) - 1}; re-ingest the table "
                              "(codes are written by nldist ingest)")
        Ci = C.astype(np.int64)
        return np.where(Ci > 0, Ci - 1 + self.offsets, self.width)


@dataclass
class CodedModel(Model):
    """``inner`` (built on the one-hot design) taking X with the codes in its last k columns.

    ``n_features`` is the raw width d0 + k; ``inner.n_features`` the design's d0 + width.
    """

    inner: Model = field(default=None)  # type: ignore[assignment]
    codes: Codes = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.n_params = self.inner.n_params

    def __repr__(self) -> str:
        lv = ", ".join(f"{self.codes.name(c)}: {L}" for c, L in enumerate(self.codes.levels))
        return (f"{self.inner!r} on {self.n_features} columns, the last {self.codes.k} coded "
                f"({lv} levels)")

    # capabilities: the inner model's
    @property
    def closed_form(self) -> bool:  # type: ignore[override]
        return bool(self.inner.closed_form)

    @property
    def homogeneous_degree(self) -> Any:  # type: ignore[override]
        return self.inner.homogeneous_degree

    @property
    def n_outputs(self) -> int:  # type: ignore[override]
        return int(self.inner.n_outputs)

    @property
    def accepts_state_dict(self) -> bool:  # type: ignore[override]
        return bool(self.inner.accepts_state_dict)

    @property
    def has_bias(self) -> bool:
        return self.inner.has_bias

    @property
    def d0(self) -> int:
        """Numeric (and one-hot) columns before the codes."""
        return self.n_features - self.codes.k

    @property
    def sparse_rows(self) -> bool:
        """The dual rows can be built sparse (a single-index model with one output)."""
        return isinstance(self.inner, GLM) and self.inner.n_outputs == 1

    def __getattr__(self, name: str) -> Any:
        # optional capabilities of the inner model, on raw X: kron_design and vjp of
        # softmax:<C> (the cross-entropy oracles call them), torch_jacobian of relu2
        if name.startswith("__") or name in ("inner", "codes"):
            raise AttributeError(name)
        attr = getattr(self.inner, name)
        if name == "kron_design":
            return lambda X: attr(self.expand(X))
        if name == "vjp":
            return lambda theta, X, G: attr(theta, self.expand(X), G)
        if name == "torch_jacobian":
            return lambda theta, X: attr(theta, self.torch_expand(X))
        raise AttributeError(name)

    # -- the design -------------------------------------------------------------------
    def check_X(self, X: Any) -> np.ndarray:
        """X with the raw columns (or already expanded to the design) as float64."""
        X = np.asarray(X)
        if X.ndim == 2 and X.shape[1] == self.inner.n_features:
            return self.inner.check_X(X)
        return super().check_X(X)

    def expand(self, X: Any) -> np.ndarray:
        """The dense one-hot design of a row block, (n, d0 + width) float64."""
        X = self.check_X(X)
        if X.shape[1] == self.inner.n_features:
            return X
        n, d0 = X.shape[0], self.d0
        pos = self.codes.positions(X[:, d0:])
        out = np.zeros((n, d0 + self.codes.width + 1))  # + a dump column for code 0
        out[:, :d0] = X[:, :d0]
        out[np.arange(n)[:, None], d0 + pos] = 1.0
        return out[:, :-1]

    def design_entries(self, X: Any, scale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The nonzeros of ``diag(scale) [x_numeric, onehot, 1]``: column indices and values,
        each (n, K) with K = d0 + k + bias (a reference level's entry is a 0 in column 0),
        never a dense one-hot block."""
        X = self.check_X(X)
        n, d0, p = X.shape[0], self.d0, self.n_params
        pos = d0 + self.codes.positions(X[:, d0:])  # == d0 + width: the reference level
        ref = pos >= d0 + self.codes.width
        cols = [np.broadcast_to(np.arange(d0), (n, d0)), np.where(ref, 0, pos)]
        vals = [X[:, :d0] * scale[:, None], np.where(ref, 0.0, scale[:, None])]
        if self.inner.has_bias:
            cols.append(np.full((n, 1), p - 1))
            vals.append(scale[:, None])
        return (np.concatenate(cols, axis=1).astype(np.int64),
                np.concatenate(vals, axis=1))

    def sparse_design(self, X: Any, scale: np.ndarray) -> sp.csr_matrix:
        """:meth:`design_entries` as a CSR matrix (n, p)."""
        col, val = self.design_entries(X, scale)
        n, per = col.shape
        A = sp.csr_matrix((val.ravel(), col.ravel(), np.arange(0, n * per + 1, per)),
                          shape=(n, self.n_params))
        A.sum_duplicates()
        return A

    def linear_index(self, theta: np.ndarray, X: Any) -> np.ndarray:
        """z = <theta, design row> of a GLM, from the codes (n,) (a gather per coded column)."""
        theta, X = self.check_theta(theta), self.check_X(X)
        d0, w = self.d0, self.codes.width
        z = X[:, :d0] @ theta[:d0]
        coef = np.append(theta[d0:d0 + w], 0.0)  # code 0 -> the appended 0
        z = z + coef[self.codes.positions(X[:, d0:])].sum(axis=1)
        return z + theta[-1] if self.inner.has_bias else z

    # -- the Model interface, on the design ---------------------------------------------
    def predict(self, theta: Any, X: Any) -> np.ndarray:
        if self.sparse_rows:
            inner: GLM = self.inner  # type: ignore[assignment]
            return inner.activation.phi(self.linear_index(theta, X))
        return self.inner.predict(theta, self.expand(X))

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        return self.inner.adjoint(theta, self.expand(X))

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        return self.inner.residual_adjoint(theta, self.expand(X), y, loss)

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        return self.inner.jacobian(theta, self.expand(X))

    def output_adjoint(self, theta: Any, X: Any, V: Any) -> np.ndarray:
        return self.inner.output_adjoint(theta, self.expand(X), V)

    def adjoint_block(self, theta: Any, X: Any) -> np.ndarray:
        return self.inner.adjoint_block(theta, self.expand(X))

    def f0(self, X: Any) -> np.ndarray:
        return self.inner.f0(self.expand(X))

    def torch_forward(self, theta: Any, X: Any) -> Any:
        return self.inner.torch_forward(theta, self.torch_expand(X))

    def torch_expand(self, X: Any) -> Any:
        """:meth:`expand` on a torch tensor (training on the sample)."""
        import torch

        if X.shape[1] == self.inner.n_features:
            return X
        d0 = self.d0
        parts = [X[:, :d0]]
        for c, L in enumerate(self.codes.levels):
            code = X[:, d0 + c].long()
            parts.append(torch.nn.functional.one_hot(code, int(L))[:, 1:].to(X.dtype))
        return torch.cat(parts, dim=1)

    def initial_theta(self, seed: int = 0) -> np.ndarray:
        return self.inner.initial_theta(seed)

    def configure(self, **options: Any) -> Model:
        self.inner.configure(**options)
        return self

    def memory_per_row(self, augmented: bool = True) -> int:
        return self.inner.memory_per_row(augmented)

    def workspace_bytes(self) -> int:
        return self.inner.workspace_bytes()

    def theta_from_state_dict(self, state_dict: dict) -> np.ndarray:
        return self.inner.theta_from_state_dict(state_dict)


def coded(model: Model, n_columns: int, codes: Codes) -> CodedModel:
    """``model`` (built on the design's d0 + width features) over raw X of ``n_columns``."""
    if n_columns <= codes.k:
        raise NldistError(f"X has {n_columns} columns but {codes.k} coded ones are declared; "
                          "re-ingest the table")
    return CodedModel(spec=model.spec, n_features=int(n_columns), inner=model, codes=codes)
