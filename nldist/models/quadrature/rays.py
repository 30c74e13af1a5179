"""Rays of the quadrature engine: f(t theta; x_i) and sums of weighted gradients at points of
the ray, per row, on torch.func.

The switch recorder (a ``TorchFunctionMode``) collects the inputs of piecewise-linear ops,
whose sign changes along the ray are the kinks; :class:`FunctionalRay` (nested ``vmap`` of
``grad``, any model) and :class:`ScaledModuleRay` (a per-node scale of layers linear in
their own parameters, no parameter copies) evaluate rows in whole BLAS tiles, so a row's
value does not depend on which rows share its batch.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import Any

import torch
from torch.func import functional_call, grad, vmap
from torch.overrides import TorchFunctionMode

from nldist.errors import NldistError

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


def row_chunks(n: int, size: int, tile: int = 1):
    size = max(tile, int(size) // tile * tile)
    for start in range(0, n, size):
        yield start, min(n, start + size)


class RayBase:
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


class FunctionalRay(RayBase):
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
        for a, b in row_chunks(len(rows), self.max_elems // max(1, self.X.shape[1] * 4), _TILE):
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
        for a, b in row_chunks(len(rows), self.max_elems // max(1, 4 * self.p), _TILE):
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
            for a, b in row_chunks(m, size, _TILE):
                r = rows[a:b]
                G = outer(prm, self.X[r], self.aux[r])
                out[a:b] = self._flat({k: torch.tensordot(W, g, dims=1) for k, g in G.items()},
                                      b - a)
            return out

        def row(x: torch.Tensor, a: torch.Tensor, t: torch.Tensor, w: torch.Tensor):
            prm = {k: t.reshape(-1, *([1] * v.ndim)) * v for k, v in self.params.items()}
            G = vmap(self._g1, in_dims=(0, None, None))(prm, x, a)
            return {k: torch.tensordot(w, g, dims=1) for k, g in G.items()}

        for a, b in row_chunks(m, size, _TILE):
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


class ScaledModuleRay(RayBase):
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
        for a, b in row_chunks(len(rows), self.max_elems // (4 * self.width), _TILE):
            r = rows[a:b]
            outs.append(self._finish(self._run(self.params, self.X[r], s), self.aux[r], b - a))
        return torch.cat(outs) if outs else self.theta.new_zeros(0)

    def _values(self, rows: torch.Tensor, t: torch.Tensor, record: bool = False):
        vals, sws = [], []
        for a, b in row_chunks(len(rows), self.max_elems // (4 * self.width), _TILE):
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
        for a, b in row_chunks(m, size, _TILE):
            r = rows[a:b]
            t, c = (T, C) if shared else (T[a:b], C[a:b])
            with torch.no_grad():  # grad() ignores the outer no_grad; saves autograd state
                out[a:b] = self._flat(g(self.params, self.X[r], self.aux[r], t, c), b - a)
        return out
