"""What the trainings minimise, evaluated: the oracles theta -> (loss, gradient[, Gauss-Newton
matrix]) of a weighted sample on one node (:func:`sample_oracle`, :func:`ce_oracle`,
:func:`multi_squared_oracle`), and the full-data pieces of one row block that
:mod:`nldist.graph` reduces over the blocks (:func:`gn_block`, :func:`losses_block`,
:func:`row_losses_block`) with the evaluation sample's loss estimate
(:func:`estimate_losses`).

The solvers that call them are :mod:`nldist.train` (MATH.md §4). Arrays in, arrays out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from nldist._checks import check_finite_block
from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.coded import CodedModel
from nldist.models.losses import check_labels, get_loss, residual_pair, softmax, targets
from nldist.scores.linalg import kron_gram

#: an oracle: theta -> {"loss", "grad"[, "gn"]}
Oracle = Callable[[np.ndarray], dict]


def ce_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
              ) -> Oracle:
    """(loss, gradient) of the weighted cross-entropy ``sum_i w_i CE_i(theta)`` of a C-output
    model: a NumPy vector-Jacobian product for closed forms (``softmax:<C>``), torch
    autograd otherwise."""
    ce = get_loss("cross_entropy")
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    yi = check_labels(y, model.n_outputs)
    w = np.ones(len(y)) if w is None else np.asarray(w, dtype=np.float64)
    if model.closed_form:
        kron = getattr(model, "kron_design", None)
        Xd = None if kron is None else kron(X)

        def oracle(theta: np.ndarray) -> dict:
            Z = model.predict(theta, X)
            ell = ce.row_loss(Z, yi)
            P = softmax(Z)
            E = P.copy()
            E[np.arange(len(yi)), yi] -= 1.0
            out = {"loss": float(w @ ell), "grad": model.vjp(theta, X, w[:, None] * E)}
            if Xd is not None:  # softmax: the exact Hessian sum_i w_i H_i (x) x~ x~^T
                out["gn"] = kron_gram(w[:, None, None] * (
                    P[:, :, None] * np.eye(P.shape[1])[None] - P[:, :, None] * P[:, None, :]),
                    Xd)
            return out

        return oracle
    import torch

    return _torch_grad_oracle(model, X, yi, w, lambda Z, yt: torch.nn.functional.cross_entropy(
        Z, yt, reduction="none"))


def _torch_grad_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray,
                       row_loss: Callable) -> Oracle:
    """(loss, gradient) of ``sum_i w_i row_loss(f_i(theta), y_i)`` by torch autograd, for a
    C-output network (``row_loss`` maps the (n, C) outputs and y to (n,) losses)."""
    import torch

    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(y)
    wt = torch.as_tensor(w)

    def oracle(theta: np.ndarray) -> dict:
        th = torch.tensor(theta, dtype=torch.float64, requires_grad=True)
        L = (wt * row_loss(model.torch_forward(th, Xt), yt)).sum()
        (g,) = torch.autograd.grad(L, th)
        return {"loss": float(L.detach()), "grad": g.numpy()}

    return oracle


def multi_squared_oracle(model: Model, X: np.ndarray, y: np.ndarray,
                         w: np.ndarray | None = None) -> Oracle:
    """(loss, gradient) of the weighted multi-output squared loss
    ``sum_i w_i ||f_i(theta) - y_i||^2`` of a C-output model (y (n, C)): with the exact
    Gauss-Newton matrix ``2 sum_i w_i J_i^T J_i`` from the model's Jacobian for closed forms
    (``softmax:<C>`` as a linear C-output regression), torch autograd (gradient only) for
    networks."""
    Y = targets(y, len(X), model.n_outputs)
    w = np.ones(len(Y)) if w is None else np.asarray(w, dtype=np.float64)
    if model.closed_form:
        def oracle(theta: np.ndarray) -> dict:
            R = model.predict(theta, X) - Y
            J = model.jacobian(theta, X)  # (n, C, p)
            wR = w[:, None] * R
            return {"loss": float((wR * R).sum()),
                    "grad": 2.0 * np.einsum("nc,ncp->p", wR, J),
                    "gn": 2.0 * np.einsum("n,ncp,ncq->pq", w, J, J)}

        return oracle
    return _torch_grad_oracle(model, X, Y, w, lambda Z, Yt: ((Z - Yt) * (Z - Yt)).sum(dim=1))


def sample_oracle(
    model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray, loss: str = "squared"
) -> Oracle:
    """Oracle of the weighted sample loss sum_j w_j (f_j(theta) - y_j)^2 in PyTorch.

    Parameters
    ----------
    model : Model
    X : ndarray (s, d)
    y : ndarray (s,)
    w : ndarray (s,)
        Importance weights 1 / (s pi_j).
    loss : str
        ``"squared"``, or a loss of :mod:`nldist.models.losses`: then sum_j w_j r_j(theta)^2 with
        its residuals r_j and J_r = dr/df * J.

    Models with closed forms (``model.closed_form``: linear, GLM, relu2) are evaluated in
    NumPy (their own ``predict`` and ``jacobian``, as the distributed passes do): no torch
    import or warm-up for them. Others run on torch.func.
    """
    if model.closed_form:
        return _numpy_oracle(model, X, y, w, loss)
    import torch
    from torch.func import jacfwd, jvp

    Xt = torch.as_tensor(np.asarray(X, dtype=np.float64))
    yt = torch.as_tensor(np.asarray(y, dtype=np.float64))
    wt = torch.as_tensor(np.asarray(w, dtype=np.float64))
    res = None
    if loss != "squared":
        lo = get_loss(loss)
        lo.check(None, np.asarray(y, dtype=np.float64))
        res = lo.torch_residual
    # per-row gradients: a model's own torch_jacobian (torch.func per-sample gradients for
    # networks), else forward-mode over theta (cheap for small p)
    jac = getattr(model, "torch_jacobian", None)

    def fwd(t: Any) -> Any:
        return model.torch_forward(t, Xt)

    def oracle(theta: np.ndarray) -> dict:
        th = torch.as_tensor(theta, dtype=torch.float64)
        with torch.no_grad():
            f = fwd(th)
            J = jac(th, Xt) if jac is not None else jacfwd(fwd)(th)
            if res is None:
                r = f - yt
            else:
                r, dr = jvp(lambda v: res(v, yt), (f,), (torch.ones_like(f),))
                J = J * dr[:, None]
            wr = wt * r
            return {
                "loss": float((wr * r).sum()),
                "grad": (2.0 * (J.T @ wr)).numpy(),
                "gn": (2.0 * (J.T @ (wt[:, None] * J))).numpy(),
            }

    return oracle


def _numpy_oracle(model: Model, X: np.ndarray, y: np.ndarray, w: np.ndarray, loss: str
                  ) -> Oracle:
    """:func:`sample_oracle` in NumPy for closed-form models."""
    y = np.asarray(y, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    lo = None if loss == "squared" else get_loss(loss)
    if lo is not None:
        lo.check(None, y)

    def oracle(theta: np.ndarray) -> dict:
        f = model.predict(theta, X)
        J = model.jacobian(theta, X)
        if lo is None:
            r = f - y
        else:
            r = lo.residual(f, y)
            J = J * lo.dresidual(f, y)[:, None]
        wr = w * r
        return {"loss": float(wr @ r), "grad": 2.0 * (J.T @ wr),
                "gn": 2.0 * (J.T @ (w[:, None] * J))}

    return oracle


# --------------------------------------------------------------------------------------
# Full-data pieces (one row block each; nldist.graph reduces them over blocks)
# --------------------------------------------------------------------------------------


def gn_block(
    model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray, offset: int = 0,
    loss: str = "squared",
) -> dict:
    """Loss, gradient and Gauss-Newton matrix of L = sum (f_i - y_i)^2 on one block.

    With another ``loss`` (:mod:`nldist.models.losses`) the same for L = sum r_i^2, with
    J_r = dr/df * J.

    Returns
    -------
    dict with ``loss`` (float), ``grad`` (p,), ``gn`` (p, p) = 2 J^T J — for
    ``cross_entropy`` the CE's own (loss, gradient) and, for ``softmax:<C>``, its exact
    Hessian (:func:`ce_oracle`; networks have no ``gn``: :func:`fit_cross_entropy`)
    """
    check_finite_block(np.asarray(X), np.asarray(y), offset)
    y = np.asarray(y, dtype=np.float64)
    if loss == "cross_entropy":
        return ce_oracle(model, np.asarray(X, dtype=np.float64), y)(theta)
    if model.n_outputs > 1:
        return multi_squared_oracle(model, np.asarray(X, dtype=np.float64), y)(theta)
    if isinstance(model, CodedModel) and model.sparse_rows:
        return _coded_gn_block(model, theta, X, y, loss)
    if loss == "squared":
        r = model.predict(theta, X) - y
        J = model.jacobian(theta, X)
    else:
        lo = get_loss(loss)
        f = model.predict(theta, X)
        lo.check(f, y)
        r = lo.residual(f, y)
        J = model.jacobian(theta, X) * lo.dresidual(f, y)[:, None]
    return {"loss": float(r @ r), "grad": 2.0 * (J.T @ r), "gn": 2.0 * (J.T @ J)}


def _coded_gn_block(model: CodedModel, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                    loss: str) -> dict:
    """:func:`gn_block` of a GLM over coded categoricals: J_r from the sparse design
    (d0 + k + 1 nonzeros a row), never the dense one-hot Jacobian of the chunk."""
    z = model.linear_index(theta, X)
    act = model.inner.activation  # type: ignore[attr-defined]
    f = act.phi(z)
    r, dr = residual_pair(f, y, loss)
    J = model.sparse_design(X, act.dphi(z) * dr)
    return {"loss": float(r @ r), "grad": 2.0 * np.asarray(J.T @ r).ravel(),
            "gn": 2.0 * (J.T @ J).toarray()}


def combine_sum(parts: list[dict]) -> dict:
    """Sum dicts of arrays/scalars key by key (tree-reduction step)."""
    return {k: sum(p[k] for p in parts) for k in parts[0]}


def losses_block(
    model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray, loss: str = "squared"
) -> np.ndarray:
    """Full-data loss contributions of several parameter vectors at once.

    Parameters
    ----------
    thetas : ndarray (m, p)
    loss : str
        ``"squared"``: sum_i (f(theta_j; x_i) - y_i)^2; another loss: sum_i r_i(theta_j)^2.

    Returns
    -------
    ndarray (m,) over the block's rows
    """
    y = np.asarray(y, dtype=np.float64)
    lo = None if loss == "squared" else get_loss(loss)
    out = np.empty(thetas.shape[0])
    for j, th in enumerate(thetas):
        f = model.predict(th, X)
        if lo is None:
            r = (f - y).reshape(-1)  # multi-output regression: summed over the outputs
        else:
            lo.check(f, y)
            r = lo.residual(f, y)
        out[j] = r @ r
    return out


def estimate_losses(model: Model, thetas: np.ndarray, X: np.ndarray, y: np.ndarray,
                    rate: float, loss: str = "squared") -> tuple[np.ndarray, np.ndarray]:
    """Unbiased estimates of the full-data losses of several thetas from a Bernoulli sample.

    Rows that joined the evaluation sample independently with probability ``rate`` give
    the Horvitz-Thompson estimate ``L̂ = Σ_E ℓ_i / rate`` of ``L = Σ_i ℓ_i`` (the loss of
    :func:`losses_block`), with the unbiased variance estimate
    ``(1 - rate) Σ_E ℓ_i² / rate²``.

    Parameters
    ----------
    thetas : ndarray (m, p)
    X : ndarray (k, d), y : ndarray (k,)
        The evaluation rows.
    rate : float in (0, 1]

    Returns
    -------
    estimate : ndarray (m,)
    standard_error : ndarray (m,) (0 when rate = 1: the exact loss)
    """
    if not 0 < rate <= 1:
        raise NldistError(f"evaluation rate must be in (0, 1], got {rate}")
    est = np.empty(len(thetas))
    se = np.empty(len(thetas))
    for j, th in enumerate(thetas):
        ell = row_losses_block(model, th, X, y, loss) if len(X) else np.zeros(0)
        est[j] = float(ell.sum()) / rate
        se[j] = float(np.sqrt((1.0 - rate) * float(ell @ ell))) / rate
    return est, se


def row_losses_block(model: Model, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                     loss: str = "squared") -> np.ndarray:
    """Per-row loss r_i(theta)^2 (n_b,) of one block (squared: (f_i - y_i)^2; multi-output
    regression: ||f_i - y_i||^2, summed over the outputs)."""
    r2 = np.asarray(get_loss(loss).residual(model.predict(theta, X), y), dtype=np.float64) ** 2
    return r2.sum(axis=1) if r2.ndim == 2 else r2
