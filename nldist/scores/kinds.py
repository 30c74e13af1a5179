"""The score kinds: one registry, the only place a kind string means anything.

A kind is *which rows* (:mod:`nldist.scores.rows`: the model's dual matrix, the data matrix,
none) times *which reduction* (:mod:`nldist.scores.reductions`). Adding a kind is one row of
:data:`KINDS`; the job schema, the API, the passes and the report take it from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.scores.reductions import Leverage, RidgeLeverage, SquaredNorm, Uniform
from nldist.scores.rows import DataRows, DualRows


@dataclass(frozen=True)
class Kind:
    """A score kind.

    Attributes
    ----------
    name : str
        The kind string of jobs, the API and the outputs.
    rows : {"dual", "data", None}
        The model's (augmented) dual matrix, the data matrix [X, 1(, y)], or no matrix.
    reduction : Leverage, RidgeLeverage, SquaredNorm or Uniform
    summary : str
        One line for help texts and reports.
    """

    name: str
    rows: str | None
    reduction: Any
    summary: str

    @property
    def nonlinear(self) -> bool:
        """Computed on the model's dual matrix: needs a model and theta."""
        return self.rows == "dual"

    @property
    def leverage(self) -> bool:
        """Exact leverage from an R-only QR (a row sketch may approximate it)."""
        return isinstance(self.reduction, Leverage)

    @property
    def uniform(self) -> bool:
        return self.rows is None

    @property
    def ridge(self) -> bool:
        return bool(self.reduction.uses_ridge)

    def make_rows(self, model: Model | None, theta: np.ndarray | None, has_y: bool,
                  loss: str = "squared", linear_augment_y: bool = False) -> Any:
        """The :mod:`nldist.scores.rows` object of this kind for the given inputs."""
        if self.rows == "dual":
            return DualRows(model, theta, use_y=has_y, loss=loss)
        if self.rows == "data":
            bias = model.has_bias if isinstance(model, Model) else True
            return DataRows(bias=bias, use_y=has_y and linear_augment_y)
        return None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("nonlinear-leverage", "dual", Leverage(),
         "leverage of the nonlinear dual matrix [F*(theta), f(0) - y]"),
    Kind("nonlinear-norm", "dual", SquaredNorm(), "squared row norm of the same dual matrix"),
    Kind("linear-leverage", "data", Leverage(), "leverage of the data matrix [X, 1]"),
    Kind("linear-norm", "data", SquaredNorm(), "squared row norm of [X, 1]"),
    Kind("uniform", None, Uniform(), "1/n for every row"),
    Kind("ridge-leverage", "dual", RidgeLeverage(),
         "ridge leverage a_i^T (A^T A + lambda I)^-1 a_i of the dual matrix"),
)}
#: the kind strings, in registry order
NAMES: tuple[str, ...] = tuple(KINDS)
#: the type of a kind string (job schema, API parameters)
KindName = Literal[NAMES]  # type: ignore[valid-type]


def get_kind(name: str | Kind) -> Kind:
    """The :class:`Kind` of ``name``, or a one-line error listing the kinds."""
    if isinstance(name, Kind):
        return name
    if name not in KINDS:
        raise NldistError(f"unknown score kind {name!r}; use one of {', '.join(NAMES)}")
    return KINDS[name]
