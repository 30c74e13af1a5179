"""The gradient oracles: one row block's exact loss and gradient, the full-data pass of
:func:`nldist.precond.driver.fit_precond` (:func:`grad_block`: n p work per row, no p x p
matrix per row; closed forms by a vector-Jacobian product, networks by one torch backward
pass), and the weighted sample's (loss, gradient) oracle for any model class
(:func:`sample_oracle_any`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from nldist._checks import check_finite_block
from nldist.models.base import Model
from nldist.models.losses import check_labels, get_loss, residual_pair, softmax, targets
from nldist.train import ce_oracle, multi_squared_oracle, sample_oracle


def ball_multiplier(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                    radius: float | None, *, weight: float = 1.0, loss: str = "squared",
                    rtol: float = 1e-6) -> float:
    """The ball's KKT multiplier λ >= 0 at theta, ``∇L + λθ = 0``, estimated from the rows
    X, y (each counted ``weight`` times: n/m for a uniform pilot of m of n rows):
    ``max(0, −θᵀ∇L/‖θ‖²)`` when ``‖θ‖ >= (1 − rtol)·radius`` (theta on the sphere), else 0
    (an interior point has λ = 0). L is :func:`grad_block`'s loss (Σ r_i², Σ CE_i, ...).

    Returns
    -------
    float
    """
    theta = np.asarray(theta, dtype=np.float64)
    nrm = float(np.linalg.norm(theta))
    if radius is None or not np.isfinite(radius) or nrm <= 0 or nrm < (1 - rtol) * radius:
        return 0.0
    g = grad_block(model, theta, X, y, loss=loss)["grad"] * float(weight)
    lam = -float(theta @ g) / nrm**2
    return lam if np.isfinite(lam) and lam > 0 else 0.0


def grad_block(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
               offset: int = 0, loss: str = "squared") -> dict:
    """Loss and gradient (no Gauss-Newton matrix) of one block, as :func:`nldist.train.gn_block`
    defines them: ``sum r_i^2`` (squared loss, or a loss's residuals), ``sum ||f_i - y_i||^2``
    (multi-output regression) or ``sum CE_i`` (cross-entropy).

    Closed forms by a vector-Jacobian product in NumPy (a GLM's Jacobian is n x p, the work
    n p); networks by one torch backward pass over the block.

    Returns
    -------
    dict with ``loss`` (float) and ``grad`` (p,)
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    theta = np.asarray(theta, dtype=np.float64)
    vjp = getattr(model, "vjp", None)
    if loss == "cross_entropy":
        yi = check_labels(y.reshape(-1), model.n_outputs)
        if model.closed_form and vjp is not None:
            Z = model.predict(theta, X)
            E = softmax(Z)
            E[np.arange(len(yi)), yi] -= 1.0
            return {"loss": float(get_loss("cross_entropy").row_loss(Z, yi).sum()),
                    "grad": vjp(theta, X, E)}
        return _torch_grad(model, theta, X, yi, "cross_entropy")
    if model.n_outputs > 1:
        Y = targets(y, len(X), model.n_outputs)
        if not model.closed_form:
            return _torch_grad(model, theta, X, Y, "multi")
        R = model.predict(theta, X) - Y
        g = vjp(theta, X, R) if vjp is not None else \
            np.einsum("nc,ncp->p", R, model.jacobian(theta, X))
        return {"loss": float((R * R).sum()), "grad": 2.0 * g}
    if not model.closed_form:
        return _torch_grad(model, theta, X, y, loss)
    sparse = bool(getattr(model, "sparse_rows", False))  # a GLM on coded columns
    if sparse:
        z = model.linear_index(theta, X)
        f = model.inner.activation.phi(z)
    else:
        f = model.predict(theta, X)
    r, dr = residual_pair(f, y, loss)
    if sparse:  # J^T v from the sparse design (d0 + k + 1 nonzeros a row), never the dense
        # one-hot Jacobian (n x p: at flights-3m's p = 460 it made the pass 10x slower)
        A = model.sparse_design(X, model.inner.activation.dphi(z) * (r * dr))
        return {"loss": float(r @ r), "grad": 2.0 * np.asarray(A.sum(axis=0)).ravel()}
    return {"loss": float(r @ r), "grad": 2.0 * (model.jacobian(theta, X).T @ (r * dr))}


def _torch_grad(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str
                ) -> dict:
    """(loss, gradient) of a network's block by torch autograd (one backward pass)."""
    import torch

    th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
    Xt = torch.as_tensor(X)
    f = model.torch_forward(th, Xt)
    if loss == "cross_entropy":
        L = torch.nn.functional.cross_entropy(f, torch.as_tensor(y), reduction="sum")
    elif loss == "multi":
        R = f - torch.as_tensor(y)
        L = (R * R).sum()
    else:
        yt = torch.as_tensor(y)
        r = f - yt if loss == "squared" else get_loss(loss).torch_residual(f, yt)
        L = (r * r).sum()
    (g,) = torch.autograd.grad(L, th)
    return {"loss": float(L.detach()), "grad": g.numpy().astype(np.float64)}


def sample_oracle_any(model: Model, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray,
                      loss: str = "squared") -> Callable[[np.ndarray], dict]:
    """The weighted sample's (loss, gradient) oracle of :mod:`nldist.train` for any model
    class (cross-entropy, multi-output regression, a single output)."""
    if loss == "cross_entropy":
        return ce_oracle(model, Xs, ys, w)
    if model.n_outputs > 1:
        return multi_squared_oracle(model, Xs, ys, w)
    return sample_oracle(model, Xs, ys, w, loss)
