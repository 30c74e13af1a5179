"""Public Python API (DESIGN.md contract): adjoint, dual_matrix, leverage, scores, sample;
and the sample handed over to the user's own training (load_sample, to_torch)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nldist import graph, precond
from nldist._checks import check_finite_block, check_xy
from nldist.errors import NldistError
from nldist.models import as_model, get_model
from nldist.models.base import Model
from nldist.models.coded import CodedModel, Codes
from nldist.models.losses import get_loss, target_columns, targets
from nldist.options import (
    Alpha,
    PersistMode,
    Ridge,
    Rtol,
    SampleSize,
    SketchOptions,
    SplitEvery,
    check_params,
    make,
    params_model,
)
from nldist.scores import block, oneread, oneread_plan, sampling
from nldist.scores import sketch as sketch_mod
from nldist.scores.backends import check_device
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import block_r
from nldist.scores.rows import dual_block, output_dual_block
from nldist.scores.spec import make_spec
from nldist.store.dataset import read_attrs
from nldist.store.dual_blocks import temporary
from nldist.store.sample_table import BOOKKEEPING, read_sample_table

#: parameter constraints of the public functions (nldist.options, shared with the job schema)
_LEVERAGE = params_model("leverage", ridge=(Ridge, 0.0), rtol=(Rtol, None))
_SCORES = params_model("scores", ridge=(Ridge, 0.0), rtol=(Rtol, None),
                       split_every=(SplitEvery, 8), persist=(PersistMode, "auto"),
                       linear_augment_y=(bool, False))
_SAMPLE = params_model("sample", s=(SampleSize, ...), alpha=(Alpha, 0.0))


def _is_dask(a: Any) -> bool:
    return type(a).__module__.startswith("dask.")


def adjoint(model: Model, theta: Any, X: Any, y: Any = None, *, loss: str | None = None
            ) -> np.ndarray:
    """Nonlinear adjoint F*(theta): row i is int_0^1 grad f_i(t theta) dt.

    Parameters
    ----------
    model : Model, spec str or torch.nn.Module
        From :func:`nldist.get_model`, a spec, or a live module (its architecture and
        state_dict go to the workers; theta is then e.g. ``model_obj.initial_theta()`` or
        ``parameters_to_vector(module.parameters())``).
    theta : ndarray or torch.Tensor, shape (p,)
    X : ndarray, shape (n, d)
    y : ndarray (n,), optional
        Labels: with ``loss`` the adjoint of the residual r_i = r(f_i, y_i) instead
        (MATH.md §6; ``cross_entropy``: r_i = sqrt(CE_i) of a C-output model).
    loss : str, optional
        ``squared``, ``bce``, ``poisson`` or ``cross_entropy``; needs y.

    Returns
    -------
    ndarray, shape (n, p), float64
        Rows satisfy f_i(theta) = f_i(0) + <theta, F*_i> to rounding (MATH.md (ID)); with a
        loss, r_i(theta) = r_i(0) + <theta, r*_i>. A C-output model has no single adjoint
        row: use ``model.adjoint_block`` (n, C, p) or a loss.
    """
    model = as_model(model, _width(X))
    theta, X = model.check_theta(theta), model.check_X(X)
    if loss is None and y is None:
        if model.n_outputs > 1:
            raise NldistError(f"model {model.spec!r} has {model.n_outputs} outputs; pass y and "
                              "loss='cross_entropy' for the residual's adjoint, or use "
                              "model.adjoint_block(theta, X) for the (n, C, p) block")
        return model.adjoint(theta, X)
    lo = get_loss(loss or ("cross_entropy" if model.n_outputs > 1 else "squared"))
    yy = _labels(y, X.shape[0], model, lo.name)
    model.check_outputs(lo.name)
    if lo.name == "squared":
        return model.adjoint_block(theta, X) if model.n_outputs > 1 else model.adjoint(theta, X)
    lo.check(model.predict(theta, X), yy)
    return model.residual_adjoint(theta, X, yy, lo)


def _dataset_model(model: Any, X: Any, n_features: int) -> Any:
    """A spec string on a Zarr dataset path with coded categorical columns (attrs ``codes``):
    the model over the raw columns (:mod:`nldist.models.coded`), as the pipeline builds it;
    anything else as given. A plain Model of the raw width on such a dataset would read the
    codes as numbers: a one-line error naming the fix."""
    if not isinstance(X, (str, Path)):
        return model
    codes = Codes.from_attrs(read_attrs(X))
    if codes is None:
        return model
    if isinstance(model, str):
        return get_model(model, n_features, codes)
    if isinstance(model, Model) and not isinstance(model, CodedModel):
        raise NldistError(
            f"{X} stores {', '.join(codes.names)} as integer codes but model {model.spec!r} "
            "reads them as numbers; pass the spec string (the model is then built over the "
            "codes)")
    return model


def _width(X: Any) -> int:
    shape = np.shape(X)
    return int(shape[-1]) if len(shape) == 2 else 1


def _labels(y: Any, n: int, model: Model | None = None, loss: str | None = None
            ) -> np.ndarray:
    """y as float64 (n,) — or (n, C) for a C-output model with squared loss."""
    if y is not None and model is not None and model.n_outputs > 1 and loss == "squared":
        return targets(y, n, model.n_outputs)
    yy = None if y is None else np.asarray(y, dtype=np.float64).reshape(-1)
    if yy is None or yy.shape[0] != n:
        raise NldistError(
            f"y has {None if yy is None else yy.shape[0]} entries but X has {n} rows; "
            f"pass y of shape ({n},)"
        )
    return yy


def dual_matrix(model: Model, theta: Any, X: Any, y: Any, *, loss: str | None = None
                ) -> np.ndarray:
    """Augmented nonlinear dual matrix [F*(theta), f(0) - y] (or [r*(theta), r(0)]).

    Parameters
    ----------
    model : Model
    theta : ndarray (p,)
    X : ndarray (n, d)
    y : ndarray (n,)
    loss : str, optional
        ``squared`` (default for one output), ``bce``, ``poisson``, or ``cross_entropy``
        (default for a C-output model): then the rows are the residuals' adjoints and
        ``r(0)`` (MATH.md §6).

    Returns
    -------
    ndarray, shape (n, p + 1), float64, with ``dual @ [theta, 1] == f(theta) - y``
    (``r(theta)`` with a loss).
    """
    model = as_model(model, _width(X))
    X = model.check_X(X)
    lo = loss or ("cross_entropy" if model.n_outputs > 1 else "squared")
    get_loss(lo)
    model.check_outputs(lo)
    y = _labels(y, X.shape[0], model, lo)
    if model.n_outputs > 1 and lo == "squared":
        return output_dual_block(model, model.check_theta(theta), X, y)
    return dual_block(model, model.check_theta(theta), X, y, lo)


def leverage(A: Any, ridge: float = 0.0, *, rtol: float | None = None) -> Any:
    """Per-row leverage of a tall matrix A (n, q), from an R-only QR.

    Parameters
    ----------
    A : ndarray or dask array, shape (n, q)
    ridge : float, default 0
        With ridge lambda > 0 returns a_i^T (A^T A + lambda I)^-1 a_i.
    rtol : float, optional
        Relative singular-value threshold for the rank (default max(n, q) * eps).

    Returns
    -------
    ndarray or dask array, shape (n,), float64
        ||U_i||^2 for an orthonormal basis U of range(A): sums to rank(A) (to the effective
        dimension with ridge). Same container type as A.
    """
    check_params("leverage", _LEVERAGE, ridge=ridge, rtol=rtol)
    if _is_dask(A):
        return graph.passes.leverage_dask(A, ridge=ridge, rtol=rtol)
    A = np.asarray(A)
    if A.ndim != 2:
        raise NldistError(f"A must be 2-D (n, q), got shape {A.shape}")
    if A.shape[0] == 0:
        raise NldistError("A has no rows")
    check_finite_block(A, None)
    spec = graph.passes.raw_spec(ridge)
    norm = block.finalize_pass1(spec, block.pass1_block(A, None, spec), ridge=ridge, rtol=rtol)
    return block.pass2_block(A, None, spec, norm) * norm.total


def as_sketch(sketch: Any) -> SketchOptions | None:
    """None, :class:`nldist.options.SketchOptions`, or a dict of its fields -> options."""
    if sketch is None or isinstance(sketch, SketchOptions):
        return sketch
    if isinstance(sketch, dict):
        return make(SketchOptions, "sketch", **sketch)
    raise NldistError(f"sketch must be a dict like {{'rows': 2000, 'jl': 256}}, got {sketch!r}")


def scores(
    X: Any,
    y: Any = None,
    model: Model | str | None = None,
    theta: Any = None,
    kind: str = "nonlinear-leverage",
    ridge: float = 0.0,
    *,
    linear_augment_y: bool = False,
    rtol: float | None = None,
    split_every: int = 8,
    sketch: Any = None,
    persist: str = "auto",
    device: str = "numpy",
    loss: str | None = None,
    random_state: int = 0,
) -> Any:
    """Importance scores: a probability vector over rows (sums to 1).

    Parameters
    ----------
    X : ndarray, dask array (n, d), or str path of a Zarr dataset (its X and y)
    y : ndarray or dask array (n,), optional
        Labels. Without them nonlinear kinds use the unaugmented F* (label-free scores).
    model : Model or spec str
        Needed for nonlinear kinds; for linear kinds it decides the bias column.
    theta : ndarray or tensor (p,), optional
        Parameters at which the nonlinear scores are taken (default zeros).
    kind : str
        One of nonlinear-leverage, nonlinear-norm, linear-leverage, linear-norm, uniform,
        ridge-leverage; for C-output models (``softmax:<C>``, ``mlp:<h>:<C>``) also
        block-leverage, block-sketch:<k> and margin-leverage (README "Multi-class").
    ridge : float
        lambda for ``ridge-leverage``.
    linear_augment_y : bool
        Append y to the data matrix for the linear kinds.
    rtol : float, optional
        Rank threshold relative to the largest singular value (default max(n, q) * eps).
    split_every : int
        Fan-in of the R tree reduction (Dask input).
    sketch : nldist.options.SketchOptions or dict, optional
        Approximate scores: ``cols=k`` projects each dual row to k dims (large p);
        ``rows=r, jl=k`` takes R from an r-row CountSketch and the scores from a k-column
        JL projection (huge n, Drineas et al.). See :mod:`nldist.scores.sketch`.
    persist : {"auto", "never", "always"}
        Whether pass 1 keeps each chunk's dual block on disk for pass 2 instead of pass 2
        rebuilding it (:mod:`nldist.store.dual_blocks`): ``"auto"`` per chunk, when building the
        block took longer than a measured write + read of it (``torch:`` models by
        quadrature; closed forms rebuild faster). The blocks go to a temporary directory,
        removed when the result (for dask input: the returned array's graph) is released.
        Only the nonlinear kinds' exact scores use it; the scores are bit-identical either
        way.
    device : {"numpy", "cpu", "cuda", "cuda:N", "auto"}
        Where the exact scores' R factors and per-row leverages are computed
        (:mod:`nldist.scores.backends`): ``"numpy"`` (default) the NumPy/LAPACK kernels;
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` torch kernels on that device (float64, the
        same scores to about 1e-12 relative); ``"auto"`` cuda when the worker has one,
        else numpy. The dual block itself is built on the host (persisted blocks are the
        same bytes). Requesting cuda where torch sees none raises an NldistError.
    loss : str, optional
        Residuals of the nonlinear kinds: ``squared`` (default for one output), ``bce``,
        ``poisson``, ``cross_entropy`` (default for a C-output model: r_i = sqrt(CE_i)).
    random_state : int
        Seed of ``block-sketch:<k>``'s signs (a function of the seed and the row index).

    Returns
    -------
    ndarray (n,) float64 for ndarray input; a dask array (n,) otherwise (pass 1, which
    forms R, has already run; pass 2 is lazy).
    """
    check_params("scores", _SCORES, ridge=ridge, rtol=rtol, split_every=split_every,
                 persist=persist, linear_augment_y=linear_augment_y)
    check_device(device)
    sk = as_sketch(sketch)
    k = get_kind(kind)
    if sk is not None and sk.rows and not (k.leverage and not k.ridge):
        raise NldistError(f"a row sketch approximates leverage; kind {kind!r} does not need one "
                          "(drop sketch.rows or use a leverage kind)")
    if k.ridge and (ridge <= 0 or not np.isfinite(ridge)):
        raise NldistError(f"kind {kind!r} needs ridge > 0, got {ridge!r}")
    if k.response_aware:
        if y is None:
            raise NldistError(f"kind {kind!r} weighs rows by their residual and needs y")
        oneread.mix_columns(np.ones((1, 2)), k.name)  # auto: the one-line error
    if not (isinstance(X, str) or _is_dask(X) or _is_dask(y)):
        Xa = np.asarray(X)
        y_cols = check_xy(Xa, y, None)
        ya = None if y is None else targets(y, Xa.shape[0], y_cols) if y_cols > 1 \
            else np.asarray(y, dtype=np.float64).reshape(-1)
        spec = make_spec(k, model, theta, Xa.shape[1], ya is not None, linear_augment_y,
                         loss=loss, sketch=sk, device=device, seed=random_state, y_cols=y_cols)
        if k.response_aware:
            lev = replace(spec, kind=get_kind("nonlinear-leverage"))
            norm = block.finalize_pass1(lev, block.pass1_block(Xa, ya, lev, 0, None, 0),
                                        rtol=rtol)
            fac = oneread.factor_from_r(norm.factor.R, Xa.shape[0])
            return oneread.mix_columns(oneread.row_scores(
                Xa, ya, rows=spec.rows, theta=spec.rows.theta, fac=fac), k.name)
        if sk is not None and sk.rows:
            PiA = sketch_mod.rowsketch_block(Xa, ya, spec.rows, sk, 0)
            M, _ = sketch_mod.jl_factor(block_r(PiA), sk.jl, sk.seed)
            raw = sketch_mod.jl_scores_block(Xa, ya, spec.rows, M)
            return raw / raw.sum()
        store = temporary(persist) if persist != "never" and spec.persistable else None
        try:
            stats = block.pass1_block(Xa, ya, spec, 0, store, 0)
            norm = block.finalize_pass1(spec, stats, ridge=ridge, rtol=rtol)
            return block.pass2_block(Xa, ya, spec, norm, store, 0)
        finally:
            if store is not None:
                store.owner.cleanup()
    dX, dy = graph.inputs.as_dask_xy(X, y, y_cols=None)
    model = _dataset_model(model, X, int(dX.shape[1]))
    spec = make_spec(k, model, theta, dX.shape[1], dy is not None, linear_augment_y,
                     loss=loss, sketch=sk, device=device, seed=random_state,
                     y_cols=target_columns(dy))
    if k.response_aware:
        lev = replace(spec, kind=get_kind("nonlinear-leverage"))
        norm = graph.passes.pass1(dX, dy, lev, rtol=rtol, split_every=split_every)
        fac = oneread.factor_from_r(norm.factor.R, int(dX.shape[0]))
        return oneread.mix_columns(graph.passes.row_scores(dX, dy, rows=spec.rows,
                                                    theta=spec.rows.theta, fac=fac), k.name)
    if sk is not None and sk.rows:
        return graph.passes.rowsketch_scores(dX, dy, spec, sk, split_every)[0]
    store = temporary(persist) if persist != "never" and spec.persistable else None
    norm = graph.passes.pass1(dX, dy, spec, ridge=ridge, rtol=rtol, split_every=split_every,
                       store=store)
    if store is not None and not (norm.persist or {}).get("persisted"):
        store.owner.cleanup()  # nothing persisted: pass 2 rebuilds every block
        store = None
    return graph.passes.pass2(dX, dy, spec, norm, store=store)


def sample(
    probs: Any, s: int, random_state: Any = 0, *, alpha: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """Draw s row indices i.i.d. with replacement, P(i) = pi_i, and importance weights.

    Parameters
    ----------
    probs : ndarray or dask array (n,)
        Nonnegative scores (normalized internally).
    s : int
        Sample size.
    random_state : int, SeedSequence or Generator
        The same seed gives the same indices for any chunking of probs.
    alpha : float in [0, 1]
        Defensive mixture pi = (1 - alpha) probs + alpha / n (weights <= n / (alpha s)).

    Returns
    -------
    indices : ndarray (s,) int64
    weights : ndarray (s,) float64, 1 / (s pi_i)
    """
    check_params("sample", _SAMPLE, s=s, alpha=alpha)
    if _is_dask(probs):
        return graph.draws.sample_blocks(probs, s, random_state, alpha)
    return sampling.sample_array(probs, s, random_state, alpha)


def select_sample(
    X: Any, y: Any, model: Model | str, theta: Any, s: int | None = None, *,
    target_error: float | None = None, kind: str = "auto", loss: str | None = None,
    pilot_rows: int = 10_000, random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """A weighted sample of exactly s rows (or of the size ``target_error`` needs) drawn in
    ONE read of X against a uniform pilot's factor (``nldist select``'s sampler, MATH.md §9).

    Parameters
    ----------
    X : ndarray or dask array of shape (n, d), or a Zarr dataset path
    y : ndarray or dask array of shape (n,) (or (n, C) for multi-output regression)
    model : Model or spec str
    theta : array-like of shape (p,)
        Where the scores are taken (a pilot's theta_0, or any other).
    s : int, optional
        Sample size (give s or ``target_error``).
    target_error : float in (0, 1), optional
        The smallest s whose predicted relative error of the full-data loss is at most this.
    kind : {"auto", "influence-mix", "influence", "nonlinear-leverage", "uniform"}
        ``auto``: the candidate with the lowest trusted prediction (default: influence-mix).
    loss : str, optional
        As :func:`scores`.
    pilot_rows : int
        Uniform rows (seeded) behind the factor (a gather of those rows for dask input).
    random_state : int
        Seed of the pilot and of every row's inclusion uniform (chunking-invariant).

    Returns
    -------
    indices : ndarray of shape (s,) int64, sorted
    weights : ndarray of shape (s,) float64, Horvitz–Thompson weights
    info : dict — the distribution used and why, every candidate's predicted error, sizes
    """
    if kind not in oneread.ONE_READ_KINDS:
        raise NldistError(f"kind {kind!r} is not sampled in one read; use one of "
                          f"{', '.join(oneread.ONE_READ_KINDS)} (or nldist.scores + "
                          "nldist.sample)")
    if y is None:
        raise NldistError("select_sample weighs rows by their residual and needs y")
    if not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise NldistError(f"random_state must be an int >= 0, got {random_state!r}")
    if not isinstance(pilot_rows, (int, np.integer)) or pilot_rows < 1:
        raise NldistError(f"pilot_rows must be an int >= 1, got {pilot_rows!r}")
    dX, dy = graph.inputs.as_dask_xy(X, y, y_cols=None)
    n = int(dX.shape[0])
    model = _dataset_model(model, X, int(dX.shape[1]))
    spec = make_spec("nonlinear-leverage", model, theta, dX.shape[1], True, loss=loss,
                     y_cols=target_columns(dy))
    rows, th = spec.rows, spec.rows.theta
    pick = np.sort(np.random.default_rng([int(random_state), 0x9170]).choice(
        n, size=min(int(pilot_rows), n), replace=False))
    Xp, yp = graph.draws.gather_rows(dX, dy, pick)
    Dp = rows.matrix(Xp, yp, 0)  # the pilot's dual rows, built once (a quadrature for torch)
    fac = oneread.factor(Dp, n, m=pick.size)
    fac, rates, _, heavy = oneread_plan.plan(Dp, th, fac, rows.group, kind, s,
                                             target_error)
    got = graph.passes.one_read_pass(dX, dy, rows=rows, theta=th, fac=fac, rates=rates,
                                     seed=int(random_state), heavy=heavy)
    keep, w, info = oneread_plan.conclude(got, kind, s, target_error, rates, int(random_state),
                                     int(th.size), n)
    return got["idx"][keep], w, info


# --------------------------------------------------------------------------------------
# The sample handed over to the user's own training
# --------------------------------------------------------------------------------------


class Sample:
    """A sample written by ``nldist select`` / ``nldist run`` (``OUT/sample.parquet``),
    ready for the user's own training.

    Attributes
    ----------
    X : ndarray (m, d)
        The distinct sampled rows, features as trained (``original`` for original units).
    y : ndarray (m,), or (m, C) for a multi-output regression
    sample_weight : ndarray (m,)
        multiplicity x 1/(s pi): pass to scikit-learn's ``fit(..., sample_weight=)`` or
        multiply a per-row torch loss by it; Σ sample_weight · ℓ is the sampled estimate of
        the full-data loss Σ_i ℓ_i.
    weight, multiplicity, row : ndarray (m,)
        Per-draw weight 1/(s pi), number of draws, dataset row index.
    features : list of str
    codes : dict
        Categorical columns stored as integer codes (more levels than the ingest's
        ``onehot_max_levels``): name -> levels, level ``levels[c]`` for code c. Their column
        of ``X`` holds the code, not a number to regress on: :meth:`onehot` gives the
        design the model was fitted on; ``frame["<name>__orig"]`` the level (a pandas
        Categorical, for scikit-learn's OneHotEncoder).
    meta : dict
        kind, s, seed, alpha, n, model, dataset.
    """

    def __init__(self, frame: Any, meta: dict) -> None:
        self.frame, self.meta = frame, meta
        self.features = list(meta["features"])
        col = {name: name for name in BOOKKEEPING} | meta.get("columns", {})
        self.X = frame[self.features].to_numpy(np.float64)
        self.y = frame[col["y"]].to_numpy(np.float64)  # (m,), or (m, C): a column list
        self.row = frame[col["row"]].to_numpy(np.int64)
        self.weight = frame[col["weight"]].to_numpy(np.float64)
        self.multiplicity = frame[col["multiplicity"]].to_numpy(np.int64)
        self.sample_weight = frame[col["sample_weight"]].to_numpy(np.float64)
        self.codes = {f: list(frame[f"{f}__orig"].cat.categories) for f in self.features
                      if f"{f}__orig" in frame
                      and isinstance(frame[f"{f}__orig"].dtype, pd.CategoricalDtype)}

    def onehot(self) -> np.ndarray:
        """X with each coded column as its one-hot columns, first level dropped (m, d0 +
        sum(L - 1)): the design nldist's model was fitted on (theta without the bias, in the
        same order), for scikit-learn's ``fit(S.onehot(), S.y, sample_weight=...)``. X
        itself when nothing is coded."""
        if not self.codes:
            return self.X
        if list(self.codes) != self.features[-len(self.codes):]:
            raise NldistError(f"the coded columns {list(self.codes)} are not the last features "
                              f"{self.features}; run the job again to rewrite the sample")
        codes = Codes(tuple(len(v) for v in self.codes.values()), tuple(self.codes))
        return get_model("linear", len(self.features), codes).expand(self.X)

    def __len__(self) -> int:
        return len(self.row)

    def __repr__(self) -> str:
        m = self.meta
        n = m.get("n")
        of = f" of {n:,}" if isinstance(n, int) else ""
        draws = f"s={m['s']} draws, " if m.get("s") is not None else ""
        what = ", ".join(f"{k} {m[k]}" for k in ("model", "seed") if m.get(k) is not None)
        return (f"<nldist.Sample: {len(self):,} distinct rows{of} ({draws}"
                f"{m.get('kind', 'kind ?')}), {len(self.features)} features"
                f"{', ' + what if what else ''}; sample_weight sums to "
                f"{self.sample_weight.sum():,.6g}>")

    @property
    def original(self) -> np.ndarray | None:
        """Features in original units (m, d), when ingest standardized them (a coded
        column: its code, as in ``X``)."""
        if not any(f"{f}__orig" in self.frame for f in self.features if f not in self.codes):
            return None
        cols = [f if f in self.codes else f"{f}__orig" for f in self.features]  # codes as X
        return self.frame[cols].to_numpy(np.float64)

    def to_torch(self, dtype: Any = None) -> Any:
        """A ``torch.utils.data.TensorDataset`` of (x, y, sample_weight) per distinct row;
        for a weighted loss ``(w * loss_fn(model(x), y, reduction="none")).sum()``, or
        ``torch.utils.data.WeightedRandomSampler(self.sample_weight, ...)``."""
        import torch

        dt = dtype or torch.float32
        return torch.utils.data.TensorDataset(*(torch.tensor(np.array(a), dtype=dt) for a in
                                                (self.X, self.y, self.sample_weight)))


def load_sample(path: Any) -> Sample:
    """The sample of a finished run: ``OUT`` or ``OUT/sample.parquet`` -> :class:`Sample`."""
    frame, meta = read_sample_table(path)
    try:
        return Sample(frame, meta)
    except (KeyError, TypeError, ValueError) as exc:
        raise NldistError(f"{path} is a damaged nldist sample ({type(exc).__name__}: {exc}: a "
                          "column or metadata field is missing); run the job again to rewrite "
                          "it") from None


def to_torch(path: Any, dtype: Any = None) -> Any:
    """``load_sample(path).to_torch(dtype)``: a torch Dataset yielding (x, y, weight)."""
    return load_sample(path).to_torch(dtype)


def fit(
    X: Any, y: Any, model: Model | str, theta0: Any = None, *, rows: Any = None,
    s: int | None = None, kind: str = "nonlinear-leverage", radius: float = 10.0,
    loss: str | None = None, xtol: float = precond.XTOL, max_iter: int = 100,
    split_every: int = 8, random_state: int = 0,
) -> dict:
    """The full-data optimum over ``||theta|| <= radius`` with exact full-data gradients (one
    distributed pass each, n p work per row) and a leverage sample's Gauss-Newton matrix as
    the Hessian (``nldist fit``'s preconditioned method, MATH.md §9; :func:`nldist.precond.
    fit_precond`: a step that raises the full loss is rejected, never taken).

    Parameters
    ----------
    X : ndarray (n, d), dask array or Zarr path; y : (n,) (or (n, C) for multi-output)
    model : Model, spec string or torch.nn.Module
    theta0 : ndarray (p,), optional
        Start (e.g. a pilot's fit); default the model's starting point.
    rows : (indices (s,), weights (s,)), optional
        The preconditioning sample; default ``s`` rows drawn by ``kind`` scores at theta0
        (:func:`scores`, :func:`sample`; s default max(1000, 4 p)).
    loss : str, optional
        ``squared`` (default for one output), ``bce``, ``poisson``, ``cross_entropy``
        (default for a C-output model with labels).
    xtol : float
        Relative tolerance of the sample-Newton step (the stopping rule).
    max_iter : int
        Most passes after the first.

    Returns
    -------
    dict: ``theta``, ``loss``, ``grad_norm``, ``passes``, ``iterations``, ``converged``,
    ``reason``, ``history`` (per accepted step), ``indices`` and ``weights`` of the sample
    """
    dX, dy = graph.inputs.as_dask_xy(X, y, y_cols=None)
    m = as_model(_dataset_model(model, X, int(dX.shape[1])), int(dX.shape[1]))
    if dy is None:
        raise NldistError("fit needs y (the targets of the full-data loss)")
    if loss is None:
        loss = "cross_entropy" if m.n_outputs > 1 and target_columns(dy) == 1 else "squared"
    m.check_outputs(loss)
    theta0 = m.initial_theta() if theta0 is None else m.check_theta(theta0)
    if rows is None:
        probs = scores(dX, dy, m, theta0, kind=kind, loss=loss, split_every=split_every,
                       random_state=random_state)
        idx, w = sample(probs, s or max(1000, 4 * m.n_params), random_state)
    else:
        idx, w = (np.asarray(rows[0], dtype=np.int64), np.asarray(rows[1], dtype=np.float64))
    Xs, ys = graph.draws.gather_rows(dX, dy, idx)

    def full(theta: np.ndarray) -> dict:
        return graph.oracles.grad_pass(dX, dy, m, theta, split_every, loss=loss)

    res = precond.fit_precond(full, precond.sample_gn(m, Xs, ys, w, loss), theta0, radius,
                              xtol=xtol, max_iter=max_iter)
    return {"theta": res.theta, "loss": res.loss, "grad_norm": res.grad_norm,
            "passes": res.passes, "iterations": res.iterations, "converged": res.converged,
            "reason": res.reason, "history": res.history, "indices": idx, "weights": w}
