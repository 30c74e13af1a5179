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
:class:`BlockRows`  per example C rows ``B_i^T A_i`` (softmax Fisher factor x   p
                    adjoint block of the C outputs; B = I for squared loss),
                    or k seeded Rademacher combinations (``block-sketch:k``)
:class:`MarginRows` the adjoint of the margin log(p_y / (1 - p_y))               p
==================  ========================================================  ============

:class:`CodedDataRows` is ``[design, 1, y]`` of a dataset with coded categoricals (the
one-hot design, never formed on the passes); coded GLMs' :class:`DualRows` are
``structured`` the same way (:class:`nldist.scores.sparse.FixedRows`).

A C-output model with squared loss (multi-output regression, y (n_b, C)) has C dual rows
per example: :class:`DualRows` gives ``[A_i, f_i(0) - y_i]`` (C, p + 1), exact (ID) per
output, and :class:`BlockRows` the label-free ``A_i``.

``group`` is the number of matrix rows per example (C or k for :class:`BlockRows` and C for
the dual rows of multi-output regression, else 1):
the block is ``(n_b * group, q)``, example-major, and an example's score is the sum of its
rows' values. ``matrix(X, y, offset)`` takes the global index of the block's first row
(seeds of the block sketch).

Flags: ``gram_direct`` (the rows add their Gram to pass 1 without forming the block:
``add_gram``), ``fills_buffer`` (``matrix`` can write into a caller's buffer: ``out=``),
``rebuild_cost`` (what building the block again costs: ``"copy"``, ``"closed_form"`` or
``"costly"``; see :class:`Rows`), ``persistable`` (pass 1 may keep it on disk for pass 2: a
format capability, not a cost), ``needs_y``.

Each class checks the fields it owns when built (``Rows.check`` from ``__post_init__``: theta
finite of length ``model.n_params``, a known loss, positive k and sketch sizes), with
one-line :class:`nldist.errors.NldistError` messages; O(p), never X or y.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.coded import CodedModel
from nldist.models.losses import (
    MARGIN,
    fisher_weights,
    get_loss,
    psi_divdiff,
    softmax,
    targets,
)
from nldist.scores import sketch
from nldist.scores.linalg import kron_gram
from nldist.scores.sampling import hash_uniform
from nldist.scores.sparse import FixedRows


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
    if model.n_outputs > 1 and loss == "squared":
        return output_dual_block(model, theta, X, y).reshape(-1, model.n_params + int(
            y is not None))
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


def output_dual_block(model: Model, theta: np.ndarray, X: np.ndarray,
                      y: np.ndarray | None) -> np.ndarray:
    """Dual block of a C-output model with squared loss, (n_b, C, p + 1): per example its
    adjoint block ``A_i`` (C, p) and ``f_i(0) - y_i`` (C,), so that ``out @ [theta, 1] =
    f_i(theta) - y_i`` output by output (MATH.md (ID) for each output); without y
    ``A_i`` alone, (n_b, C, p)."""
    theta, X = model.check_theta(theta), model.check_X(X)
    A = model.adjoint_block(theta, X)
    if y is None:
        return A
    n, C, p = A.shape
    out = np.empty((n, C, p + 1), dtype=np.float64)
    out[:, :, :p] = A
    out[:, :, p] = np.asarray(model.f0(X), dtype=np.float64).reshape(n, C) - targets(y, n, C)
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


def _check_flag(owner: str, name: str, value: Any) -> None:
    """``value`` is a bool (or 0/1)."""
    if not isinstance(value, (bool, np.bool_, int, np.integer)) or value not in (0, 1):
        raise NldistError(f"{owner}: {name} must be True or False, not {value!r}")


def _check_model(owner: str, model: Any, cls: type = Model) -> None:
    if not isinstance(model, cls):
        raise NldistError(f"{owner} needs a {cls.__name__} (nldist.get_model(spec, d)), not "
                          f"{type(model).__name__}")


def _check_model_theta(rows: Any, owner: str) -> None:
    """The model is a Model and theta a finite (p,) vector (``model.check_theta``), kept as
    the checked float64 array (the same object when it already is one)."""
    _check_model(owner, rows.model)
    object.__setattr__(rows, "theta", rows.model.check_theta(rows.theta))


def _check_c_outputs(owner: str, model: Model) -> None:
    if model.n_outputs < 2:
        raise NldistError(f"{owner} is for models with C >= 2 outputs (softmax:<C>, "
                          f"mlp:<h>:<C>); {model.spec!r} has one — use DualRows")


def _check_positive_int(owner: str, name: str, value: Any) -> None:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) \
            or value < 1:
        raise NldistError(f"{owner}: {name} must be a positive integer, not {value!r}")


#: What building a block again costs (:attr:`Rows.rebuild_cost`), cheapest first.
RebuildCost = Literal["copy", "closed_form", "costly"]


def model_rebuild_cost(model: Model) -> RebuildCost:
    """``"closed_form"`` for a model whose adjoint is a closed formula
    (``model.closed_form``), else ``"costly"`` (quadrature over t)."""
    return "closed_form" if model.closed_form else "costly"


class Rows:
    """The declared contract of every rows class: the capabilities the engine plans around,
    each with its default (a subclass overrides a class attribute or a property).

    Attributes
    ----------
    group : int
        Matrix rows per example (C or k for block rows, C for multi-output dual rows).
    needs_y : bool
        The block depends on the labels.
    rebuild_cost : {"copy", "closed_form", "costly"}
        What building the block again costs, the one cost the engine plans around:

        - ``"copy"``: a copy of X plus columns (data rows, X itself). Never worth keeping
          between passes; X is checked for NaN/inf through the reduced values only.
        - ``"closed_form"``: a closed formula per row, about a copy of X (closed-form
          adjoints, :func:`model_rebuild_cost`; column-sketched closed-form dual rows).
          Pass 1 rebuilds the whole block when its R needs it rather than keeping it.
        - ``"costly"`` (the default): more than that (adjoints by quadrature over t, other
          column-sketched rows). Pass 1 keeps the block from its slices when its R needs
          the whole block.
    persistable : bool
        Pass 1 may keep the block on disk for pass 2 (:mod:`nldist.store.dual_blocks`): a
        capability of the block's format, declared apart from ``rebuild_cost`` (sparse or
        Kronecker-structured rows are never formed, so they cannot be persisted; ``"copy"``
        rows declare False too: a copy of X is never worth storing).
    gram_direct : bool
        ``add_gram(G, X, y, offset)`` adds the block's Gram without forming it.
    gram_any_dtype : bool
        The direct Gram may take X in its own dtype.
    structured : bool
        ``row_values(X, y, offset, P)`` gives leverage rows without forming the block.
    fills_buffer : bool
        ``matrix(X, y, out=buf)`` writes into a caller's buffer.
    quad_factor : bool
        ``row_values`` takes a factor B of P (``P = B Bᵀ``, :func:`nldist.scores.linalg.
        leverage_factor`) and sums squares ``‖B ᵀ a‖²``, which cannot cancel, instead of the
        quadratic form ``aᵀ P a`` (whose rounding grows with cond(R)², and sums a few
        (C-1)q-wide products of mixed sign).
    gram_only : bool
        The passes never form the block (sparse rows of coded categoricals): pass 1 takes
        its R from the Gram up to ``linalg.KAPPA_CHOLQR2`` (the Gram's rounding then costs
        at most about 1e-4 relative in a leverage) and forms the block only past that.
    """

    group: int = 1
    needs_y: bool = False
    rebuild_cost: RebuildCost = "costly"
    persistable: bool = False
    gram_direct: bool = False
    gram_any_dtype: bool = False
    structured: bool = False
    fills_buffer: bool = False
    quad_factor: bool = False
    gram_only: bool = False

    def __post_init__(self) -> None:
        # every rows dataclass checks what it owns when built (once per spec, O(p))
        self.check()

    def check(self) -> None:
        """Raise a one-line :class:`NldistError` when the fields the class owns are invalid
        (theta finite of length ``model.n_params``, a known loss, positive group sizes);
        called by the dataclasses' ``__post_init__``. Never touches X or y."""

    def n_cols(self, d: int) -> int:
        """Columns q of the block for X with d columns."""
        raise NotImplementedError

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        """The (n_b * group, q) float64 block of rows ``offset .. offset + n_b - 1``."""
        raise NotImplementedError


@dataclass(frozen=True)
class DualRows(Rows):
    """The (augmented) nonlinear dual matrix of ``model`` at ``theta``."""

    model: Model
    theta: np.ndarray
    use_y: bool = True
    loss: str = "squared"

    #: the structured (coded) Gram takes X in any float dtype
    gram_any_dtype = True

    def check(self) -> None:
        _check_model_theta(self, "DualRows")
        _check_flag("DualRows", "use_y", self.use_y)
        get_loss(self.loss)
        self.model.check_outputs(self.loss if self.use_y else None)
        if self.model.n_outputs > 1 and not self.use_y and self.loss != "squared":
            raise NldistError(f"nonlinear kinds of a {self.model.n_outputs}-output model "
                              "score the cross-entropy residual and need labels y; pass y, "
                              "or use block-leverage (label-free)")

    @property
    def group(self) -> int:
        """C dual rows per example for multi-output regression, else 1."""
        return self.model.n_outputs if self.loss == "squared" else 1

    @property
    def structured(self) -> bool:
        """A single-index model over coded categorical columns: the rows are a sparse matrix
        (:meth:`sparse_parts`), never a dense one-hot block."""
        return isinstance(self.model, CodedModel) and self.model.sparse_rows

    @property
    def gram_direct(self) -> bool:
        return self.structured

    @property
    def gram_only(self) -> bool:
        return self.structured

    @property
    def persistable(self) -> bool:
        return not self.structured

    @property
    def needs_y(self) -> bool:
        return self.use_y

    @property
    def rebuild_cost(self) -> RebuildCost:
        return model_rebuild_cost(self.model)

    def n_cols(self, d: int) -> int:
        return self.model.n_params + int(self.use_y)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        return dual_block(self.model, self.theta, X, y if self.use_y else None, self.loss)

    # -- coded categorical columns: the passes without the dense one-hot block -------------
    def sparse_parts(self, X: np.ndarray, y: np.ndarray | None
                     ) -> tuple[FixedRows, np.ndarray | None]:
        """The adjoint rows ``a_i`` as :class:`FixedRows` (n_b, p; d0 + k + bias entries per
        row) and the augmented column ``c_i`` (n_b,) (None without y) of a ``structured``
        model: the same numbers as :meth:`matrix`."""
        m: CodedModel = self.model  # type: ignore[assignment]
        theta, X = m.check_theta(self.theta), m.check_X(X)
        act = m.inner.activation  # type: ignore[attr-defined]
        z = m.linear_index(theta, X)
        phi0 = float(act.phi0)
        c = None
        if not self.use_y or y is None:
            scale = act.divdiff(z)
        else:
            y = np.asarray(y, dtype=np.float64).reshape(-1)
            if self.loss == "squared":
                scale, c = act.divdiff(z), phi0 - y
            else:
                lo = get_loss(self.loss)
                lo.check(act.phi(z), y)
                scale, c = psi_divdiff(lo, act, z, y), lo.residual(np.full(y.shape, phi0), y)
        cols, vals = m.design_entries(X, scale)
        return FixedRows(cols, vals, m.n_params), c

    def _augmented(self, X: np.ndarray, y: np.ndarray | None) -> FixedRows:
        A, c = self.sparse_parts(X, y if self.use_y else None)
        return A if c is None else A.augment(c)

    def add_gram(self, G: np.ndarray, X: np.ndarray, y: np.ndarray | None,
                 offset: int = 0) -> None:
        """G += [A, c]ᵀ[A, c] by one scatter-add over each row's (d0 + k + 2)² entry pairs
        (a one-hot column's Gram), instead of p² flops per row."""
        self._augmented(X, y).add_gram_to(G)

    def row_values(self, X: np.ndarray, y: np.ndarray | None, offset: int, P: np.ndarray
                   ) -> np.ndarray:
        """Per row ``[a, c]ᵀ P [a, c]`` (n_b,), P from ``leverage_form``: gathers."""
        return self._augmented(X, y).quad(P)


@dataclass(frozen=True)
class DataRows(Rows):
    """The data matrix ``[X, 1, y]`` (linear kinds)."""

    bias: bool = True
    use_y: bool = False

    rebuild_cost = "copy"
    persistable = False
    group = 1
    gram_direct = True
    fills_buffer = True

    def check(self) -> None:
        _check_flag("DataRows", "bias", self.bias)
        _check_flag("DataRows", "use_y", self.use_y)

    @property
    def needs_y(self) -> bool:
        return self.use_y

    def n_cols(self, d: int) -> int:
        return d + int(self.bias) + int(self.use_y)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0,
               out: np.ndarray | None = None) -> np.ndarray:
        return linear_block(X, y if self.use_y else None, bias=self.bias, out=out)

    def add_gram(self, G: np.ndarray, X: np.ndarray, y: np.ndarray | None,
                 offset: int = 0) -> None:
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
class CodedDataRows(Rows):
    """The data matrix ``[design, 1, y]`` of a dataset with coded categoricals: the model's
    one-hot design (:mod:`nldist.models.coded`), as :class:`FixedRows` on the passes — the
    linear kinds' rows without a dense one-hot block (the raw code columns are labels, not
    numbers)."""

    model: CodedModel
    bias: bool = True
    use_y: bool = False

    rebuild_cost = "copy"
    persistable = False
    group = 1
    gram_direct = True
    gram_any_dtype = True
    structured = True
    gram_only = True

    def check(self) -> None:
        _check_model("CodedDataRows", self.model, CodedModel)
        _check_flag("CodedDataRows", "bias", self.bias)
        _check_flag("CodedDataRows", "use_y", self.use_y)

    @property
    def needs_y(self) -> bool:
        return self.use_y

    def n_cols(self, d: int) -> int:
        return self.model.inner.n_features + int(self.bias) + int(self.use_y)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        return linear_block(self.model.expand(X), y if self.use_y else None, bias=self.bias)

    def _fixed(self, X: np.ndarray, y: np.ndarray | None) -> FixedRows:
        m = self.model
        X = m.check_X(X)
        cols, vals = m.design_entries(X, np.ones(X.shape[0]))
        if not self.bias and m.has_bias:  # the design's bias entry is the last one
            cols, vals = cols[:, :-1], vals[:, :-1]
        elif self.bias and not m.has_bias:
            cols = np.column_stack([cols, np.full(X.shape[0], m.inner.n_features)])
            vals = np.column_stack([vals, np.ones(X.shape[0])])
        A = FixedRows(cols, vals, m.inner.n_features + int(self.bias))
        return A.augment(np.asarray(y, dtype=np.float64).reshape(-1)) if self.use_y else A

    def add_gram(self, G: np.ndarray, X: np.ndarray, y: np.ndarray | None,
                 offset: int = 0) -> None:
        """G += AᵀA by one scatter-add (:meth:`FixedRows.gram`)."""
        self._fixed(X, y).add_gram_to(G)

    def row_values(self, X: np.ndarray, y: np.ndarray | None, offset: int, P: np.ndarray
                   ) -> np.ndarray:
        """Per row ``aᵀ P a`` (n_b,) by gathers."""
        return self._fixed(X, y).quad(P)


@dataclass(frozen=True)
class RawRows(Rows):
    """The rows of X itself (``nldist.leverage`` of a tall matrix)."""

    rebuild_cost = "copy"
    persistable = False
    needs_y = False
    group = 1

    def n_cols(self, d: int) -> int:
        return d

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        return np.asarray(X, dtype=np.float64)


@dataclass(frozen=True)
class SketchedRows(Rows):
    """Another Rows' block with its columns projected to ``sk.cols`` dims (large p)."""

    inner: Any
    sk: Any

    persistable = True

    def check(self) -> None:
        if not isinstance(self.inner, Rows):
            raise NldistError(f"SketchedRows projects a Rows' block, not "
                              f"{type(self.inner).__name__}")
        _check_positive_int("SketchedRows", "sketch cols", getattr(self.sk, "cols", None))
        _check_positive_int("SketchedRows", "sketch nnz", getattr(self.sk, "nnz", None))

    @property
    def group(self) -> int:
        return self.inner.group

    @property
    def needs_y(self) -> bool:
        return self.inner.needs_y

    @property
    def rebuild_cost(self) -> RebuildCost:
        """A closed-form dual block's projection counts as closed-form; any other projected
        block (data, block or margin rows) as costly."""
        if isinstance(self.inner, DualRows) and self.inner.rebuild_cost == "closed_form":
            return "closed_form"
        return "costly"

    def n_cols(self, d: int) -> int:
        return int(self.sk.cols)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        return sketch.sketched_matrix(self.inner, self.sk, X, y, offset)


def rademacher(offset: int, n: int, k: int, C: int, seed: int) -> np.ndarray:
    """Seeded signs (n, k, C) / sqrt(k) of rows ``offset .. offset + n - 1``: a function of
    (seed, global row, j, c) only, so the same for any chunking and worker count."""
    idx = (np.arange(offset, offset + n, dtype=np.int64)[:, None, None] * (k * C)
           + np.arange(k)[None, :, None] * C + np.arange(C)[None, None, :])
    return np.where(hash_uniform(idx, seed) < 0.5, -1.0, 1.0) / np.sqrt(k)


def contrast_basis(C: int) -> np.ndarray:
    """An orthonormal basis Q (C, C - 1) of the vectors orthogonal to 1 (a fixed one)."""
    Q, _ = np.linalg.qr(np.eye(C)[:, :-1] - 1.0 / C)
    return Q


@dataclass(frozen=True)
class BlockRows(Rows):
    """Per example the C rows of ``B_i^T A_i``: the adjoint block ``A_i = int_0^1 J_i(t
    theta) dt`` (C, p) of a C-output model weighted by the softmax Fisher factor at theta
    (``B_i B_i^T = diag(pi_i) - pi_i pi_i^T``), label-free. With ``k`` (``block-sketch:k``)
    the C rows are replaced by k seeded Rademacher combinations ``S_i B_i^T A_i`` (S_i of
    shape (k, C), entries +-1/sqrt(k)): k vector-Jacobian products per node instead of C,
    and an unbiased estimate of the block's Gram (E S^T S = I).

    ``softmax:<C>`` (``model.kron_design``): its block is ``N_i (x) x~_i^T`` with
    ``N_i = B_i^T`` (or ``S_i B_i^T``) — every row is orthogonal to the shift ``1 (x) v`` of
    all classes' weights, so the rows are written in the contrast basis Q of ``1^perp``
    (``N_i Q (x) x~_i^T``, (C - 1)(d + 1) columns: the same leverages, a full-rank Gram), and
    the passes never form them: the Gram is ``sum_i K_i (x) x~_i x~_i^T`` with
    ``K_i = Q^T N_i^T N_i Q`` and a row block's value is ``sum_ab K_i[a, b] x~^T P_ab x~``
    (:func:`nldist.scores.linalg.leverage_form`), about C times fewer flops than the C
    explicit rows.
    """

    model: Model
    theta: np.ndarray
    k: int | None = None
    seed: int = 0
    #: ``cross_entropy`` (softmax Fisher weights) or ``squared`` (B_i = I: the Gauss-Newton
    #: Hessian of multi-output regression is sum_i A_i^T A_i at the linearization)
    loss: str = "cross_entropy"

    needs_y = False
    #: the Gram may be accumulated from any float dtype (add_gram casts to float64)
    gram_any_dtype = True
    quad_factor = True

    def check(self) -> None:
        _check_model_theta(self, "BlockRows")
        _check_c_outputs("BlockRows", self.model)
        if self.loss not in ("cross_entropy", "squared"):
            raise NldistError(f"BlockRows: loss must be 'cross_entropy' (Fisher weights) or "
                              f"'squared' (multi-output regression), not {self.loss!r}")
        if self.k is not None:  # the seed only matters for the k sign combinations
            _check_positive_int("BlockRows", "k (block-sketch:k)", self.k)
            if isinstance(self.seed, (bool, np.bool_)) or not isinstance(
                    self.seed, (int, np.integer)) or self.seed < 0:
                raise NldistError(f"BlockRows: seed (the job's random state) must be an "
                                  f"integer >= 0, not {self.seed!r}")

    @property
    def structured(self) -> bool:
        # the contrast basis needs rows orthogonal to the all-classes shift (Fisher weights)
        return bool(getattr(self.model, "kron_design", False)) and self.loss != "squared"

    @property
    def gram_direct(self) -> bool:
        return self.structured

    @property
    def gram_only(self) -> bool:
        return self.structured

    @property
    def persistable(self) -> bool:
        return not self.structured

    @property
    def group(self) -> int:
        return int(self.k or self.model.n_outputs)

    @property
    def rebuild_cost(self) -> RebuildCost:
        return model_rebuild_cost(self.model)

    def n_cols(self, d: int) -> int:
        if self.structured:
            return (self.model.n_outputs - 1) * self.model.n_params // self.model.n_outputs
        return self.model.n_params

    def _weights(self, X: np.ndarray, offset: int) -> np.ndarray:
        """N_i (n, group, C): the Fisher factor rows B_i^T, or their k sign combinations."""
        m = self.model
        if self.loss == "squared":
            Bt = np.broadcast_to(np.eye(m.n_outputs), (X.shape[0], m.n_outputs, m.n_outputs))
        else:
            Bt = fisher_weights(softmax(m.predict(self.theta, X)))
        if self.k is None:
            return Bt
        return np.einsum("nkc,ncd->nkd", rademacher(offset, X.shape[0], self.k,
                                                     m.n_outputs, self.seed), Bt)

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        m = self.model
        X = m.check_X(X)
        n, C, p = X.shape[0], m.n_outputs, m.n_params
        N = self._weights(X, offset)
        g = N.shape[1]
        if self.structured:
            NQ = N @ contrast_basis(C)  # (n, g, C - 1)
            Xd = m.kron_design(X)
            return (NQ[:, :, :, None] * Xd[:, None, None, :]).reshape(n * g, -1)
        if self.k is None and self.loss == "squared":
            return m.adjoint_block(self.theta, X).reshape(n * C, p)
        if self.k is None:
            return np.einsum("ncd,ndp->ncp", N, m.adjoint_block(self.theta, X)).reshape(
                n * C, p)
        out = np.empty((n, g, p))
        for j in range(g):
            out[:, j] = m.output_adjoint(self.theta, X, N[:, j])
        return out.reshape(n * g, p)

    # -- softmax: the passes without the explicit rows -----------------------------------
    def _kron_parts(self, X: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        NQ, Xd = self._kron_rows(X, offset)
        return np.einsum("nga,ngb->nab", NQ, NQ), Xd  # K (n, C-1, C-1)

    def _kron_rows(self, X: np.ndarray, offset: int) -> tuple[np.ndarray, np.ndarray]:
        """``N_i Q`` (n, group, C-1) and the design rows ``x~_i`` (n, q): row ``(i, g)`` of
        the block is ``(N_i Q)[g] (x) x~_i``."""
        X = self.model.check_X(X)
        return (self._weights(X, offset) @ contrast_basis(self.model.n_outputs),
                self.model.kron_design(X))

    def add_gram(self, G: np.ndarray, X: np.ndarray, y: np.ndarray | None,
                 offset: int = 0) -> None:
        """G += sum_i K_i (x) x~_i x~_i^T (only for ``structured`` rows)."""
        G += kron_gram(*self._kron_parts(X, offset))

    def row_values(self, X: np.ndarray, y: np.ndarray | None, offset: int, B: np.ndarray
                   ) -> np.ndarray:
        """Per example the sum of its rows' ``‖Bᵀ a‖²`` (n,), B ((C-1) q, r) from
        ``leverage_factor``: ``Bᵀ((N_i Q)[g] (x) x~_i) = Σ_a (N_i Q)[g, a] B_aᵀ x~_i`` with
        ``B_a`` the rows of class a, so one GEMM of the design rows with all ``B_a``."""
        NQ, Xd = self._kron_rows(X, offset)
        n, c1, q, r = NQ.shape[0], NQ.shape[2], Xd.shape[1], B.shape[1]
        W = (Xd @ B.reshape(c1, q, r).transpose(1, 0, 2).reshape(q, c1 * r)).reshape(n, c1, r)
        V = np.matmul(NQ, W)
        return np.einsum("ngr,ngr->n", V, V)


@dataclass(frozen=True)
class MarginRows(Rows):
    """The adjoint of the TRAK-style margin ``m_i = log(p_y / (1 - p_y))`` of a C-output
    model along t theta (one row per example, unaugmented: the margin is the model's
    scalar, not a residual)."""

    model: Model
    theta: np.ndarray

    persistable = True
    needs_y = True
    group = 1

    def check(self) -> None:
        _check_model_theta(self, "MarginRows")
        _check_c_outputs("MarginRows", self.model)

    @property
    def rebuild_cost(self) -> RebuildCost:
        return model_rebuild_cost(self.model)

    def n_cols(self, d: int) -> int:
        return self.model.n_params

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> np.ndarray:
        X = self.model.check_X(X)
        MARGIN.check(self.model.predict(self.theta, X[:1]), np.asarray(y)[:1])
        return self.model.residual_adjoint(self.theta, X, np.asarray(y, dtype=np.float64),
                                           MARGIN)
