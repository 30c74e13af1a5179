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

The package: :mod:`~nldist.models.quadrature.rays` evaluates the model along the ray (the
switch recorder of step 1 and the two evaluators of step 2),
:mod:`~nldist.models.quadrature.engine` integrates (steps 1-4: breakpoints, the nested rules
and their error estimate, refinement), and this ``__init__`` holds the options and the
model-level entry points the :class:`nldist.models.Model` base class delegates to
(:func:`adjoint`, :func:`predict`, :func:`outputs`, :func:`jacobian`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from nldist._runtime import use_worker_threads
from nldist.errors import NldistError
from nldist.models.gauss import gauss_legendre
from nldist.models.quadrature.engine import QuadInfo, check_finite, integrate
from nldist.models.quadrature.rays import FunctionalRay, Post, RayBase, ScaledModuleRay, as_rows
from nldist.options import AdjointOptions, make

__all__ = [
    "FunctionalRay",
    "QuadInfo",
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

# --------------------------------------------------------------------------------------
# Model-level entry points (the Model base class delegates here)
# --------------------------------------------------------------------------------------


def model_ray(model: Any, theta: Any, X: Any, aux: Any = None, post: Post | None = None,
              dtype: torch.dtype | None = None) -> RayBase:
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
    check_finite("output", out, torch.arange(out.shape[0]))
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
    check_finite("output", out, torch.arange(out.shape[0]))
    return out.double().numpy()


def jacobian(model: Any, theta: Any, X: Any, aux: Any = None,
             post: Post | None = None) -> np.ndarray:
    """Per-row gradients grad f_i(theta) (n, p) float64 (vectorized with torch.func)."""
    use_worker_threads()
    ray = model_ray(model, theta, X, aux, post)
    one = torch.ones(1, dtype=ray.theta.dtype)
    J = guard(model, "the Jacobian", lambda: ray.grads(torch.arange(ray.X.shape[0]), one, one))
    check_finite("gradient", J, torch.arange(J.shape[0]))
    return J.double().numpy()
