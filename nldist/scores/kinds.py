"""The score kinds: one registry, the only place a kind string means anything.

A kind is *which rows* — a rows factory of this module (:data:`dual_rows`,
:data:`data_rows`, :data:`block_rows`, :data:`margin_rows`, or None for no matrix) that
checks its inputs and builds a :mod:`nldist.scores.rows` object — times *which reduction*
(:mod:`nldist.scores.reductions`). Adding a kind is one row of :data:`KINDS`; the job schema,
the API, the passes, the report and ``tests/test_kinds.py`` take it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.coded import CodedModel
from nldist.scores.reductions import (
    Leverage,
    ResponseAware,
    RidgeLeverage,
    SquaredNorm,
    Uniform,
)
from nldist.scores.rows import (
    BlockRows,
    CodedDataRows,
    DataRows,
    DualRows,
    MarginRows,
    Rows,
)


@dataclass(frozen=True)
class RowsFactory:
    """Which matrix a kind is computed on: called with the kind and its checked inputs, it
    raises the family's one-line errors (those about the kind and y's columns; each Rows
    class checks its own fields when built) and returns the :class:`nldist.scores.rows.Rows`.

    Attributes
    ----------
    family : str
        Its name (``"dual"``, ``"data"``, ``"block"``, ``"margin"``).
    nonlinear : bool
        Built on the model's adjoints: needs a model and theta.
    multi_output : bool
        Only for C-output models.
    """

    family: str
    nonlinear: bool = False
    multi_output: bool = False

    def __call__(self, kind: Kind, model: Model | None, theta: np.ndarray | None, *,
                 has_y: bool, loss: str, linear_augment_y: bool = False, seed: int = 0,
                 y_cols: int = 1) -> Rows:
        raise NotImplementedError

    def group(self, kind: Kind, model: Any) -> int:
        """Matrix rows per example a run plans for (C or k of the block kinds, else 1)."""
        return 1


def _one_target(kind: Kind, has_y: bool, y_cols: int) -> None:
    if has_y and y_cols > 1:
        raise NldistError(f"y has {y_cols} columns; kind {kind.name!r} takes one target "
                          "(multi-output regression: nonlinear-leverage or block-leverage "
                          "with a C-output model and loss='squared')")


def _model_targets(model: Model, has_y: bool, loss: str, y_cols: int) -> None:
    """The columns of y fit the model and the loss (nonlinear kinds)."""
    if not has_y:
        return
    want = model.n_outputs if model.n_outputs > 1 and loss == "squared" else 1
    if y_cols != want:
        raise NldistError(
            f"y has {y_cols} column(s) but model {model.spec!r} with loss {loss!r} takes "
            + (f"{want} (one per output)" if want > 1 else "one target per row")
            + ("; pass loss='squared' for multi-output regression"
               if y_cols > 1 and model.n_outputs == y_cols else "")
            + ("; for class labels use loss: cross_entropy" if want > 1 and y_cols == 1
               else ""))


def _c_outputs(kind: Kind, model: Model | None) -> None:
    if model is None or model.n_outputs < 2:
        raise NldistError(f"kind {kind.name!r} is for models with C >= 2 outputs "
                          f"(softmax:<C>, mlp:<h>:<C>); {getattr(model, 'spec', None)!r} has "
                          "one — use nonlinear-leverage")


@dataclass(frozen=True)
class _Dual(RowsFactory):
    def __call__(self, kind, model, theta, *, has_y, loss, linear_augment_y=False, seed=0,
                 y_cols=1):
        _model_targets(model, has_y, loss, y_cols)
        # DualRows checks theta, the loss against the model's outputs and the labels
        return DualRows(model, theta, use_y=has_y, loss=loss)


@dataclass(frozen=True)
class _Data(RowsFactory):
    def __call__(self, kind, model, theta, *, has_y, loss, linear_augment_y=False, seed=0,
                 y_cols=1):
        if linear_augment_y:
            _one_target(kind, has_y, y_cols)
        bias = model.has_bias if isinstance(model, Model) else True
        if isinstance(model, CodedModel):  # the one-hot design, not the codes as numbers
            return CodedDataRows(model, bias=bias, use_y=has_y and linear_augment_y)
        return DataRows(bias=bias, use_y=has_y and linear_augment_y)


@dataclass(frozen=True)
class _Block(RowsFactory):
    def __call__(self, kind, model, theta, *, has_y, loss, linear_augment_y=False, seed=0,
                 y_cols=1):
        _model_targets(model, has_y, loss, y_cols)
        _c_outputs(kind, model)
        return BlockRows(model, theta, k=kind.k, seed=seed,
                         loss="squared" if loss == "squared" else "cross_entropy")

    def group(self, kind: Kind, model: Any) -> int:
        return int(kind.k or model.n_outputs)


@dataclass(frozen=True)
class _Margin(RowsFactory):
    def __call__(self, kind, model, theta, *, has_y, loss, linear_augment_y=False, seed=0,
                 y_cols=1):
        _one_target(kind, has_y, y_cols)
        _model_targets(model, has_y, loss, y_cols)
        _c_outputs(kind, model)
        if loss == "squared":
            raise NldistError(f"kind {kind.name!r} scores a classifier's margin; with "
                              "loss: squared (multi-output regression) use "
                              "nonlinear-leverage or block-leverage")
        if not has_y:
            raise NldistError(f"kind {kind.name!r} needs labels y (the margin of the true "
                              "class); pass y or use block-leverage (label-free)")
        return MarginRows(model, theta)


#: the model's (augmented) dual matrix [F*(theta), f(0) - y] (:class:`DualRows`)
dual_rows: RowsFactory = _Dual("dual", nonlinear=True)
#: the data matrix [X, 1(, y)] (:class:`DataRows`)
data_rows: RowsFactory = _Data("data")
#: per example the C rows of a C-output model's Fisher-weighted adjoint block, or k seeded
#: combinations of them (:class:`BlockRows`)
block_rows: RowsFactory = _Block("block", nonlinear=True, multi_output=True)
#: the adjoint of a C-output model's margin log(p_y / (1 - p_y)) (:class:`MarginRows`)
margin_rows: RowsFactory = _Margin("margin", nonlinear=True, multi_output=True)


@dataclass(frozen=True)
class Kind:
    """A score kind.

    Attributes
    ----------
    name : str
        The kind string of jobs, the API and the outputs.
    rows : RowsFactory or None
        Which matrix: :data:`dual_rows`, :data:`block_rows`, :data:`margin_rows`,
        :data:`data_rows`, or None (no matrix).
    reduction : Leverage, RidgeLeverage, SquaredNorm, Uniform or ResponseAware
    summary : str
        One line for help texts and reports.
    """

    name: str
    rows: RowsFactory | None
    reduction: Any
    summary: str
    #: k of ``block-sketch:k`` (combinations per example)
    k: int | None = None

    @property
    def nonlinear(self) -> bool:
        """Computed on the model's adjoints: needs a model and theta."""
        return self.rows is not None and self.rows.nonlinear

    @property
    def multi_output(self) -> bool:
        """Only for C-output models (block and margin kinds)."""
        return self.rows is not None and self.rows.multi_output

    @property
    def leverage(self) -> bool:
        """Exact leverage from an R-only QR (a row sketch may approximate it)."""
        return isinstance(self.reduction, Leverage)

    @property
    def uniform(self) -> bool:
        return self.rows is None

    @property
    def seeded(self) -> bool:
        """The scores depend on the job's random state (the signs of ``block-sketch:k``)."""
        return self.rows is block_rows and self.k is not None

    @property
    def response_aware(self) -> bool:
        """Weighs rows by their residual (:mod:`nldist.scores.oneread`): needs y, sampled in
        one read by ``select``; never stored by the two-pass engine."""
        return isinstance(self.reduction, ResponseAware)

    @property
    def ridge(self) -> bool:
        return bool(self.reduction.uses_ridge)

    @property
    def depends_on(self) -> tuple[str, ...]:
        """What of a job its scores depend on, besides the kind, the model, the data and the
        row count: the ``"scores"`` entry of :data:`nldist.pipeline.stages.data.KEYS`
        narrowed to this kind (theta, the loss and the adjoints' settings for nonlinear
        kinds, ``linear_augment_y`` for the others, the ridge, the seed of seeded kinds,
        the sketch of any kind with a matrix)."""
        return tuple(name for name, on in (
            ("theta", self.nonlinear), ("loss", self.nonlinear), ("ridge", self.ridge),
            ("linear_augment_y", not self.nonlinear), ("sketch", not self.uniform),
            ("seed", self.seeded), ("adjoint", self.nonlinear)) if on)

    def group(self, model: Any) -> int:
        """Matrix rows per example a run plans for (C or k of the block kinds, else 1)."""
        return 1 if self.rows is None else self.rows.group(self, model)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("nonlinear-leverage", dual_rows, Leverage(),
         "leverage of the nonlinear dual matrix [F*(theta), f(0) - y]"),
    Kind("nonlinear-norm", dual_rows, SquaredNorm(), "squared row norm of the same dual matrix"),
    Kind("linear-leverage", data_rows, Leverage(), "leverage of the data matrix [X, 1]"),
    Kind("linear-norm", data_rows, SquaredNorm(), "squared row norm of [X, 1]"),
    Kind("uniform", None, Uniform(), "1/n for every row"),
    Kind("ridge-leverage", dual_rows, RidgeLeverage(),
         "ridge leverage a_i^T (A^T A + lambda I)^-1 a_i of the dual matrix"),
    Kind("block-leverage", block_rows, Leverage(),
         "C outputs: sum of the leverages of an example's C Fisher-weighted adjoint rows"),
    Kind("block-sketch", block_rows, Leverage(),
         "C outputs: block-leverage from k seeded sign combinations (block-sketch:k)", k=8),
    Kind("margin-leverage", margin_rows, Leverage(),
         "C outputs: leverage of the adjoint of the margin log(p_y / (1 - p_y))"),
    Kind("influence", dual_rows, ResponseAware("influence"),
         "|residual| x sqrt(leverage of the adjoint rows): optimal subsampling (needs y)"),
    Kind("influence-mix", dual_rows, ResponseAware("influence-mix"),
         "half influence, half nonlinear-leverage: robust where influence alone is not"),
    Kind("auto", dual_rows, ResponseAware("auto"),
         "select: the distribution with the lowest predicted error (guarded), in one read"),
)}
#: the kind strings, in registry order
NAMES: tuple[str, ...] = tuple(KINDS)
#: the type of a kind string (job schema, API parameters)
KindName = Literal[NAMES]  # type: ignore[valid-type]
_PARAM_RE = re.compile(r"^(?P<base>[a-z-]+):(?P<k>\d+)$")


def get_kind(name: str | Kind) -> Kind:
    """The :class:`Kind` of ``name`` (``block-sketch:16`` sets k), or a one-line error
    listing the kinds."""
    if isinstance(name, Kind):
        return name
    if isinstance(name, str):
        match = _PARAM_RE.match(name)
        if match and match["base"] in KINDS and KINDS[match["base"]].k is not None:
            k = int(match["k"])
            if k < 1:
                raise NldistError(f"{name!r}: k must be >= 1, e.g. block-sketch:8")
            return replace(KINDS[match["base"]], name=name, k=k)
    if name not in KINDS:
        raise NldistError(f"unknown score kind {name!r}; use one of {', '.join(NAMES)} "
                          "(block-sketch:<k> sets its k)")
    return KINDS[name]


def check_kind(name: str) -> str:
    """``name`` when it is a kind string (for schemas), else the one-line error."""
    get_kind(name)
    return name
