"""Nonlinear adjoints of any differentiable PyTorch model by quadrature (MATH.md §1).

``f*_i(theta) = int_0^1 grad f_i(t theta) dt`` is computed with Gauss-Legendre quadrature
along the ray ``t -> t theta``, vectorized over rows x nodes with :mod:`torch.func` and
processed in row batches of bounded memory. Closed forms (GLM, ``relu2``) and the
homogeneous shortcut live with their models; :func:`adjoint` is the general engine the
:class:`nldist.models.Model` base class falls back to.

Per batch of rows (every decision below is taken per row, so a row's adjoint does not
depend on which rows share its batch, chunk or worker):

1. **Breakpoints.** Piecewise-linear ops (relu, leaky_relu, hardtanh, abs, clamp, maximum,
   comparisons, ...) make ``grad f(t theta)`` jump where their input (a *switch*) changes
   sign along the ray. A forward-only probe on a fixed grid of t records the switches (a
   ``TorchFunctionMode``), brackets each sign change and locates it by Illinois regula falsi
   on ``z(t) / t``; each row's [0, 1] is split there, so every piece is smooth (polynomial
   for ReLU nets, where Gauss-Legendre is exact).
2. **Quadrature.** Two evaluators (*rays*): for modules built from layers that are linear
   in their own parameters (Linear, Conv, norms, Embedding) the scaled parameters
   ``t theta`` are applied as a per-node scale of those layers' outputs, and one
   ``vmap(grad)`` over rows gives sum_k w_k grad f(t_k theta) with no per-node parameter
   copies (:class:`ScaledModuleRay`); any other model uses nested ``vmap`` of ``grad`` over
   nodes and rows (:class:`FunctionalRay`).
3. **Error estimate of the adjoint itself, per row.** Every row is integrated with q and
   2q nodes per piece (default q = 2) and keeps the 2q value when the two agree to ``tol``
   (max norm, relative to the row's adjoint) — a conservative bound, as the 2q rule is far
   more accurate than the q rule it is compared with. Rows that disagree go on to 4q vs
   2q, ... up to ``q_max``.
4. **Refinement.** Rows still disagreeing at ``q_max``, or whose (ID) residual
   ``f(theta) - f(0) - <theta, f*>`` (relative to the size of its terms) is above ``tol``
   although their rules agree (kinks of ops the probe does not see), get adaptive bisection
   of their pieces; a piece is accepted when its q and 2q rules agree and its own (ID)
   residual is small.

Everything runs in float64 unless the model is configured with ``dtype="float32"``
(:func:`configure`); results are returned as float64 NumPy arrays.

**Sampling accuracy** (``accuracy="sampling"``): steps 1, 3 and 4 are skipped — a fixed
``sampling_q``-node Gauss-Legendre rule on the whole of [0, 1] in float32, the same for
every row and batch (so the scores do not depend on the chunking). Sampling needs leverage
only to a constant factor; the measured effect on the sampled models' relative errors is in
bench/RESULTS.md. On a Dask worker the
engine sets ``torch.set_num_threads(1)`` (one torch thread per worker thread).
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from nldist._runtime import use_worker_threads
from nldist.errors import NldistError
from nldist.models.gauss import gauss_legendre
from nldist.options import AdjointOptions, make

log = logging.getLogger("nldist")

__all__ = [
    "FunctionalRay",
    "torch_dtype",
    "ScaledModuleRay",
    "adjoint",
    "configure",
    "gauss_legendre",
    "integrate",
    "jacobian",
    "options",
    "outputs",
    "predict",
]

# --------------------------------------------------------------------------------------
# Options and rules
# --------------------------------------------------------------------------------------


def torch_dtype(opts: AdjointOptions) -> torch.dtype:
    """The torch dtype of ``opts.dtype`` (float32 at sampling accuracy)."""
    if opts.accuracy == "sampling":
        return torch.float32
    return torch.float64 if opts.dtype == "float64" else torch.float32


def options(model: Any) -> AdjointOptions:
    """The model's quadrature options (defaults when never configured)."""
    return getattr(model, "quad_options", None) or AdjointOptions()


def configure(model: Any, **kwargs: Any) -> Any:
    """Set quadrature options on a model (returned, for chaining).

    Parameters
    ----------
    model : Model
    **kwargs
        Fields of :class:`AdjointOptions` (``q``, ``tol``, ``dtype``, ...).
    """
    unknown = set(kwargs) - set(AdjointOptions.model_fields)
    if unknown:
        raise NldistError(f"unknown quadrature option(s) {sorted(unknown)}; use "
                          f"{', '.join(AdjointOptions.model_fields)}")
    model.quad_options = make(AdjointOptions, "quadrature options",
                              **{**options(model).model_dump(), **kwargs})
    return model


# probe grid for breakpoints: geometric near 0 (roots of deeper layers' switches can sit
# close to 0), then uniform
_GRID = np.concatenate([[1e-9, 1e-6, 1e-3], np.arange(1, 17) / 16.0])


# --------------------------------------------------------------------------------------
# Switch recorder: inputs of piecewise-linear ops, whose sign changes are the kinks
# --------------------------------------------------------------------------------------


def _num(v: Any, default: float) -> Any:
    return default if v is None else v


def _switches(func: Callable, args: tuple, kwargs: dict) -> list:
    """Tensors whose sign changes mark a kink of ``func(*args, **kwargs)``."""
    name = getattr(func, "__name__", "")
    if not args:
        return []
    x = args[0]
    if not isinstance(x, torch.Tensor):
        return []
    if name in ("relu", "relu_", "leaky_relu", "leaky_relu_", "abs", "abs_", "absolute",
                "rrelu"):
        return [x]
    if name in ("relu6",):
        return [x, x - 6.0]
    if name in ("hardtanh", "hardtanh_"):
        lo = args[1] if len(args) > 1 else kwargs.get("min_val", -1.0)
        hi = args[2] if len(args) > 2 else kwargs.get("max_val", 1.0)
        return [x - lo, x - hi]
    if name in ("hardsigmoid", "hardswish"):
        return [x + 3.0, x - 3.0]
    if name in ("threshold", "threshold_"):
        thr = args[1] if len(args) > 1 else kwargs.get("threshold", 0.0)
        return [x - thr]
    if name in ("clamp", "clip", "clamp_", "clip_"):
        lo = args[1] if len(args) > 1 else kwargs.get("min")
        hi = args[2] if len(args) > 2 else kwargs.get("max")
        return [x - v for v in (lo, hi) if v is not None]
    if name in ("clamp_min", "clamp_min_"):
        return [x - _num(args[1] if len(args) > 1 else kwargs.get("min"), 0.0)]
    if name in ("clamp_max", "clamp_max_"):
        return [x - _num(args[1] if len(args) > 1 else kwargs.get("max"), 0.0)]
    if name in ("maximum", "minimum", "fmax", "fmin", "max", "min", "gt", "lt", "ge", "le",
                "greater", "less", "greater_equal", "less_equal", "__gt__", "__lt__",
                "__ge__", "__le__"):
        other = args[1] if len(args) > 1 else kwargs.get("other")
        if isinstance(other, torch.Tensor) or (
            isinstance(other, (int, float)) and name not in ("max", "min")
        ):
            return [x - other]
    return []


class _Recorder(TorchFunctionMode):
    """Records switch values (leading dimension = the batch) during one forward."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch = batch
        self.items: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        kwargs = kwargs or {}
        try:
            found = _switches(func, args, kwargs)
        except Exception:  # noqa: BLE001 - recording must never break the forward
            found = []
        for v in found:
            if (isinstance(v, torch.Tensor) and v.is_floating_point() and v.ndim >= 1
                    and v.shape[0] == self.batch):
                self.items.append(v.detach().reshape(self.batch, -1).clone())
        return func(*args, **kwargs)

    def stacked(self, like: torch.Tensor) -> torch.Tensor:
        if not self.items:
            return like.new_zeros((self.batch, 0))
        return torch.cat(self.items, dim=1)


# --------------------------------------------------------------------------------------
# Rays: f(t theta; x_i) and sums of gradients at points of the ray
# --------------------------------------------------------------------------------------


def as_rows(out: Any, n: int, where: str = "model", n_outputs: int = 1) -> torch.Tensor:
    """Normalize a forward output to shape (n,) — or check it is (n, C) for a model with
    ``n_outputs`` = C > 1 — or raise a one-line error."""
    if not isinstance(out, torch.Tensor):
        raise NldistError(f"{where} forward returned {type(out).__name__}, not a tensor; "
                          "return a tensor of shape (n,) or (n, 1)")
    if n_outputs > 1:
        if out.ndim != 2 or tuple(out.shape) != (n, n_outputs):
            raise NldistError(f"{where} forward maps (n, d) to shape {tuple(out.shape)} for "
                              f"n={n}; it must return (n, {n_outputs}) — C outputs per row")
        return out
    if out.ndim == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.ndim != 1 or out.shape[0] != n:
        raise NldistError(f"{where} forward maps (n, d) to shape {tuple(out.shape)} for n={n}; "
                          "it must return (n,) or (n, 1) — one output per row — or (n, C) "
                          "logits of a C-class model")
    return out


Post = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


# Rows per BLAS tile: a gemm's row results depend on how many rows it is given (the edge
# kernel for m mod 4 != 0, gemv for m = 1), so every evaluation of a ray runs on a multiple
# of _TILE rows (the last row repeated) in pieces that are multiples of _TILE — then a row's
# value does not depend on which rows share its batch, chunk or worker.
_TILE = 16


def _chunks(n: int, size: int, tile: int = 1):
    size = max(tile, int(size) // tile * tile)
    for start in range(0, n, size):
        yield start, min(n, start + size)


class _RayBase:
    """Common state: theta as named tensors, data, per-row aux (labels) and a post-map."""

    def __init__(self, params: dict[str, torch.Tensor], X: torch.Tensor,
                 aux: torch.Tensor | None, post: Post | None, max_elems: int,
                 n_outputs: int = 1) -> None:
        if n_outputs > 1 and post is None:
            raise NldistError(f"the model has {n_outputs} outputs; its adjoint is taken of one "
                              "scalar of them (a loss residual, the margin or a combination "
                              "of outputs): use loss cross_entropy or a block kind")
        self.n_outputs = int(n_outputs)
        self.params = params
        self.names = list(params)
        self.X = X
        self.aux = aux if aux is not None else X.new_zeros(X.shape[0])
        self.post = post
        self.max_elems = int(max_elems)
        self.p = int(sum(v.numel() for v in params.values()))
        self.theta = torch.cat([v.reshape(-1) for v in params.values()])
        self.n_switches: int | None = None

    def _flat(self, g: dict[str, torch.Tensor], m: int) -> torch.Tensor:
        return torch.cat([g[k].reshape(m, -1) for k in self.names], dim=1)

    def _scaled(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
        return {k: t * v for k, v in self.params.items()}

    def _apply_post(self, out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        return out if self.post is None else self.post(out, a)

    def _finish(self, raw: Any, a: torch.Tensor, n: int) -> torch.Tensor:
        """The scalar per row (n,) of a raw forward output: (n,) or (n, 1) post-mapped, or
        the post-map of the (n, C) outputs of a C-output model."""
        if self.n_outputs == 1:
            return self._apply_post(as_rows(raw, n), a)
        return as_rows(self.post(as_rows(raw, n, n_outputs=self.n_outputs), a), n,
                       "post-map of the model")

    # interface: padded to whole tiles (see _TILE), then the subclass's evaluator ----------
    @staticmethod
    def _tiled(rows: torch.Tensor, *per_row: torch.Tensor | None):
        m = len(rows)
        k = (-m) % _TILE
        if m == 0 or k == 0:
            return rows, per_row
        idx = torch.cat([torch.arange(m), torch.full((k,), m - 1)])
        return rows[idx], tuple(None if v is None else v[idx] for v in per_row)

    def forward(self, t: float, rows: torch.Tensor) -> torch.Tensor:
        """f(t theta; x_rows), shared t. Returns (len(rows),)."""
        r, _ = self._tiled(rows)
        return self._forward(t, r)[: len(rows)]

    def values(self, rows: torch.Tensor, t: torch.Tensor, record: bool = False):
        """f(t_j theta; x_rows[j]) per item; with ``record`` also the switches (N, H)."""
        r, (tt,) = self._tiled(rows, t)
        v, S = self._values(r, tt, record)
        m = len(rows)
        return v[:m], (None if S is None else S[:m])

    def grads(self, rows: torch.Tensor, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """sum_j W_ij grad f(T_ij theta; x_rows[i]), (m, p); T, W of shape (J,) or (m, J)."""
        if T.ndim == 1:
            r, _ = self._tiled(rows)
        else:
            r, (T, W) = self._tiled(rows, T, W)
        return self._grads(r, T, W)[: len(rows)]

    def _forward(self, t: float, rows: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _values(self, rows: torch.Tensor, t: torch.Tensor, record: bool = False):
        raise NotImplementedError

    def _grads(self, rows: torch.Tensor, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class FunctionalRay(_RayBase):
    """Generic evaluator: ``fn(params, X) -> (n,)`` with parameters scaled per node.

    Parameters
    ----------
    fn : callable (dict of tensors, X (b, d)) -> tensor (b,)
        Rows must be independent (no batch statistics).
    params : dict of tensors
        theta, as named tensors in the flat order of the model's theta.
    X : tensor (n, d)
    aux : tensor (n,) or None
        Per-row data for ``post`` (labels).
    post : callable (out (b,), aux (b,)) -> (b,), optional
        Applied to the model output (outer map, loss residual).
    """

    def __init__(self, fn: Callable, params: dict[str, torch.Tensor], X: torch.Tensor,
                 aux: torch.Tensor | None = None, post: Post | None = None,
                 max_elems: int = 1 << 22, n_outputs: int = 1) -> None:
        super().__init__(params, X, aux, post, max_elems, n_outputs)
        self.fn = fn

        def f1(prm: dict, x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
            return self._finish(self.fn(prm, x.unsqueeze(0)), a.unsqueeze(0), 1)[0]

        self._f1 = f1
        self._g1 = grad(f1)

    def _forward(self, t: float, rows: torch.Tensor) -> torch.Tensor:
        prm = self._scaled(torch.tensor(t, dtype=self.theta.dtype))
        outs = []
        for a, b in _chunks(len(rows), self.max_elems // max(1, self.X.shape[1] * 4), _TILE):
            r = rows[a:b]
            outs.append(self._finish(self.fn(prm, self.X[r]), self.aux[r], b - a))
        return torch.cat(outs) if outs else self.theta.new_zeros(0)

    def _values(self, rows: torch.Tensor, t: torch.Tensor, record: bool = False):
        def item(x: torch.Tensor, a: torch.Tensor, s: torch.Tensor):
            prm = self._scaled(s)
            if record:
                with _Recorder(1) as rec:
                    out = self.fn(prm, x.unsqueeze(0))
                sw = rec.stacked(out)[0]
            else:
                out = self.fn(prm, x.unsqueeze(0))
                sw = out.new_zeros(0)
            return self._finish(out, a.unsqueeze(0), 1)[0], sw

        vals, sws = [], []
        for a, b in _chunks(len(rows), self.max_elems // max(1, 4 * self.p), _TILE):
            r = rows[a:b]
            v, s = vmap(item)(self.X[r], self.aux[r], t[a:b])
            vals.append(v)
            sws.append(s)
        if not vals:
            return self.theta.new_zeros(0), None
        return torch.cat(vals), (torch.cat(sws) if record else None)

    def _grads(self, rows: torch.Tensor, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        m = len(rows)
        J = T.shape[-1]
        out = self.theta.new_empty((m, self.p))
        size = self.max_elems // max(1, 2 * J * self.p)
        if T.ndim == 1:
            inner = vmap(self._g1, in_dims=(None, 0, 0))
            outer = vmap(inner, in_dims=(0, None, None))
            prm = {k: T.reshape(-1, *([1] * v.ndim)) * v for k, v in self.params.items()}
            for a, b in _chunks(m, size, _TILE):
                r = rows[a:b]
                G = outer(prm, self.X[r], self.aux[r])
                out[a:b] = self._flat({k: torch.tensordot(W, g, dims=1) for k, g in G.items()},
                                      b - a)
            return out

        def row(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, w: torch.Tensor):
            prm = {k: t.reshape(-1, *([1] * v.ndim)) * v for k, v in self.params.items()}
            G = vmap(self._g1, in_dims=(0, None, None))(prm, x, a)
            return {k: torch.tensordot(w, g, dims=1) for k, g in G.items()}

        for a, b in _chunks(m, size, _TILE):
            r = rows[a:b]
            out[a:b] = self._flat(vmap(row)(self.X[r], self.aux[r], T[a:b], W[a:b]), b - a)
        return out


_SCALE: contextvars.ContextVar = contextvars.ContextVar("nldist_ray_scale", default=None)


def _scale_hook(module: Any, inputs: Any, output: Any) -> Any:
    s = _SCALE.get()
    if s is None or not isinstance(output, torch.Tensor):
        return None
    return output * s.reshape(-1, *([1] * (output.ndim - 1)))


def install_scale_hooks(module: torch.nn.Module, layers: list[torch.nn.Module]) -> None:
    """Hooks that multiply each listed layer's output by the current ray scale (if any)."""
    for layer in layers:
        layer.register_forward_hook(_scale_hook)


class ScaledModuleRay(_RayBase):
    """Fast evaluator for modules whose parametrized layers are linear in their parameters.

    If every layer holding parameters computes ``L(c P; a) = c L(P; a)`` (Linear, Conv,
    Bilinear, Embedding, affine norms), then ``f(t theta; x)`` is the module run with each
    such layer's output multiplied by t. A row's items (nodes) then share the parameters,
    and ``grad`` of ``sum_j (W_j / T_j) f_scaled(T_j; x)`` with respect to theta equals
    ``sum_j W_j grad f(T_j theta; x)``: one ``vmap(grad)`` over rows, no per-node parameter
    copies. The module must carry hooks from :func:`install_scale_hooks`.

    Parameters
    ----------
    module : torch.nn.Module (eval mode, hooks installed)
    params, buffers : dicts of tensors for ``functional_call``
    X, aux, post : as :class:`FunctionalRay`
    width : int
        Activation floats per item (for the memory bound).
    """

    def __init__(self, module: torch.nn.Module, params: dict[str, torch.Tensor],
                 buffers: dict[str, torch.Tensor], X: torch.Tensor,
                 aux: torch.Tensor | None = None, post: Post | None = None,
                 max_elems: int = 1 << 22, width: int = 1, n_outputs: int = 1) -> None:
        super().__init__(params, X, aux, post, max_elems, n_outputs)
        self.module = module
        self.buffers = buffers
        self.width = max(1, int(width))

        def h(prm: dict, x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, c: torch.Tensor):
            J = t.shape[0]
            out = self._run(prm, x.unsqueeze(0).expand(J, *x.shape), t)
            return (c * self._finish(out, a.expand(J, *a.shape), J)).sum()

        self._gh = grad(h)

    def _run(self, prm: dict, Xb: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        tok = _SCALE.set(s)
        try:
            out = functional_call(self.module, (prm, self.buffers), (Xb,))
        finally:
            _SCALE.reset(tok)
        return out

    def _forward(self, t: float, rows: torch.Tensor) -> torch.Tensor:
        s = torch.tensor(t, dtype=self.theta.dtype)
        outs = []
        for a, b in _chunks(len(rows), self.max_elems // (4 * self.width), _TILE):
            r = rows[a:b]
            outs.append(self._finish(self._run(self.params, self.X[r], s), self.aux[r], b - a))
        return torch.cat(outs) if outs else self.theta.new_zeros(0)

    def _values(self, rows: torch.Tensor, t: torch.Tensor, record: bool = False):
        vals, sws = [], []
        for a, b in _chunks(len(rows), self.max_elems // (4 * self.width), _TILE):
            r = rows[a:b]
            if record:
                with _Recorder(b - a) as rec:
                    out = self._run(self.params, self.X[r], t[a:b])
                sws.append(rec.stacked(out))
            else:
                out = self._run(self.params, self.X[r], t[a:b])
            vals.append(self._finish(out, self.aux[r], b - a))
        if not vals:
            return self.theta.new_zeros(0), None
        return torch.cat(vals), (torch.cat(sws) if record else None)

    def _grads(self, rows: torch.Tensor, T: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        m = len(rows)
        J = T.shape[-1]
        C = W / T
        shared = T.ndim == 1
        g = vmap(self._gh, in_dims=(None, 0, 0, None if shared else 0, None if shared else 0))
        out = self.theta.new_empty((m, self.p))
        size = self.max_elems // (2 * self.p + 4 * J * self.width)
        for a, b in _chunks(m, size, _TILE):
            r = rows[a:b]
            t, c = (T, C) if shared else (T[a:b], C[a:b])
            with torch.no_grad():  # grad() ignores the outer no_grad; saves autograd state
                out[a:b] = self._flat(g(self.params, self.X[r], self.aux[r], t, c), b - a)
        return out


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


def _check_finite(name: str, v: torch.Tensor, rows: torch.Tensor) -> None:
    bad = ~torch.isfinite(v)
    if bad.ndim > 1:
        bad = bad.any(dim=1)
    if bool(bad.any()):
        first = int(rows[bad.nonzero()[0, 0]])
        raise NldistError(f"the model's {name} is NaN or inf for {int(bad.sum())} row(s) "
                          f"(first row {first}); check theta, the data and the model's forward")


def _pieces_grads(ray: _RayBase, rows: torch.Tensor, pieces: list[np.ndarray], q: int):
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


def _illinois(ray: _RayBase, rows: torch.Tensor, unit: np.ndarray, a: np.ndarray,
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


def _breakpoints(ray: _RayBase, rows: torch.Tensor, opts: AdjointOptions, info: QuadInfo):
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


def _refine(ray: _RayBase, rows: torch.Tensor, pieces: list[np.ndarray], q: int,
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


def _integrate_batch(ray: _RayBase, rows: torch.Tensor, opts: AdjointOptions,
                     info: QuadInfo) -> torch.Tensor:
    """The adjoint rows of one batch, every decision taken per row (see the module doc)."""
    m = len(rows)
    if opts.accuracy == "sampling":  # a fixed rule, no checks: leverage to a constant factor
        F = _pieces_grads(ray, rows, [np.array([0.0, 1.0])] * m, opts.sampling_q)
        _check_finite("gradient", F, rows)
        return F
    tol, q = opts.rtol, opts.q
    f1 = ray.forward(1.0, rows)
    f0 = ray.forward(0.0, rows)
    _check_finite("output at theta", f1, rows)
    _check_finite("output at theta = 0", f0, rows)
    bps = _breakpoints(ray, rows, opts, info) if opts.kinks else None
    if bps is None:
        pieces = [np.array([0.0, 1.0])] * m
    else:
        pieces = [np.concatenate([[0.0], bp, [1.0]]) for bp in bps]
    # every row: q vs 2q nodes per piece, the 2q value kept when the two agree to tol (a
    # conservative bound on the 2q value's error); rows that disagree go on to 4q vs 2q,
    # ... up to q_max
    Fq = _pieces_grads(ray, rows, pieces, q)
    _check_finite("gradient", Fq, rows)
    F = _pieces_grads(ray, rows, pieces, 2 * q)
    _check_finite("gradient", F, rows)
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


def integrate(ray: _RayBase, opts: AdjointOptions | None = None) -> tuple[np.ndarray, QuadInfo]:
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
    for a, b in _chunks(n, opts.batch_rows):
        out[a:b] = _integrate_batch(ray, allrows[a:b], opts, info).double().numpy()
    if info.unconverged_rows:
        log.warning("quadrature: %d row(s) did not reach the (ID) tolerance %.1e (largest "
                    "relative residual %.2e); raise q/max_depth or check the model",
                    info.unconverged_rows, opts.rtol, info.max_rel_residual)
    log.debug("quadrature: %s", info)
    return out, info


# --------------------------------------------------------------------------------------
# Model-level entry points (the Model base class delegates here)
# --------------------------------------------------------------------------------------


def model_ray(model: Any, theta: Any, X: Any, aux: Any = None, post: Post | None = None,
              dtype: torch.dtype | None = None) -> _RayBase:
    """A ray for any :class:`nldist.models.Model` (its own ``ray`` method when it has one)."""
    opts = options(model)
    dtype = dtype or torch_dtype(opts)
    th = torch.as_tensor(np.asarray(theta, dtype=np.float64)).to(dtype)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64)).to(dtype)
    at = None if aux is None else torch.as_tensor(np.asarray(aux, dtype=np.float64)).to(dtype)
    maker = getattr(model, "ray", None)
    if maker is not None:
        return maker(th, Xt, at, post, opts)
    C = int(getattr(model, "n_outputs", 1))

    def fn(prm: dict, Xb: torch.Tensor) -> torch.Tensor:
        return as_rows(model.torch_forward(prm["theta"], Xb), Xb.shape[0], f"model {model.spec!r}",
                       n_outputs=C)

    return FunctionalRay(fn, {"theta": th}, Xt, at, post, opts.max_elems, n_outputs=C)


def guard(model: Any, what: str, call: Callable[[], Any]) -> Any:
    """Run ``call``; a torch error of a user model becomes a one-line NldistError."""
    try:
        return call()
    except NldistError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch errors from user models → one line
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NldistError(f"model {model.spec!r} failed in {what} with torch.func "
                          f"({type(exc).__name__}: {msg}); the forward must be differentiable "
                          "in the parameters with torch ops only (no .item(), .numpy(), "
                          "in-place ops on inputs or data-dependent Python control flow)") from None


def adjoint(model: Any, theta: Any, X: Any, aux: Any = None, post: Post | None = None,
            return_info: bool = False) -> Any:
    """Nonlinear adjoint F*(theta) (n, p) of any model by quadrature (float64 result).

    Parameters
    ----------
    model : Model
    theta : ndarray (p,)
    X : ndarray (n, d)
    aux, post : optional
        Per-row data and a post-map (e.g. a loss residual r = post(f, y)); the adjoint is
        then that of ``post(f(theta; x_i), aux_i)``.
    return_info : bool
        Also return the :class:`QuadInfo`.
    """
    use_worker_threads()
    ray = model_ray(model, theta, X, aux, post)
    F, info = guard(model, "the adjoint", lambda: integrate(ray, options(model)))
    return (F, info) if return_info else F


def predict(model: Any, theta: Any, X: Any, aux: Any = None, post: Post | None = None,
            t: float = 1.0) -> np.ndarray:
    """f(t theta; x_i) (n,) float64 through the model's torch forward."""
    use_worker_threads()
    ray = model_ray(model, theta, X, aux, post)
    with torch.no_grad():
        out = guard(model, "the forward", lambda: ray.forward(t, torch.arange(ray.X.shape[0])))
    _check_finite("output", out, torch.arange(out.shape[0]))
    return out.double().numpy()


def outputs(model: Any, theta: Any, X: Any) -> np.ndarray:
    """The raw outputs (n, C) float64 of a C-output model (logits) through its torch forward."""
    use_worker_threads()
    dt = torch_dtype(options(model))
    th = torch.as_tensor(np.asarray(theta, dtype=np.float64)).to(dt)
    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64)).to(dt)
    C = int(model.n_outputs)
    with torch.no_grad():
        out = guard(model, "the forward", lambda: as_rows(
            model.torch_forward(th, Xt), Xt.shape[0], f"model {model.spec!r}", n_outputs=C))
    _check_finite("output", out, torch.arange(out.shape[0]))
    return out.double().numpy()


def jacobian(model: Any, theta: Any, X: Any, aux: Any = None,
             post: Post | None = None) -> np.ndarray:
    """Per-row gradients grad f_i(theta) (n, p) float64 (vectorized with torch.func)."""
    use_worker_threads()
    ray = model_ray(model, theta, X, aux, post)
    one = torch.ones(1, dtype=ray.theta.dtype)
    J = guard(model, "the Jacobian", lambda: ray.grads(torch.arange(ray.X.shape[0]), one, one))
    _check_finite("gradient", J, torch.arange(J.shape[0]))
    return J.double().numpy()
