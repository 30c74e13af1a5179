"""Option constraints, declared once (pydantic) and shared by the job schema and the API.

* :class:`SketchOptions` — approximate scores (``sketch:`` of a job, ``sketch=`` of
  :func:`nldist.scores`, :mod:`nldist.scores.sketch`);
* :class:`IngestOptions` — how a source becomes X and y (the ``ingest`` verb, ``dataset:``
  of a job, :func:`nldist.ingest.ingest`); its :meth:`~IngestOptions.digest` keys the ingest;
* :class:`AdjointOptions` — the quadrature engine (``adjoint:`` of a job,
  ``model.configure(...)``, :mod:`nldist.models.quadrature`);
* annotated scalar types (:data:`SampleSize`, :data:`Ridge`, :data:`Alpha`, ...) that the
  job schema's fields and the API's parameters both use;
* :func:`check_params` — validate a function's parameters against those declarations
  with scikit-learn style one-line errors ("The 's' parameter of sample must be an int
  in the range [1, inf). Got 0 instead."), and :func:`format_error` — the one-line form of
  a job file's validation error.

A leaf: imports pydantic and :mod:`nldist.errors` only.
"""

from __future__ import annotations

import hashlib
import json
import types
import typing
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    model_validator,
)

from nldist.errors import NldistError

PersistMode = Literal["never", "always", "auto"]
SampleSize = Annotated[int, Field(gt=0, description="sample size")]
Ridge = Annotated[float, Field(ge=0, allow_inf_nan=False,
                               description="ridge lambda of ridge-leverage")]
Alpha = Annotated[float, Field(ge=0, le=1, description="defensive mixture weight")]
SplitEvery = Annotated[int, Field(ge=2, description="fan-in of the R tree reduction")]
Rtol = Annotated[float | None, Field(None, gt=0, lt=1, description="rank threshold "
                                     "relative to the largest singular value")]


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SketchOptions(_Options):
    """Approximate scores (see :mod:`nldist.scores.sketch`)."""

    cols: int | None = Field(None, gt=0, description="project dual rows to k dims (large p)")
    rows: int | None = Field(None, gt=0, description="CountSketch rows r for R (huge n)")
    jl: int = Field(256, gt=0, description="JL dimension of the row-sketch scores")
    nnz: int = Field(4, gt=0, description="nonzeros per row of the column sketch")
    seed: int = Field(0, ge=0)


class IngestOptions(_Options):
    """How a source becomes numeric X (n, d) and y (n,): the settings of every ingest — the
    ``ingest`` verb, a job's ``dataset:`` section (:class:`nldist.jobs.DatasetConfig` adds
    the source and its format) and :func:`nldist.ingest.ingest` / ``ingest_table`` /
    ``prepare`` / ``table_view``. :meth:`digest` is the ingest's reuse key (with the
    source's fingerprint)."""

    target: str | None = Field(None, description="target column (default: the dataset's)")
    features: list[str] | None = Field(
        None, validation_alias=AliasChoices("features", "columns"),
        description="feature columns (alias: columns; default: all but the target)")
    classes: list[str | int | float] | None = Field(
        None, description="keep these target values, mapped to 0..k-1 in this order (two for "
        "bce, k for cross_entropy)")
    standardize: bool = Field(False, description="standardize features (recorded in attrs)")
    standardize_target: bool = False
    dropna: bool = False
    chunk_rows: int | None = Field(None, gt=0, description="rows per Zarr chunk (~32 MiB)")
    dtype: Literal["float32", "float64"] = "float64"
    onehot_max_levels: int = Field(
        32, ge=1, description="a text column with more levels (airports, product ids) is "
        "stored as one column of integer codes, not one-hot columns")

    @model_validator(mode="after")
    def _classes(self) -> IngestOptions:
        c = self.classes
        if c is not None:
            if len(c) < 2 or len(set(map(str, c))) != len(c):
                raise ValueError(f"classes must name two or more distinct target values, got "
                                 f"{c!r}")
            if self.standardize_target and len(c) > 2:
                raise ValueError(f"{len(c)} classes are labels 0..{len(c) - 1}, not a number "
                                 "to standardize; drop standardize_target")
        return self

    def ingest_options(self) -> IngestOptions:
        """These settings as :class:`IngestOptions` (a subclass's extra fields left out)."""
        if type(self) is IngestOptions:
            return self
        return IngestOptions(**self.model_dump(include=set(IngestOptions.model_fields)))

    def digest(self) -> str:
        """SHA-256 (32 hex digits) of the settings: what an ingest's output depends on
        besides its source and the write's reservoir."""
        data = self.ingest_options().model_dump()
        return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()
                              ).hexdigest()[:32]

    @classmethod
    def of(cls, func: str, options: IngestOptions | None = None, **settings: Any
           ) -> IngestOptions:
        """The settings of a call of ``func``: ``options``, or the keyword ``settings``
        validated (one-line errors, scikit-learn's form), not both."""
        if options is not None:
            if settings:
                raise NldistError(f"{func}: give the settings as options= or as keywords "
                                  f"({', '.join(settings)}), not both")
            return options.ingest_options()
        unknown = sorted(set(settings) - set(cls.model_fields) - {"columns"})
        if unknown:
            raise NldistError(f"{func} got unknown setting(s) {', '.join(unknown)}; the "
                              f"settings are {', '.join(cls.model_fields)}")
        try:
            return cls.model_validate({k: _plain(v) for k, v in settings.items()})
        except ValidationError as exc:
            err = exc.errors()[0]
            if err["type"] == "value_error":  # our own validators' messages, as written
                raise NldistError(err["msg"].removeprefix("Value error, ")) from None
        return check_params(func, cls, **settings)


class AdjointOptions(_Options):
    """Settings of the quadrature engine for models without a closed-form adjoint
    (``torch:`` specs); they travel with the model to the workers."""

    q: int = Field(2, gt=0, le=256, description="Gauss-Legendre nodes per piece of the "
                   "first per-row check (q vs 2q nodes, the 2q value kept when its error "
                   "estimate is below tol; else 2q vs 4q, ...)")
    q_max: int = Field(64, gt=0, le=512, description="most nodes per piece a row may escalate "
                       "to (2q <= q_max)")
    tol: float | None = Field(None, gt=0, lt=1, description="relative (ID) tolerance "
                              "(default 1e-10 in float64, 1e-5 in float32)")
    dtype: Literal["float64", "float32"] = Field(
        "float64", description="arithmetic of the torch evaluation (float32: faster, "
        "(ID) to ~1e-5)")
    batch_rows: int = Field(1024, gt=0, description="rows per vectorized batch (every "
                            "decision is per row: the result does not depend on it)")
    max_elems: int = Field(1 << 22, gt=0, description="floats one vectorized evaluation may "
                           "materialize (rows x nodes x p); sets the per-worker memory")
    kinks: bool = Field(True, description="locate ReLU-type breakpoints along the ray")
    max_depth: int = Field(48, ge=0, description="bisection levels of the refinement")
    accuracy: Literal["exact", "sampling"] = Field(
        "exact", description="exact: (ID) to tol with the q-vs-2q checks, breakpoints and "
        "refinement | sampling: a fixed sampling_q-node Gauss-Legendre rule on [0, 1] in "
        "float32, no checks — leverage good to a constant factor, which is all sampling "
        "needs (the default of `nldist select`); diagnostics and the paper protocol use exact")
    sampling_q: int = Field(3, gt=0, le=64, description="nodes of the sampling-accuracy rule")

    @model_validator(mode="after")
    def _order(self) -> AdjointOptions:
        if 2 * self.q > self.q_max:
            raise ValueError(f"needs 2q <= q_max, got q={self.q}, q_max={self.q_max}")
        return self

    @property
    def rtol(self) -> float:
        """The tolerance in force (default depends on dtype)."""
        if self.tol is not None:
            return float(self.tol)
        return 1e-10 if self.dtype == "float64" else 1e-5


def make(cls: type[BaseModel], where: str, **values: Any) -> Any:
    """``cls(**values)`` with a one-line NldistError naming the field on bad input."""
    try:
        return cls(**values)
    except ValidationError as exc:
        raise NldistError(format_error(where, exc)) from None


# --------------------------------------------------------------------------------------
# errors: the job file's one-line form and scikit-learn's parameter form
# --------------------------------------------------------------------------------------


def format_error(where: str, exc: ValidationError, allowed: Any = None) -> str:
    """``where: field.path: message (got value)`` for the first error (+ how many more).

    ``allowed(loc)`` lists the fields allowed at a location (for unknown-field errors).
    """
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = err["msg"]
    if err["type"] == "value_error" and msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]  # our own validators' messages, as written
    if err["type"] == "extra_forbidden" and allowed is not None:
        msg = f"unknown field; allowed here: {', '.join(allowed(err['loc'][:-1]))}"
    got = err.get("input")
    show = err["type"] != "missing" and not isinstance(got, dict)
    tail = f" (got {got!r})" if show else ""
    more = f" [+{len(exc.errors()) - 1} more]" if len(exc.errors()) > 1 else ""
    return f"{where}: {loc}: {msg}{tail}{more}"


_TYPE_WORDS = {"int": "an int", "float": "a float", "bool": "a bool", "str": "a str"}


def _range(field: Any) -> str | None:
    """``"an int in the range [1, inf)"`` from a field's annotated bounds, or None."""
    lo = hi = None
    lo_open = hi_open = True
    for m in getattr(field, "metadata", ()):
        for attr, is_lo, is_open in (("gt", True, True), ("ge", True, False),
                                     ("lt", False, True), ("le", False, False)):
            v = getattr(m, attr, None)
            if v is None:
                continue
            if is_lo:
                lo, lo_open = v, is_open
            else:
                hi, hi_open = v, is_open
    if lo is None and hi is None:
        return None
    ann = field.annotation
    # ``int | None`` (an optional int) is still an int
    integer = ann is int or (typing.get_origin(ann) in (Union, types.UnionType)
                             and set(typing.get_args(ann)) - {type(None)} == {int})
    if integer and lo is not None and lo_open:
        lo, lo_open = lo + 1, False
    left = "(-inf" if lo is None else ("(" if lo_open else "[") + f"{lo}"
    right = "inf)" if hi is None else f"{hi}" + (")" if hi_open else "]")
    return f"{'an int' if integer else 'a float'} in the range {left}, {right}"


def _constraint(err: dict, field: Any) -> str:
    t = err["type"]
    if t == "literal_error":
        return "a str among " + str((err.get("ctx") or {}).get("expected", "")).replace("'", "")
    bounded = _range(field) if field is not None else None
    if bounded is not None:
        return bounded
    if t == "finite_number":
        return "a finite float"
    if t.endswith("_type") or t.endswith("_parsing") or t.endswith("_from_bool"):
        return _TYPE_WORDS.get(t.split("_")[0], f"of type {t.split('_')[0]}")
    return err["msg"][0].lower() + err["msg"][1:]


def _plain(v: Any) -> Any:
    """A NumPy scalar as the Python scalar it holds (pydantic does not take np.int64)."""
    return v.item() if hasattr(v, "dtype") and getattr(v, "shape", None) == () else v


def check_params(func: str, model: type[BaseModel], **params: Any) -> BaseModel:
    """Validate ``params`` of public function ``func`` against ``model``.

    Raises
    ------
    NldistError
        For the first bad parameter, in scikit-learn's form, e.g. "The 's' parameter of
        sample must be an int in the range [1, inf). Got 0 instead."
    """
    try:
        return model.model_validate({k: _plain(v) for k, v in params.items()})
    except ValidationError as exc:
        err = exc.errors()[0]
        name = str(err["loc"][0]) if err["loc"] else "?"
        field = model.model_fields.get(name)
        raise NldistError(f"The {name!r} parameter of {func} must be "
                          f"{_constraint(err, field)}. Got {params.get(name)!r} instead."
                          ) from None


def params_model(name: str, **fields: Any) -> type[BaseModel]:
    """A pydantic model of a function's parameters: ``fields`` name -> (type, default)."""
    return create_model(name, __config__=ConfigDict(arbitrary_types_allowed=True), **fields)
