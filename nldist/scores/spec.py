"""A score kind bound to its inputs: :class:`ScoreSpec`, validated once by :func:`make_spec`.

The API, the pipeline and the diagnostics build every spec here; the block engine
(:mod:`nldist.scores.block`) and :mod:`nldist.graph` only read it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.models import as_model
from nldist.models.base import Model
from nldist.scores.backends import check_device
from nldist.scores.kinds import Kind, get_kind
from nldist.scores.rows import RebuildCost, SketchedRows


@dataclass(frozen=True)
class ScoreSpec:
    """Everything a block needs: the kind, its rows, and where and how R is computed.

    Attributes
    ----------
    kind : Kind
    rows : DualRows, DataRows, RawRows, SketchedRows or None (uniform)
    qr_method : str
        How pass 1 computes each block's R: ``"auto"`` (condition-based choice between
        CholeskyQR, CholeskyQR2, shifted CholeskyQR3 and Householder) or one of those; see
        :mod:`nldist.scores.linalg`.
    device : str
        Where the R and leverage work runs (:mod:`nldist.scores.backends`): ``"numpy"``,
        ``"cpu"``, ``"cuda"``/``"cuda:N"`` or ``"auto"``. The matrix block itself is built on
        the host either way.
    """

    kind: Kind
    rows: Any
    qr_method: str = "auto"
    device: str = "numpy"

    @property
    def name(self) -> str:
        return self.kind.name

    @property
    def reduction(self) -> Any:
        return self.kind.reduction

    def matrix(self, X: np.ndarray, y: np.ndarray | None, offset: int = 0
               ) -> np.ndarray | None:
        """The block of the matrix whose row scores are wanted (None for uniform):
        (n_b * group, q) for rows ``offset .. offset + n_b - 1``."""
        return None if self.rows is None else self.rows.matrix(X, y, offset)

    @property
    def group(self) -> int:
        """Matrix rows per example (C or k of the block kinds, else 1)."""
        return 1 if self.rows is None else int(self.rows.group)

    @property
    def needs_y(self) -> bool:
        return self.rows is not None and self.rows.needs_y

    @property
    def persistable(self) -> bool:
        """Pass 1 may persist the block for pass 2: a model's dual block or a sketched
        matrix; never a copy of X (linear kinds) or uniform scores."""
        return self.rows is not None and self.rows.persistable

    @property
    def rebuild_cost(self) -> RebuildCost | None:
        """What building the matrix again costs (:class:`nldist.scores.rows.Rows`):
        ``"copy"`` (linear kinds), ``"closed_form"`` (closed-form models) or ``"costly"``;
        None for uniform scores (no matrix)."""
        return None if self.rows is None else self.rows.rebuild_cost

    def n_cols(self, d: int) -> int:
        """Columns q of the matrix for X with d columns (0 for uniform)."""
        return 0 if self.rows is None else self.rows.n_cols(d)


def make_spec(
    kind: str | Kind,
    model: Model | str | None,
    theta: Any,
    n_features: int,
    has_y: bool,
    linear_augment_y: bool = False,
    *,
    loss: str | None = None,
    sketch: Any = None,
    device: str = "numpy",
    seed: int = 0,
    y_cols: int = 1,
) -> ScoreSpec:
    """Validate the score arguments once and bundle them for the block kernels.

    Parameters
    ----------
    kind : str or Kind
    model : Model, spec str or None
        Needed for nonlinear kinds (built with ``n_features`` from a spec); for linear
        kinds it decides the bias column.
    theta : array-like (p,) or None
        Parameters of nonlinear kinds (default zeros).
    n_features : int
    has_y : bool
        Labels are given (nonlinear kinds then use the augmented dual).
    linear_augment_y : bool
        Append y to the data matrix of the linear kinds.
    loss : str or None
        Residuals of the nonlinear kinds (:mod:`nldist.models.losses`); None: squared, or
        cross_entropy for a C-output model.
    sketch : nldist.options.SketchOptions, optional
        With ``cols``: project each row to that many columns (:class:`SketchedRows`).
    device : str
        Where the passes' R and leverage work runs (:mod:`nldist.scores.backends`).
    seed : int
        Seed of the block sketch's signs (``block-sketch:k``; the job's random state).
    y_cols : int
        Columns of y: C for the targets of a C-output model with squared loss (multi-output
        regression), else 1.

    Returns
    -------
    ScoreSpec
    """
    k = get_kind(kind)
    if model is not None:
        model = as_model(model, n_features)
    if k.nonlinear:
        if model is None:
            raise NldistError(f"kind {k.name!r} needs a model; pass model='glm:sigmoid' (or "
                              "another spec) and theta")
        if model.n_features != n_features:
            raise NldistError(
                f"model {model.spec!r} was built for {model.n_features} features but X has "
                f"{n_features} columns; rebuild it with n_features={n_features}"
            )
        theta = model.check_theta(np.zeros(model.n_params) if theta is None else theta)
    if loss is None:
        loss = "cross_entropy" if model is not None and model.n_outputs > 1 else "squared"
    rows = None if k.rows is None else k.rows(
        k, model, theta, has_y=has_y, loss=loss, linear_augment_y=linear_augment_y, seed=seed,
        y_cols=y_cols)
    if rows is not None and rows.group > 1 and sketch is not None and sketch.rows:
        raise NldistError(f"kind {k.name!r} has several rows per example; a row sketch "
                          "(sketch.rows) does not apply — use block-sketch:<k> or drop it")
    if sketch is not None and sketch.cols and rows is not None:
        rows = SketchedRows(rows, sketch)
    return ScoreSpec(k, rows, device=check_device(device))


def with_device(spec: ScoreSpec, device: str) -> ScoreSpec:
    """The spec with its R / leverage work on ``device``."""
    return spec if device == spec.device else replace(spec, device=check_device(device))
