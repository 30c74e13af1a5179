"""The score kinds: one registry, the only place a kind string means anything.

A kind is *which rows* (:mod:`nldist.scores.rows`: the model's dual matrix, the data matrix,
none) times *which reduction* (:mod:`nldist.scores.reductions`). Adding a kind is one row of
:data:`KINDS`; the job schema, the API, the passes and the report take it from here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.scores.reductions import (
    Leverage,
    ResponseAware,
    RidgeLeverage,
    SquaredNorm,
    Uniform,
)
from nldist.scores.rows import BlockRows, DataRows, DualRows, MarginRows


@dataclass(frozen=True)
class Kind:
    """A score kind.

    Attributes
    ----------
    name : str
        The kind string of jobs, the API and the outputs.
    rows : {"dual", "block", "margin", "data", None}
        The model's (augmented) dual matrix, the C rows per example of a C-output model's
        Fisher-weighted adjoint block, the adjoint of its margin, the data matrix
        [X, 1(, y)], or no matrix.
    reduction : Leverage, RidgeLeverage, SquaredNorm or Uniform
    summary : str
        One line for help texts and reports.
    """

    name: str
    rows: str | None
    reduction: Any
    summary: str
    #: k of ``block-sketch:k`` (combinations per example)
    k: int | None = None

    @property
    def nonlinear(self) -> bool:
        """Computed on the model's adjoints: needs a model and theta."""
        return self.rows in ("dual", "block", "margin")

    @property
    def multi_output(self) -> bool:
        """Only for C-output models (block and margin kinds)."""
        return self.rows in ("block", "margin")

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
        return self.rows == "block" and self.k is not None

    @property
    def response_aware(self) -> bool:
        """Weighs rows by their residual (:mod:`nldist.scores.oneread`): needs y, sampled in
        one read by ``select``; never stored by the two-pass engine."""
        return isinstance(self.reduction, ResponseAware)

    @property
    def ridge(self) -> bool:
        return bool(self.reduction.uses_ridge)

    def make_rows(self, model: Model | None, theta: np.ndarray | None, has_y: bool,
                  loss: str = "squared", linear_augment_y: bool = False, seed: int = 0) -> Any:
        """The :mod:`nldist.scores.rows` object of this kind for the given inputs."""
        if self.multi_output and (model is None or model.n_outputs < 2):
            raise NldistError(f"kind {self.name!r} is for models with C >= 2 outputs "
                              f"(softmax:<C>, mlp:<h>:<C>); {getattr(model, 'spec', None)!r} has "
                              "one — use nonlinear-leverage")
        if self.rows == "block":
            return BlockRows(model, theta, k=self.k, seed=seed,
                             loss="squared" if loss == "squared" else "cross_entropy")
        if self.rows == "margin":
            if loss == "squared":
                raise NldistError(f"kind {self.name!r} scores a classifier's margin; with "
                                  "loss: squared (multi-output regression) use "
                                  "nonlinear-leverage or block-leverage")
            if not has_y:
                raise NldistError(f"kind {self.name!r} needs labels y (the margin of the true "
                                  "class); pass y or use block-leverage (label-free)")
            return MarginRows(model, theta)
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
    Kind("block-leverage", "block", Leverage(),
         "C outputs: sum of the leverages of an example's C Fisher-weighted adjoint rows"),
    Kind("block-sketch", "block", Leverage(),
         "C outputs: block-leverage from k seeded sign combinations (block-sketch:k)", k=8),
    Kind("margin-leverage", "margin", Leverage(),
         "C outputs: leverage of the adjoint of the margin log(p_y / (1 - p_y))"),
    Kind("influence", "dual", ResponseAware("influence"),
         "|residual| x sqrt(leverage of the adjoint rows): optimal subsampling (needs y)"),
    Kind("influence-mix", "dual", ResponseAware("influence-mix"),
         "half influence, half nonlinear-leverage: robust where influence alone is not"),
    Kind("auto", "dual", ResponseAware("auto"),
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
