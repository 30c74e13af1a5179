"""Per-block kernels that combine a model with the linear algebra (pure NumPy, no Dask).

Each function takes one row block ``X_b`` (n_b, d), ``y_b`` (n_b,) and returns small
results: a (q, q) R factor, a few scalars, per-row scores for the block, or the pieces of
a Gauss-Newton step. :mod:`nldist.graph` maps them over blocks and reduces.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nldist import devkernels, heap, linalg
from nldist.errors import NldistError
from nldist.models import Model

log = logging.getLogger("nldist")

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
        ``"squared"`` (the block above) or another loss of :mod:`nldist.losses`: then
        ``[r*(theta), r(0)]`` for the residuals r_i = sign(f_i - y_i) sqrt(l_i) (MATH.md §6).

    Returns
    -------
    ndarray, shape (n_b, p + 1) or (n_b, p), float64
    """
    if loss != "squared" and y is not None:
        from nldist import losses

        return losses.dual_block(model, theta, X, y, loss)
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
    col_sketch : nldist.sketch.Sketch or None
        Project each row of the matrix to ``col_sketch.cols`` dims (large p).
    qr_method : str
        How pass 1 computes each block's R: ``"auto"`` (condition-based choice between
        CholeskyQR, CholeskyQR2, shifted CholeskyQR3 and Householder) or one of those; see
        :mod:`nldist.linalg`.
    loss : str
        ``"squared"`` or another loss of :mod:`nldist.losses` (nonlinear kinds).
    device : str
        Where the R and leverage work of the passes runs (:mod:`nldist.devkernels`):
        ``"numpy"`` (the NumPy kernels), ``"cpu"``, ``"cuda"``/``"cuda:N"`` (torch) or
        ``"auto"`` (cuda when the worker has one, else numpy). The matrix block itself is
        built on the host either way.
    """

    kind: str
    model: Model | None
    theta: np.ndarray | None
    use_y: bool = True
    linear_bias: bool = True
    raw: bool = False
    qr_method: str = "auto"
    col_sketch: Any = None
    loss: str = "squared"
    device: str = "numpy"

    def matrix(self, X: np.ndarray, y: np.ndarray | None) -> np.ndarray | None:
        """The block of the matrix whose row scores are wanted (None for uniform)."""
        if self.col_sketch is not None and self.kind != "uniform":
            from dataclasses import replace

            from nldist.sketch import sketched_matrix

            return sketched_matrix(replace(self, col_sketch=None), self.col_sketch, X, y)
        if self.raw:
            return np.asarray(X, dtype=np.float64)
        if self.kind in NONLINEAR_KINDS:
            return dual_block(self.model, self.theta, X, y if self.use_y else None, self.loss)
        if self.kind in ("linear-leverage", "linear-norm"):
            return linear_block(X, y if self.use_y else None, bias=self.linear_bias)
        return None

    @property
    def needs_y(self) -> bool:
        return self.use_y and not self.raw and self.kind != "uniform"

    @property
    def cheap(self) -> bool:
        """The matrix is a copy of X (plus bias/y columns): cheaper to rebuild than to keep."""
        if self.col_sketch is not None:
            return False
        return self.raw or self.kind in ("linear-leverage", "linear-norm")

    @property
    def persistable(self) -> bool:
        """Pass 1 may persist the block for pass 2 (:mod:`nldist.dualstore`): a model's dual
        block or a sketched matrix; never a copy of X (linear kinds) or uniform scores."""
        return not self.cheap and self.kind != "uniform"

    @property
    def cheap_to_rebuild(self) -> bool:
        """Rebuilding the matrix costs about a copy of X: linear kinds, closed-form models."""
        if self.cheap:
            return True
        from nldist.nets import uses_quadrature  # torch: models override adjoint, no closed form

        return self.model is not None and not uses_quadrature(self.model)

    def n_cols(self, d: int) -> int:
        """Columns q of the matrix for X with d columns (0 for uniform)."""
        if self.col_sketch is not None and self.kind != "uniform":
            return int(self.col_sketch.cols)
        if self.raw:
            return d
        if self.kind in NONLINEAR_KINDS:
            return self.model.n_params + int(self.use_y)
        if self.kind in ("linear-leverage", "linear-norm"):
            return d + int(self.linear_bias) + int(self.use_y)
        return 0


def _device(spec: ScoreSpec) -> str | None:
    """The torch device of ``spec.device`` on this worker, or None (NumPy kernels)."""
    return None if spec.device == "numpy" else devkernels.resolve(spec.device)


def _slices(n: int, q: int) -> list[slice]:
    """Row slices of about :data:`nldist.linalg.SUB_BYTES` of a (n, q) float64 matrix."""
    step = linalg.sub_rows(max(q, 1))
    return [slice(s, min(s + step, n)) for s in range(0, n, step)] or [slice(0, 0)]


def _sl(y: np.ndarray | None, s: slice) -> np.ndarray | None:
    return None if y is None else y[s]


def _add_linear_gram(G: np.ndarray, X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec):
    """G += AᵀA for A = [X, 1 (bias), y (augmented)] without forming A (saves a copy of X)."""
    d = X.shape[1]
    G[:d, :d] += X.T @ X
    extra = []
    if spec.linear_bias:
        extra.append(np.ones(X.shape[0]))
    if spec.use_y and y is not None:
        extra.append(np.asarray(y, dtype=np.float64))
    if not extra:
        return
    E = np.stack(extra)  # (k, n_s)
    XE = E @ X  # (k, d)
    G[d:, :d] += XE
    G[:d, d:] += XE.T
    G[d:, d:] += E @ E.T


def pass1_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, offset: int = 0,
    store: Any = None, index: int = 0,
) -> dict:
    """Pass 1 on one block: see :func:`_pass1_block` (run with :func:`heap.reuse_freed_memory`)."""
    with heap.reuse_freed_memory():
        return _pass1_block(X, y, spec, offset, store, index)


def _pass1_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, offset: int = 0,
    store: Any = None, index: int = 0,
) -> dict:
    """Pass 1 on one block: the block's R (leverage kinds), squared Frobenius norm, row count.

    The matrix block (dual or data matrix) is built in cache-sized row slices and reduced at
    once (Gram ``AᵀA`` for leverage kinds, squared norms otherwise), so in the common case it
    is never held whole. Finiteness of the input is checked through the reduced values (a
    NaN/inf row makes them non-finite; then the block is scanned for the one-line error). The
    block's R comes from :func:`nldist.linalg.block_r_method` with ``spec.qr_method``: in the
    common well-conditioned case straight from the Cholesky factor of the Gram; otherwise the
    whole block is needed for CholeskyQR2 / shifted CholeskyQR3 / Householder: it is rebuilt
    when that is cheap (linear kinds, closed-form adjoints), else kept from the slices.

    With ``spec.device`` other than ``"numpy"`` (:mod:`nldist.devkernels`) the slices are
    built the same way on the host, then reduced on the torch device (float64 Gram or
    squared norm, :class:`nldist.devkernels.Reducer`), and a block R that needs the whole
    block comes from :func:`nldist.devkernels.block_r` (CholeskyQR2 on the device). The
    persisted block is the host block: the same bytes for every device.

    Parameters
    ----------
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
    spec : ScoreSpec
    offset : int
        First row of the block (for error messages).
    store : nldist.dualstore.DualStore, optional
        Persist the block for pass 2 (``spec.persistable`` specs only). ``store.mode``
        ``"always"`` writes it; ``"auto"`` times the building of the block
        (``time.perf_counter`` around ``spec.matrix``) and writes it only when that exceeds
        the measured cost of writing and reading it back (:func:`nldist.dualstore.decide`).
        Models whose block is not otherwise kept (closed forms) are decided after the first
        slice, from its time extrapolated to the block.
    index : int
        Chunk index of the block (its name in the store).

    Returns
    -------
    dict with keys ``R`` ((q, q) or None), ``fro2`` (float), ``n`` (int), ``methods``
    (dict: QR method name -> number of blocks), ``persist`` (None without a store; else
    counts and seconds, see :func:`nldist.dualstore.empty_stats`)
    """
    from nldist import dualstore

    X = np.asarray(X)
    yy = y if spec.needs_y else None
    n = int(X.shape[0])
    out: dict[str, Any] = {"R": None, "fro2": 0.0, "n": n, "methods": {}, "persist": None}
    q = spec.n_cols(X.shape[1])
    if spec.kind == "uniform" or q == 0:
        check_finite_block(X, yy, offset)
        return out
    leverage = spec.kind in LEVERAGE_KINDS
    dev = _device(spec)
    acc = devkernels.Reducer(q, dev, gram=leverage) if dev is not None else None
    keep = leverage and not spec.cheap_to_rebuild
    mode = store.mode if store is not None and spec.persistable and n else "never"
    full = np.empty((n, q), dtype=np.float64) if keep or mode == "always" else None
    early = mode == "auto" and full is None  # auto without a kept block: decide on slice 1
    persist = mode == "always"
    io_est = None
    build_s = 0.0
    G = np.zeros((q, q)) if leverage else None
    fro2 = 0.0
    for s in _slices(n, q):
        Xs = X[s]
        if not spec.cheap and not np.isfinite(Xs).all():  # before the model sees it
            check_finite_block(X, yy, offset)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            if acc is None and leverage and spec.cheap and not spec.raw \
                    and Xs.dtype == np.float64:
                _add_linear_gram(G, Xs, _sl(yy, s), spec)  # [X, 1, y] without the copy
                continue
            t0 = time.perf_counter()
            A = spec.matrix(Xs, _sl(yy, s))
            build_s += time.perf_counter() - t0
            if early:  # extrapolate the first slice's time to the block
                early = False
                persist, io_est = dualstore.decide(store, n, q, build_s * n / (s.stop - s.start))
                if persist:
                    full = np.empty((n, q), dtype=np.float64)
            if full is not None:
                full[s] = A
            if acc is not None:  # Gram or squared norm on the device
                acc.add(A)
            elif leverage:
                G += A.T @ A
            else:
                fro2 += float(np.einsum("ij,ij->", A, A))
    if acc is not None:
        if leverage:
            G = acc.value()
        else:
            fro2 = acc.value()
    finite = bool(np.isfinite(G).all() if leverage else np.isfinite(fro2))
    if not finite:
        check_finite_block(X, yy, offset)  # raises for NaN/inf in X or y
    if not leverage:
        if not np.isfinite(fro2):
            raise NldistError(
                f"the matrix for {spec.kind} overflows in rows {offset}..{offset + n - 1}; "
                "rescale the data or check theta"
            )
        out["fro2"] = fro2
    else:
        R = linalg.cholqr_r(G) if finite and spec.qr_method == "auto" and n >= 4 * q else None
        method = "cholqr"
        if R is None:
            A = full if keep else spec.matrix(X, yy)  # (never the persisted copy: same bits)
            if not np.isfinite(A).all():
                raise NldistError(
                    f"the matrix for {spec.kind} has NaN/inf entries in rows {offset}.."
                    f"{offset + n - 1} although the data are finite (overflow in the model at "
                    "this theta?); rescale the data or check theta"
                )
            if dev is None:
                R, method = linalg.block_r_method(A, spec.qr_method, G=G if finite else None)
            else:
                R, method = devkernels.block_r(A, dev, spec.qr_method, G=G if finite else None)
        out["R"] = R
        out["methods"] = {method: 1}
    if mode != "never":
        if mode == "auto" and keep:  # the whole block's build time is known now
            persist, io_est = dualstore.decide(store, n, q, build_s)
        stats = dualstore.empty_stats()
        stats.update(chunks=1, build_s=build_s, io_est_s=io_est or 0.0)
        if persist and full is not None:
            wrote = dualstore.write_block(store, index, full)
            if wrote is None:
                stats["unavailable"] = 1
            else:
                stats.update(persisted=1, bytes=int(full.nbytes), write_s=wrote)
        elif not Path(store.path).is_dir():
            stats["unavailable"] = 1
        out["persist"] = stats
    return out


def combine_pass1(parts: list[dict]) -> dict:
    """Tree-reduction step for :func:`pass1_block` results."""
    Rs = [p["R"] for p in parts if p["R"] is not None]
    methods: dict[str, int] = {}
    for p in parts:
        for k, v in p.get("methods", {}).items():
            methods[k] = methods.get(k, 0) + v
    from nldist.dualstore import combine_stats

    return {
        "R": linalg.combine_r(Rs) if Rs else None,
        "fro2": float(sum(p["fro2"] for p in parts)),
        "n": int(sum(p["n"] for p in parts)),
        "methods": methods,
        "persist": combine_stats([p.get("persist") for p in parts]),
    }


@dataclass(frozen=True)
class Normalizer:
    """Global quantities pass 2 needs: the R factor (leverage kinds) and the normalizer.

    ``total`` is rank (leverage), effective dimension (ridge), ||A||_F^2 (norm) or n
    (uniform), so that block scores divided by it sum to 1 over all rows. ``persist`` holds
    pass 1's persisted-block statistics (:func:`nldist.dualstore.empty_stats`) or None.
    """

    kind: str
    n: int
    total: float
    factor: linalg.RFactor | None = None
    qr_methods: dict | None = None
    persist: dict | None = None

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
        methods = dict(stats.get("methods") or {})
        log.debug("pass 1: block R by %s", methods)
        return Normalizer(spec.kind, n, fac.total, fac, methods, stats.get("persist"))
    if stats["fro2"] <= 0:
        raise NldistError(f"the matrix for {spec.kind} is all zeros; scores are undefined")
    return Normalizer(spec.kind, n, stats["fro2"], persist=stats.get("persist"))


def pass2_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    store: Any = None, index: int = 0,
) -> np.ndarray:
    """Pass 2 on one block: see :func:`_pass2_block` (run with :func:`heap.reuse_freed_memory`)."""
    with heap.reuse_freed_memory():
        return _pass2_block(X, y, spec, norm, store, index)


def _pass2_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    store: Any = None, index: int = 0,
) -> np.ndarray:
    """Pass 2 on one block: the block's probabilities (n_b,), float64, summing to 1 globally.

    The matrix block is read back from ``store`` when pass 1 persisted it (and it passes its
    checks, :func:`nldist.dualstore.iter_block`), else rebuilt in cache-sized row slices;
    each slice is solved in place (``R⁻ᵀ a_i`` by BLAS TRSM) and reduced to its row norms.
    Both ways give the same bits: the same slices of the same float64 values. With
    ``spec.device`` other than ``"numpy"`` each slice's leverage (or squared norm) is
    computed on that torch device (:func:`nldist.devkernels.row_leverage`).

    Parameters
    ----------
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
    spec : ScoreSpec
    norm : Normalizer
        Pass 1's result.
    store : nldist.dualstore.DualStore, optional
        Where pass 1 may have persisted this block.
    index : int
        Chunk index of the block.

    Returns
    -------
    ndarray (n_b,) float64
    """
    X = np.asarray(X)
    n = int(X.shape[0])
    if spec.kind == "uniform":
        return np.full(n, 1.0 / norm.total)
    yy = y if spec.needs_y else None
    q = spec.n_cols(X.shape[1])
    slices = _slices(n, q)
    out = None
    dev = _device(spec)
    if store is not None and spec.persistable and n:
        out = _pass2_persisted(store, index, n, q, slices, norm, dev)
    if out is None:
        out = _pass2_rebuild(X, yy, spec, norm, slices, dev)
    out /= norm.total
    return out


def _reduce_rows(A: np.ndarray, norm: Normalizer, fresh: bool, dev: str | None = None
                 ) -> np.ndarray:
    if dev is not None:
        if norm.factor is None:
            return devkernels.row_sqnorms(A, dev)
        return devkernels.row_leverage(A, norm.factor, dev)
    if norm.factor is None:
        return linalg.row_sqnorms(A)
    return linalg.row_leverage(A, norm.factor, overwrite_a=fresh)


def _pass2_persisted(
    store: Any, index: int, n: int, q: int, slices: list[slice], norm: Normalizer,
    dev: str | None = None,
) -> np.ndarray | None:
    """Row values of a persisted block, or None (not persisted, or failed its check)."""
    from nldist import dualstore

    out = np.empty(n, dtype=np.float64)
    try:
        for s, A in dualstore.iter_block(store, index, n, q, slices):
            out[s] = _reduce_rows(A, norm, True, dev)
    except FileNotFoundError:
        return None
    except dualstore.BadBlock as exc:
        log.warning("persisted dual block %d: %s; rebuilding it from X", index, exc)
        return None
    return out


def _pass2_rebuild(
    X: np.ndarray, yy: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    slices: list[slice], dev: str | None = None,
) -> np.ndarray:
    """Row values of a block rebuilt from X slice by slice."""
    n = int(X.shape[0])
    out = np.empty(n, dtype=np.float64)
    # one slice buffer for the whole block: dask workers run with MALLOC_TRIM_THRESHOLD_
    # set, so a fresh (slice, q) array per slice costs page faults (about doubles pass 2)
    linear = spec.cheap and not spec.raw and spec.kind in ("linear-leverage", "linear-norm")
    if linear:
        ylin = yy if spec.use_y else None
        cols = X.shape[1] + int(spec.linear_bias) + int(ylin is not None)
        buf = np.empty((slices[0].stop - slices[0].start, cols))
    for s in slices:
        Xs = X[s]
        if linear:
            A = linear_block(Xs, _sl(ylin, s), spec.linear_bias, out=buf)
        else:
            A = spec.matrix(Xs, _sl(yy, s))
            if spec.persistable:  # the layout a persisted block has (same reduction bits)
                A = np.ascontiguousarray(A, dtype=np.float64)
        out[s] = _reduce_rows(A, norm, not np.shares_memory(A, Xs), dev)
    return out


# --------------------------------------------------------------------------------------
# Losses and Gauss-Newton pieces for training on the full data
# --------------------------------------------------------------------------------------


def gn_block(
    model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, offset: int = 0,
    loss: str = "squared",
) -> dict:
    """Loss, gradient and Gauss-Newton matrix of L = sum (f_i - y_i)^2 on one block.

    With another ``loss`` (:mod:`nldist.losses`) the same for L = sum r_i^2.

    Returns
    -------
    dict with ``loss`` (float), ``grad`` (p,), ``gn`` (p, p) = 2 J^T J
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    if loss != "squared":
        from nldist import losses

        return losses.gn_block(model, theta, X, y, loss)
    r = model.predict(theta, X) - np.asarray(y, dtype=np.float64)
    J = model.jacobian(theta, X)
    return {"loss": float(r @ r), "grad": 2.0 * (J.T @ r), "gn": 2.0 * (J.T @ J)}


def combine_sum(parts: list[dict]) -> dict:
    """Sum dicts of arrays/scalars key by key (tree-reduction step)."""
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def losses_block(
    model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str = "squared"
) -> np.ndarray:
    """Full-data squared loss contributions of several parameter vectors at once.

    With another ``loss`` (:mod:`nldist.losses`): sum_i r_i(theta_j)^2.

    Parameters
    ----------
    thetas : ndarray (m, p)

    Returns
    -------
    ndarray (m,): sum_i (f(theta_j; x_i) - y_i)^2 over the block's rows
    """
    if loss != "squared":
        from nldist import losses

        return losses.losses_block(model, thetas, X, y, loss)
    y = np.asarray(y, dtype=np.float64)
    out = np.empty(thetas.shape[0])
    for j, th in enumerate(thetas):
        r = model.predict(th, X) - y
        out[j] = r @ r
    return out
