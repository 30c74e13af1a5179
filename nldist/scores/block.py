"""The block engine: pass 1 and pass 2 of exact scores on one row block (pure NumPy, no Dask).

A :class:`nldist.scores.spec.ScoreSpec` is a kind (:mod:`nldist.scores.kinds`) bound to its
rows (:mod:`nldist.scores.rows`: which matrix) and the options of the passes; its reduction
(:mod:`nldist.scores.reductions`) says how a block is reduced. The O(n q²) work runs on an
injected backend (:mod:`nldist.scores.backends`, from ``spec.device`` on the worker), and a
persisted dual block travels from pass 1 to pass 2 through an optional ``store`` (a sink in
pass 1, a source in pass 2) with this interface — :class:`nldist.store.dual_blocks.DualStore`
is the one implementation; nothing here imports it:

* ``store.mode`` — ``"always"`` or ``"auto"``;
* ``store.available()`` — the store is visible on this machine;
* ``store.decide(rows, q, build_s)`` -> (persist?, estimated write + read seconds);
* ``store.write(index, A)`` -> seconds or None (not persisted);
* ``store.iter_block(index, n, q, slices)`` -> ``(slice, A[slice])`` pairs, raising
  ``FileNotFoundError`` (never persisted) or :class:`nldist.errors.BadBlock` (damaged).

:mod:`nldist.graph` maps :func:`pass1_block` over blocks, reduces with
:func:`combine_pass1` in a tree, finalizes with :func:`finalize_pass1` on the driver and maps
:func:`pass2_block`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from nldist._budget import slices as _row_slices
from nldist._budget import sub_rows
from nldist._checks import check_finite_block
from nldist._runtime import reuse_freed_memory
from nldist.errors import BadBlock, NldistError
from nldist.scores import linalg, sampling
from nldist.scores.backends import backend
from nldist.scores.reductions import Normalizer
from nldist.scores.spec import ScoreSpec

log = logging.getLogger("nldist")


def _slices(n: int, q: int, group: int = 1) -> list[slice]:
    """Row slices of about :data:`nldist._budget.SUB_BYTES` of a (n * group, q) float64
    matrix (slices of examples; ``group`` matrix rows each)."""
    return _row_slices(n, max(1, sub_rows(max(q, 1)) // max(group, 1)))


#: the width a slice of never-formed rows is sized by: about their nonzeros squared
#: (:class:`nldist.scores.sparse.FixedRows`: the work of a row is K² gathers, K ~ 8)
STRUCTURED_SLICE_WIDTH = 64


def _slice_width(spec: ScoreSpec, q: int) -> int:
    """q for rows formed as a dense block; a fixed small width for rows that are never
    formed (coded categoricals: a slice of q = 5,000 columns would be 256 rows)."""
    return STRUCTURED_SLICE_WIDTH if spec.rows is not None and spec.rows.gram_only else q


def _grow(s: slice, g: int) -> slice:
    """The matrix rows of the examples in ``s`` (``g`` rows each)."""
    return s if g == 1 else slice(s.start * g, s.stop * g)


def _per_example(v: np.ndarray, g: int) -> np.ndarray:
    """Row values (n * g,) summed per example (n,)."""
    return v if g == 1 else v.reshape(-1, g).sum(axis=1)


def _sl(y: np.ndarray | None, s: slice) -> np.ndarray | None:
    return None if y is None else y[s]


def empty_stats() -> dict:
    """Pass-1 persist statistics of no chunk (summed by :func:`combine_stats`)."""
    return {"chunks": 0, "persisted": 0, "bytes": 0, "build_s": 0.0, "io_est_s": 0.0,
            "write_s": 0.0, "unavailable": 0}


def combine_stats(parts: list[dict | None]) -> dict | None:
    """Sum per-chunk persist statistics (None when no chunk had any)."""
    got = [p for p in parts if p]
    if not got:
        return None
    out = empty_stats()
    for p in got:
        for k in out:
            out[k] += p.get(k, 0)
    return out


def pass1_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, offset: int = 0,
    store: Any = None, index: int = 0,
) -> dict:
    """Pass 1 on one block: the block's R (leverage kinds), squared Frobenius norm, row count.

    The matrix block (dual or data matrix) is built in cache-sized row slices and reduced at
    once (Gram ``AᵀA`` for leverage kinds, squared norms otherwise) by the backend's
    reducer, so in the common case it is never held whole. Finiteness of the input is
    checked through the reduced values (a NaN/inf row makes them non-finite; then the block
    is scanned for the one-line error). The block's R comes from the backend's ``block_r``
    (:func:`nldist.scores.linalg.block_r_method`) with ``spec.qr_method``: in the common
    well-conditioned case straight from the Cholesky factor of the Gram; otherwise the
    whole block is needed for CholeskyQR2 / shifted CholeskyQR3 / Householder: it is rebuilt
    when that is cheap (``spec.rebuild_cost`` ``"copy"`` or ``"closed_form"``), else kept
    from the slices. The persisted block is the host block: the same bytes for every device.
    Runs with :func:`nldist._runtime.reuse_freed_memory`.

    Parameters
    ----------
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
    spec : ScoreSpec
    offset : int
        First row of the block (for error messages).
    store : DualStore-like, optional
        Persist the block for pass 2 (``spec.persistable`` specs only). ``store.mode``
        ``"always"`` writes it; ``"auto"`` times the building of the block and writes it
        only when that exceeds the measured cost of writing and reading it back
        (``store.decide``). Models whose block is not otherwise kept (closed forms) are
        decided after the first slice, from its time extrapolated to the block.
    index : int
        Chunk index of the block (its name in the store).

    Returns
    -------
    dict with keys ``R`` ((q, q) or None), ``fro2`` (float), ``n`` (int), ``methods``
    (dict: QR method name -> number of blocks), ``persist`` (None without a store; else
    counts and seconds, see :func:`empty_stats`)
    """
    with reuse_freed_memory():
        return _pass1_block(X, y, spec, offset, store, index)


def _pass1_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, offset: int = 0,
    store: Any = None, index: int = 0,
) -> dict:
    X = np.asarray(X)
    yy = y if spec.needs_y else None
    n = int(X.shape[0])
    out: dict[str, Any] = {"R": None, "fro2": 0.0, "n": n, "methods": {}, "persist": None}
    q = spec.n_cols(X.shape[1])
    red = spec.reduction
    if not red.matrix or q == 0:
        check_finite_block(X, yy, offset)
        return out
    g = spec.group
    be = backend(spec.device)
    acc = be.reducer(q, gram=red.gram)
    keep = red.gram and spec.rebuild_cost == "costly"
    mode = store.mode if store is not None and spec.persistable and n else "never"
    full = np.empty((n * g, q), dtype=np.float64) if keep or mode == "always" else None
    early = mode == "auto" and full is None  # auto without a kept block: decide on slice 1
    persist = mode == "always"
    io_est = None
    build_s = 0.0
    host_gram = be.host_gram and red.gram and spec.rows.gram_direct
    any_dtype = spec.rows.gram_any_dtype
    for s in _slices(n, _slice_width(spec, q), g):
        Xs = X[s]
        # a model sees the slice: NaN/inf first (a copy of X is checked through its Gram)
        if spec.rebuild_cost != "copy" and not np.isfinite(Xs).all():
            check_finite_block(X, yy, offset)
        with np.errstate(over="ignore", invalid="ignore"):  # checked below
            if host_gram and (Xs.dtype == np.float64 or any_dtype):
                # [X, 1, y] without the copy; softmax blocks from their Kronecker structure
                spec.rows.add_gram(acc.G, Xs, _sl(yy, s), offset + s.start)
                continue
            t0 = time.perf_counter()
            A = spec.matrix(Xs, _sl(yy, s), offset + s.start)
            build_s += time.perf_counter() - t0
            if early:  # extrapolate the first slice's time to the block
                early = False
                persist, io_est = store.decide(n * g, q, build_s * n / (s.stop - s.start))
                if persist:
                    full = np.empty((n * g, q), dtype=np.float64)
            if full is not None:
                full[_grow(s, g)] = A
            acc.add(A)
    value = acc.value()  # the Gram (red.gram) or ‖A_b‖_F²
    finite = bool(np.isfinite(value).all())
    if not finite:
        check_finite_block(X, yy, offset)  # raises for NaN/inf in X or y
    out.update(red.close_block(
        value, finite, spec=spec, rows=n * g, offset=offset, n=n, be=be,
        # (not the persisted copy: same bits)
        block=lambda: full if keep else spec.matrix(X, yy, offset)))
    if mode != "never":
        if mode == "auto" and keep:  # the whole block's build time is known now
            persist, io_est = store.decide(n * g, q, build_s)
        stats = empty_stats()
        stats.update(chunks=1, build_s=build_s, io_est_s=io_est or 0.0)
        if persist and full is not None:
            wrote = store.write(index, full)
            if wrote is None:
                stats["unavailable"] = 1
            else:
                stats.update(persisted=1, bytes=int(full.nbytes), write_s=wrote)
        elif not store.available():
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
    return {
        "R": linalg.combine_r(Rs) if Rs else None,
        "fro2": float(sum(p["fro2"] for p in parts)),
        "n": int(sum(p["n"] for p in parts)),
        "methods": methods,
        "persist": combine_stats([p.get("persist") for p in parts]),
    }


def finalize_pass1(spec: ScoreSpec, stats: dict, ridge: float = 0.0, rtol: float | None = None
                   ) -> Normalizer:
    """Turn reduced pass-1 stats into a :class:`Normalizer`, with one-line errors."""
    if stats["n"] == 0:
        raise NldistError("the data have no rows; check the dataset path and any row filter")
    norm = spec.reduction.finalize(spec.name, stats, ridge, rtol)
    if norm.qr_methods is not None:
        log.debug("pass 1: block R by %s", norm.qr_methods)
    return norm


def pass2_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    store: Any = None, index: int = 0, offset: int = 0,
) -> np.ndarray:
    """Pass 2 on one block: the block's probabilities (n_b,), float64, summing to 1 globally.

    The matrix block is read back from ``store`` when pass 1 persisted it (and it passes its
    checks), else rebuilt in cache-sized row slices; each slice is reduced to its row values
    by the reduction on the backend (leverage: one GEMM with R⁻¹ or a TRSM with R per
    slice, :func:`nldist.scores.linalg.row_leverage`). Both ways give the same bits: the
    same slices of the same float64 values. Runs with
    :func:`nldist._runtime.reuse_freed_memory`.

    Parameters
    ----------
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
    spec : ScoreSpec
    norm : Normalizer
        Pass 1's result.
    store : DualStore-like, optional
        Where pass 1 may have persisted this block.
    index : int
        Chunk index of the block.
    offset : int
        Global index of the block's first row (seeds of the block sketch).

    Returns
    -------
    ndarray (n_b,) float64 (per example: the sum of its ``spec.group`` rows' values)
    """
    with reuse_freed_memory():
        return _pass2_block(X, y, spec, norm, store, index, offset)


def _pass2_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    store: Any = None, index: int = 0, offset: int = 0,
) -> np.ndarray:
    X = np.asarray(X)
    n = int(X.shape[0])
    if not spec.reduction.matrix:
        return spec.reduction.constant_rows(n, norm)
    yy = y if spec.needs_y else None
    q = spec.n_cols(X.shape[1])
    slices = _slices(n, _slice_width(spec, q), spec.group)
    out = None
    be = backend(spec.device)
    if store is not None and spec.persistable and n:
        out = _pass2_persisted(store, index, n, q, slices, spec, norm, be)
    if out is None:
        out = _pass2_rebuild(X, yy, spec, norm, slices, be, offset)
    out /= norm.total
    return out


def _pass2_persisted(
    store: Any, index: int, n: int, q: int, slices: list[slice], spec: ScoreSpec,
    norm: Normalizer, be: Any,
) -> np.ndarray | None:
    """Row values of a persisted block, or None (not persisted, or failed its check)."""
    out = np.empty(n, dtype=np.float64)
    g = spec.group
    try:
        for s, A in store.iter_block(index, n * g, q, [_grow(s, g) for s in slices]):
            out[slice(s.start // g, s.stop // g)] = _per_example(
                spec.reduction.rows(A, norm, be, True), g)
    except FileNotFoundError:
        return None
    except BadBlock as exc:
        log.warning("persisted dual block %d: %s; rebuilding it from X", index, exc)
        return None
    return out


def _pass2_rebuild(
    X: np.ndarray, yy: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    slices: list[slice], be: Any, offset: int = 0,
) -> np.ndarray:
    """Row values of a block rebuilt from X slice by slice."""
    n = int(X.shape[0])
    out = np.empty(n, dtype=np.float64)
    # one slice buffer for the whole block: dask workers run with MALLOC_TRIM_THRESHOLD_
    # set, so a fresh (slice, q) array per slice costs page faults (about doubles pass 2)
    if (spec.rows.structured and spec.reduction.gram and be.host_gram
            and not linalg.zero_leverage(n, norm.factor)):  # softmax blocks: no rows formed
        P = (linalg.leverage_factor if spec.rows.quad_factor else linalg.leverage_form)(
            norm.factor)
        for s in slices:
            out[s] = spec.rows.row_values(X[s], _sl(yy, s), offset + s.start, P)
        return out
    buffered = spec.rows.fills_buffer
    if buffered:  # data rows: [X, 1, y] into one buffer
        buf = np.empty((slices[0].stop - slices[0].start, spec.n_cols(X.shape[1])))
    for s in slices:
        Xs = X[s]
        if buffered:
            A = spec.rows.matrix(Xs, _sl(yy, s), out=buf)
        else:
            A = spec.matrix(Xs, _sl(yy, s), offset + s.start)
            if spec.persistable:  # the layout a persisted block has (same reduction bits)
                A = np.ascontiguousarray(A, dtype=np.float64)
        out[s] = _per_example(spec.reduction.rows(A, norm, be, not np.shares_memory(A, Xs)),
                              spec.group)
    return out


# --------------------------------------------------------------------------------------
# the fused pass: chunk masses from pass 1, then pass 2 + sampling + gather in one read
# --------------------------------------------------------------------------------------


def part_mass(part: dict, spec: ScoreSpec, norm: Normalizer) -> float:
    """The sum of one block's pass-2 values (before dividing by ``norm.total``), from its
    pass-1 result alone — no second read of the block.

    Every reduction's row value is ``‖a_i M‖²`` for a matrix M fixed by the normalizer (R⁻¹,
    V_r/s_r, the ridge factor's inverse, or I for norms), and the block's R satisfies
    ``R_bᵀR_b = A_bᵀA_b``, so ``Σ_{i∈b} ‖a_i M‖² = ‖A_b M‖_F² = ‖R_b M‖_F²``: the row
    values of the (q, q) R_b summed. Norm kinds keep ``‖A_b‖_F²`` itself; uniform counts rows.
    Equal to the sum of the block's pass-2 values up to rounding (about q·eps relative).

    Parameters
    ----------
    part : dict
        :func:`pass1_block`'s result for the block.
    spec : ScoreSpec
    norm : Normalizer
        The global pass-1 result.

    Returns
    -------
    float
    """
    return spec.reduction.mass(part, norm, lambda: backend(spec.device))


def sample_block(
    X: np.ndarray, y: np.ndarray | None, spec: ScoreSpec, norm: Normalizer,
    parts: list[int], u: np.ndarray, *, alpha: float, first_index: int = 0,
    store: Any = None, eval_rate: float = 0.0, eval_seed: int = 0, offset: int = 0,
    sink: Any = None,
) -> dict:
    """Pass 2, the chunk's share of the sample and its evaluation rows, in one read.

    The block's probabilities come from :func:`pass2_block` on each of its ``parts`` (the
    row splits pass 1 used, so the values are the bits of the unfused pass 2); the draws
    are inverse-CDF draws (:func:`nldist.scores.sampling.draw_in_block`) of the chunk's own
    targets ``u`` against its probabilities mixed with the defensive ``alpha``.

    Parameters
    ----------
    X : ndarray (n_b, d)
    y : ndarray (n_b,) or None
    spec, norm : as :func:`pass2_block`
    parts : list of int
        Row counts of the block's parts (sum n_b); part j is persisted-store block
        ``first_index + j``.
    u : ndarray (k,)
        The chunk's targets in [0, its mixed mass), from the driver.
    alpha : float
        Defensive mixture weight: pi_i = (1 - alpha) p_i + alpha / n.
    eval_rate, eval_seed : float, int
        Row i (global ``offset + local``) joins the evaluation sample when its seeded
        hash uniform is below ``eval_rate`` (Bernoulli sampling, independent of chunking).
    sink : callable, optional
        ``sink(p_block)`` stores the block's probabilities (the scores output); its small
        result is returned as ``"stored"``.

    Returns
    -------
    dict with ``idx`` (k,) local row of each target, ``pi`` (k,) its mixed probability,
    ``X`` (k, d), ``y`` (k,) or None, ``eval_idx`` (m,) local rows, ``eval_X``, ``eval_y``,
    ``stored``.
    """
    X = np.asarray(X)
    n_b = int(X.shape[0])
    p = np.empty(n_b, dtype=np.float64)
    start = 0
    for j, rows in enumerate(parts):
        sl = slice(start, start + rows)
        p[sl] = pass2_block(X[sl], _sl(y, sl), spec, norm, store, first_index + j,
                            offset + start)
        start += rows
    stored = sink(p) if sink is not None else None
    pi = sampling.mixture(p, alpha, norm.n)
    out: dict[str, Any] = {"idx": np.empty(0, np.int64), "pi": np.empty(0), "stored": stored}
    if np.size(u):
        idx, pv = sampling.draw_in_block(pi, np.asarray(u, dtype=np.float64))
        out.update(idx=idx, pi=pv)
    out["X"] = X[out["idx"]]
    out["y"] = None if y is None else np.asarray(y)[out["idx"]]
    ev = sampling.bernoulli_index(offset, n_b, eval_rate, eval_seed)
    out.update(eval_idx=ev, eval_X=X[ev], eval_y=None if y is None else np.asarray(y)[ev])
    return out
