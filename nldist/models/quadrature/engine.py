"""The quadrature engine: :func:`integrate` a ray over t in [0, 1] per row (MATH.md §1).

Breakpoints of piecewise-linear ops located by Illinois regula falsi, Gauss-Legendre rules
of q and 2q nodes per piece compared per row (the adjoint's own error estimate), adaptive
bisection of the rows whose rules or (ID) residual still disagree; :class:`QuadInfo`
records what was done.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch

from nldist._runtime import use_worker_threads
from nldist.errors import NldistError
from nldist.models.gauss import gauss_legendre
from nldist.models.quadrature.rays import RayBase, row_chunks
from nldist.options import AdjointOptions

log = logging.getLogger("nldist")



# probe grid for breakpoints: geometric near 0 (roots of deeper layers' switches can sit
# close to 0), then uniform
_GRID = np.concatenate([[1e-9, 1e-6, 1e-3], np.arange(1, 17) / 16.0])


# --------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------


@dataclass
class QuadInfo:
    """Diagnostics of one :func:`integrate` call.

    Attributes
    ----------
    rows : int
    q : int
        Most nodes per piece any row was integrated with (2q unless rows escalated).
    kink_rows : int
        Rows with at least one located breakpoint.
    breakpoints : int
    escalated_rows : int
        Row recomputations with more than 2q nodes (their check failed; a row that
        escalates twice counts twice).
    refined_rows : int
        Rows sent to adaptive bisection.
    unconverged_rows : int
        Rows still above tol after refinement.
    max_rel_residual : float
        Largest relative (ID) residual over the rows (after refinement).
    probe_error : float
        Largest first q-vs-2q relative difference of a row (before escalation).
    """

    rows: int = 0
    q: int = 0
    kink_rows: int = 0
    breakpoints: int = 0
    escalated_rows: int = 0
    refined_rows: int = 0
    unconverged_rows: int = 0
    max_rel_residual: float = 0.0
    probe_error: float = 0.0


def id_residual(theta: torch.Tensor, F: torch.Tensor, f1: torch.Tensor, f0: torch.Tensor):
    """Relative (ID) residual per row and the scale it is relative to.

    Returns
    -------
    rel : tensor (m,) = |f(theta) - f(0) - <theta, F_i>| / scale_i
    scale : tensor (m,) = |f(theta)| + |f(0)| + sum_j |theta_j F_ij|
    """
    res = f1 - f0 - F @ theta
    scale = f1.abs() + f0.abs() + F.abs() @ theta.abs()
    tiny = torch.finfo(F.dtype).tiny
    return res.abs() / torch.clamp(scale, min=tiny), scale


def check_finite(name: str, v: torch.Tensor, rows: torch.Tensor) -> None:
    bad = ~torch.isfinite(v)
    if bad.ndim > 1:
        bad = bad.any(dim=1)
    if bool(bad.any()):
        first = int(rows[bad.nonzero()[0, 0]])
        raise NldistError(f"the model's {name} is NaN or inf for {int(bad.sum())} row(s) "
                          f"(first row {first}); check theta, the data and the model's forward")


def _pieces_grads(ray: RayBase, rows: torch.Tensor, pieces: list[np.ndarray], q: int):
    """sum over pieces of Gauss-Legendre(q) on each piece, per row: (m, p)."""
    dt = ray.theta.dtype
    t, w = gauss_legendre(q)
    counts = np.fromiter((len(pc) - 1 for pc in pieces), dtype=np.int64, count=len(pieces))
    out = ray.theta.new_empty((len(rows), ray.p))
    for c in np.unique(counts):
        sel = np.flatnonzero(counts == c)
        if c == 1:
            ends = np.array([pieces[i] for i in sel])
            if np.all(ends[:, 0] == 0.0) and np.all(ends[:, 1] == 1.0):
                out[sel] = ray.grads(rows[sel], torch.as_tensor(t, dtype=dt),
                                     torch.as_tensor(w, dtype=dt))
                continue
        P = np.array([pieces[i] for i in sel])  # (g, c + 1)
        a, h = P[:, :-1], np.diff(P, axis=1)
        T = (a[:, :, None] + h[:, :, None] * t).reshape(len(sel), -1)
        Wt = (h[:, :, None] * w).reshape(len(sel), -1)
        out[sel] = ray.grads(rows[sel], torch.as_tensor(T, dtype=dt), torch.as_tensor(Wt, dtype=dt))
    return out


def _illinois(ray: RayBase, rows: torch.Tensor, unit: np.ndarray, a: np.ndarray,
              b: np.ndarray, fa: np.ndarray, fb: np.ndarray, max_iter: int = 60) -> np.ndarray:
    """Roots of u(t) = switch_unit(t theta) / t in brackets [a, b] (Illinois regula falsi)."""
    dt = ray.theta.dtype
    a, b, fa, fb = a.copy(), b.copy(), fa.copy(), fb.copy()
    root = np.full(a.shape, np.nan)
    active = np.arange(a.size)
    eps = 4 * np.finfo(np.float64).eps
    for _ in range(max_iter):
        if active.size == 0:
            break
        A, B, FA, FB = a[active], b[active], fa[active], fb[active]
        with np.errstate(divide="ignore", invalid="ignore"):
            c = B - FB * (B - A) / (FB - FA)
        lo, hi = np.minimum(A, B), np.maximum(A, B)
        # the secant lands on an end: that end is a root to rounding (its value is ~0)
        hit = np.isfinite(c) & ~((c > lo) & (c < hi))
        if hit.any():
            root[active[hit]] = np.where(np.abs(FA[hit]) <= np.abs(FB[hit]), A[hit], B[hit])
            active, A, B, FA, FB, c = (v[~hit] for v in (active, A, B, FA, FB, c))
            if active.size == 0:
                break
        off = ~np.isfinite(c)
        c[off] = 0.5 * (A[off] + B[off])
        _, S = ray.values(rows[active], torch.as_tensor(c, dtype=dt), record=True)
        fc = S[torch.arange(active.size), torch.as_tensor(unit[active])].double().numpy() / c
        swap = fc * FB < 0
        # root in [c, B]: old B becomes the retained end; else keep A and halve its value
        newA = np.where(swap, B, A)
        newFA = np.where(swap, FB, 0.5 * FA)
        a[active], fa[active] = newA, newFA
        b[active], fb[active] = c, fc
        tiny = eps * np.maximum(np.abs(c), 1e-300)
        done = (fc == 0) | (np.abs(c - newA) <= tiny) | (np.abs(c - B) <= tiny) | \
            ~np.isfinite(fc)
        root[active[done]] = c[done]
        active = active[~done]
    if active.size:
        root[active] = 0.5 * (a[active] + b[active])
    return root


def _breakpoints(ray: RayBase, rows: torch.Tensor, opts: AdjointOptions, info: QuadInfo):
    """Per row, the sorted interior breakpoints along the ray (list of arrays) or None."""
    if ray.n_switches == 0:
        return None
    dt = ray.theta.dtype
    m, G = len(rows), _GRID.size
    grid = torch.as_tensor(_GRID, dtype=dt)
    roots: list[list[float]] = [[] for _ in range(m)]
    a0 = 0
    while a0 < m:
        H = ray.n_switches
        size = 8 if H is None else max(1, opts.max_elems // (G * max(H, 1) * 2))
        b0 = min(m, a0 + size)
        r = rows[a0:b0]
        k = b0 - a0
        a0 = b0
        _, S = ray.values(r.repeat_interleave(G), grid.repeat(k), record=True)
        ray.n_switches = H = S.shape[1]
        if H == 0:
            return None
        U = (S.reshape(k, G, H) / grid.reshape(1, G, 1)).double().numpy()
        cross = np.sign(U[:, :-1]) * np.sign(U[:, 1:]) < 0
        i, j, h = np.nonzero(cross)
        if i.size == 0:
            continue
        found = _illinois(ray, r[torch.as_tensor(i)], h, _GRID[j], _GRID[j + 1], U[i, j, h],
                          U[i, j + 1, h])
        for row, t in zip((i + b0 - k).tolist(), found.tolist(), strict=True):
            if 0.0 < t < 1.0:
                roots[row].append(t)
    out = []
    for rr in roots:
        if not rr:
            out.append(np.empty(0))
            continue
        s = np.sort(np.asarray(rr))
        keep = np.concatenate([[True], np.diff(s) > 1e-15])
        out.append(s[keep])
    info.kink_rows += sum(1 for o in out if o.size)
    info.breakpoints += sum(o.size for o in out)
    return out


def _row_diff(Fa: torch.Tensor, Fb: torch.Tensor) -> np.ndarray:
    """Per row, the max-norm difference of two (m, p) blocks relative to ``Fb``'s: (m,)."""
    nrm = torch.clamp(Fb.abs().amax(dim=1), min=torch.finfo(Fb.dtype).tiny)
    return ((Fa - Fb).abs().amax(dim=1) / nrm).double().numpy()


def _refine(ray: RayBase, rows: torch.Tensor, pieces: list[np.ndarray], q: int,
            size: np.ndarray, scale: torch.Tensor, opts: AdjointOptions,
            info: QuadInfo) -> torch.Tensor:
    """Adaptive bisection of each row's pieces; returns (m, p).

    A piece is accepted when its q- and 2q-node values agree to ``tol * size / 64``
    (``size``: the row's max-norm adjoint, so the row's error stays below ``tol`` relative
    for up to 64 pieces) and its own (ID) residual is below ``tol * scale / 64``; its
    2q-node value is kept. Everything is decided per piece of a row, so the result does not
    depend on which rows share the batch.
    """
    dt = ray.theta.dtype
    ts = {k: tuple(torch.as_tensor(v, dtype=dt) for v in gauss_legendre(k)) for k in (q, 2 * q)}
    m = len(rows)
    acc = ray.theta.new_zeros((m, ray.p))
    wr = np.concatenate([np.full(len(pc) - 1, i) for i, pc in enumerate(pieces)])
    wa = np.concatenate([pc[:-1] for pc in pieces])
    wb = np.concatenate([pc[1:] for pc in pieces])
    thr = (opts.rtol * scale / 64.0).double().numpy()
    thr_f = opts.rtol * np.maximum(size, np.finfo(np.float64).tiny) / 64.0
    theta = ray.theta
    for depth in range(opts.max_depth + 1):
        r = rows[torch.as_tensor(wr)]
        A, B = torch.as_tensor(wa, dtype=dt), torch.as_tensor(wb, dtype=dt)
        h = (B - A)[:, None]
        G1 = ray.grads(r, A[:, None] + h * ts[q][0], h * ts[q][1])
        G = ray.grads(r, A[:, None] + h * ts[2 * q][0], h * ts[2 * q][1])
        va, _ = ray.values(r, A)
        vb, _ = ray.values(r, B)
        res = (vb - va - G @ theta).abs().double().numpy()
        err = (G - G1).abs().amax(dim=1).double().numpy()
        good = (res <= thr[wr]) & (err <= thr_f[wr])
        ok = good | (wb - wa <= 1e-15) | (depth == opts.max_depth)
        if depth == opts.max_depth and not good.all():
            info.unconverged_rows += int(np.unique(wr[~good]).size)
        okt = torch.as_tensor(ok)
        acc.index_add_(0, torch.as_tensor(wr[ok]), G[okt])
        if ok.all():
            break
        mid = 0.5 * (wa[~ok] + wb[~ok])
        wr = np.concatenate([wr[~ok], wr[~ok]])
        wa, wb = np.concatenate([wa[~ok], mid]), np.concatenate([mid, wb[~ok]])
        if wr.size > 4096 * m:
            raise NldistError("adaptive quadrature split a row's ray into too many pieces; the "
                              "model's gradient is too rough along t theta — raise q or check "
                              "the model is piecewise smooth")
    return acc


def _integrate_batch(ray: RayBase, rows: torch.Tensor, opts: AdjointOptions,
                     info: QuadInfo) -> torch.Tensor:
    """The adjoint rows of one batch, every decision taken per row (see the module doc)."""
    m = len(rows)
    if opts.accuracy == "sampling":  # a fixed rule, no checks: leverage to a constant factor
        F = _pieces_grads(ray, rows, [np.array([0.0, 1.0])] * m, opts.sampling_q)
        check_finite("gradient", F, rows)
        return F
    tol, q = opts.rtol, opts.q
    f1 = ray.forward(1.0, rows)
    f0 = ray.forward(0.0, rows)
    check_finite("output at theta", f1, rows)
    check_finite("output at theta = 0", f0, rows)
    bps = _breakpoints(ray, rows, opts, info) if opts.kinks else None
    if bps is None:
        pieces = [np.array([0.0, 1.0])] * m
    else:
        pieces = [np.concatenate([[0.0], bp, [1.0]]) for bp in bps]
    # every row: q vs 2q nodes per piece, the 2q value kept when the two agree to tol (a
    # conservative bound on the 2q value's error); rows that disagree go on to 4q vs 2q,
    # ... up to q_max
    Fq = _pieces_grads(ray, rows, pieces, q)
    check_finite("gradient", Fq, rows)
    F = _pieces_grads(ray, rows, pieces, 2 * q)
    check_finite("gradient", F, rows)
    est = _row_diff(Fq, F)
    info.probe_error = max(info.probe_error, float(est.max()) if m else 0.0)
    cur, qq = np.flatnonzero(est > tol), 2 * q
    while cur.size and 2 * qq <= opts.q_max:
        ct = torch.as_tensor(cur)
        F2 = _pieces_grads(ray, rows[ct], [pieces[i] for i in cur], 2 * qq)
        est = _row_diff(F[ct], F2)
        F[ct] = F2
        info.escalated_rows += int(cur.size)
        info.q = max(info.q, 2 * qq)
        cur, qq = cur[est > tol], 2 * qq
    rel, scale = id_residual(ray.theta, F, f1, f0)
    bad = (rel > tol).numpy()
    bad[cur] = True  # still disagreeing at q_max
    if bad.any():
        sel = np.flatnonzero(bad)
        st = torch.as_tensor(sel)
        info.refined_rows += sel.size
        size = F[st].abs().amax(dim=1).double().numpy()
        F[st] = _refine(ray, rows[st], [pieces[i] for i in sel], min(8, opts.q_max // 2),
                        size, scale[sel], opts, info)
        rel, _ = id_residual(ray.theta, F, f1, f0)
    info.max_rel_residual = max(info.max_rel_residual, float(rel.max()) if m else 0.0)
    return F


def integrate(ray: RayBase, opts: AdjointOptions | None = None) -> tuple[np.ndarray, QuadInfo]:
    """The adjoint rows of every row of a ray: (n, p) float64 and diagnostics.

    Parameters
    ----------
    ray : FunctionalRay or ScaledModuleRay
    opts : AdjointOptions, optional

    Returns
    -------
    F : ndarray (n, p), float64
        ``F[i] = int_0^1 grad f_i(t theta) dt`` (of the post-mapped output when the ray
        has a post-map).
    info : QuadInfo
    """
    opts = opts or AdjointOptions()
    use_worker_threads()
    n = ray.X.shape[0]
    q = opts.sampling_q if opts.accuracy == "sampling" else 2 * opts.q
    info = QuadInfo(rows=n, q=q)
    out = np.empty((n, ray.p), dtype=np.float64)
    allrows = torch.arange(n)
    for a, b in row_chunks(n, opts.batch_rows):
        out[a:b] = _integrate_batch(ray, allrows[a:b], opts, info).double().numpy()
    if info.unconverged_rows:
        log.warning("quadrature: %d row(s) did not reach the (ID) tolerance %.1e (largest "
                    "relative residual %.2e); raise q/max_depth or check the model",
                    info.unconverged_rows, opts.rtol, info.max_rel_residual)
    log.debug("quadrature: %s", info)
    return out, info
