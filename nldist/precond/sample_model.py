"""The sample's model matrix, on the driver: H_S(theta) = sum_j w_j H_j(theta), the weighted
Gauss-Newton matrix of the sample rows (:func:`sample_gn`; closed forms, softmax's Kronecker
rows by one SYRK, C-output networks from torch Jacobians), its BFGS corrections from the
full-data curvature pairs (:func:`bfgs`) and its largest eigenvalue by Lanczos
(:func:`top_eigenvalue`: the damping's scale).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.sparse import linalg as sparse_linalg

from nldist.models.base import Model
from nldist.models.losses import check_labels, softmax
from nldist.train import multi_squared_oracle, sample_oracle

#: rows per torch Jacobian batch of a C-output network's sample Gauss-Newton matrix
JAC_ROWS = 256


def sample_gn(model: Model, Xs: np.ndarray, ys: np.ndarray, w: np.ndarray,
              loss: str = "squared") -> Callable[[np.ndarray], np.ndarray]:
    """theta -> H_S(theta) (p, p), the weighted Gauss-Newton matrix of the sample rows in the
    convention of :func:`nldist.train.gn_block` (``2 J^T W J`` for squared losses; the
    cross-entropy's ``sum_j w_j J_j^T (diag pi_j - pi_j pi_j^T) J_j``).

    Closed forms and single-output networks reuse :mod:`nldist.train`'s sample oracles;
    C-output networks take their (s, C, p) Jacobian from torch.func in row batches.
    """
    Xs = model.check_X(Xs)
    w = np.asarray(w, dtype=np.float64)
    if loss == "cross_entropy":
        if getattr(model, "kron_design", None) is not None:
            check_labels(np.asarray(ys).reshape(-1), model.n_outputs)
            return _softmax_gn(model, Xs, w)
        check_labels(np.asarray(ys).reshape(-1), model.n_outputs)
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "cross_entropy")
    if model.n_outputs > 1:
        if model.closed_form:
            oracle = multi_squared_oracle(model, Xs, ys, w)
            return lambda theta: oracle(theta)["gn"]
        return lambda theta: _torch_block_gn(model, theta, Xs, w, "multi")
    oracle = sample_oracle(model, Xs, ys, w, loss)
    return lambda theta: oracle(theta)["gn"]


def _softmax_gn(model: Model, Xs: np.ndarray, w: np.ndarray, step: int = 2048
                ) -> Callable[[np.ndarray], np.ndarray]:
    """theta -> the cross-entropy Hessian ``sum_j w_j (diag pi_j - pi_j pi_j^T) (x) x~_j x~_j^T``
    of a model with Kronecker rows (``softmax:<C>``, ``model.kron_design``): the same matrix
    as :func:`nldist.scores.linalg.kron_gram` of those blocks, formed as its two terms — C
    diagonal blocks ``X~^T diag(w pi_c) X~`` (C n q^2 flops) minus the Gram ``U^T U`` of the
    rows ``u_j = sqrt(w_j) pi_j (x) x~_j`` (one SYRK, n (C q)^2 / 2 flops) — instead of the
    (n, C, C, q) temporary of every row's C x C block (at softmax:10 on Fashion-MNIST, s =
    4,040: 1.3 s a call under load, most of it memory traffic; this 0.1-0.3 s)."""
    Xd = np.asarray(model.kron_design(Xs), dtype=np.float64)
    q = Xd.shape[1]
    sw = np.sqrt(np.maximum(w, 0.0))

    def hessian(theta: np.ndarray) -> np.ndarray:
        P = softmax(model.predict(theta, Xs))
        c = P.shape[1]
        H = np.zeros((c * q, c * q))
        for a in range(0, len(Xd), step):
            x, pw = Xd[a:a + step], P[a:a + step] * w[a:a + step, None]
            for k in range(c):
                H[k * q:(k + 1) * q, k * q:(k + 1) * q] += x.T @ (pw[:, k:k + 1] * x)
            U = ((sw[a:a + step, None] * P[a:a + step])[:, :, None] * x[:, None, :]
                 ).reshape(len(x), c * q)
            H -= U.T @ U
        return 0.5 * (H + H.T)

    return hessian


def _torch_block_gn(model: Model, theta: np.ndarray, X: np.ndarray, w: np.ndarray,
                    loss: str) -> np.ndarray:
    """Gauss-Newton matrix of a C-output network on weighted rows, from its Jacobian."""
    import torch
    from torch.func import jacrev

    th = torch.as_tensor(np.asarray(theta, dtype=np.float64))
    p = th.numel()
    H = np.zeros((p, p))
    for a in range(0, len(X), JAC_ROWS):
        Xt = torch.as_tensor(X[a:a + JAC_ROWS])
        wb = w[a:a + JAC_ROWS]
        with torch.no_grad():
            Z = model.torch_forward(th, Xt).numpy()
        J = jacrev(lambda t, Xt=Xt: model.torch_forward(t, Xt))(th).numpy()  # (b, C, p)
        if loss == "multi":
            H += 2.0 * np.einsum("n,ncp,ncq->pq", wb, J, J)
        else:
            P = softmax(Z)
            PJ = np.einsum("nc,ncp->np", P, J)
            H += np.einsum("n,nc,ncp,ncq->pq", wb, P, J, J) - np.einsum("n,np,nq->pq", wb,
                                                                          PJ, PJ)
    return 0.5 * (H + H.T)


def bfgs(B: np.ndarray, pairs: Any) -> np.ndarray:
    """B updated by BFGS with the curvature pairs (s, y) in order (a pair with y^T s <= 0 or
    s^T B s <= 0 skipped). The rank-2 corrections are kept as vectors (B_k s from B s and
    them: O(p m) each) and added by one GEMM at the end, not as m dense outer products."""
    U: list[np.ndarray] = []
    c: list[float] = []
    for s, y in pairs:
        ys = float(y @ s)
        Bs = B @ s
        if U:
            Um = np.asarray(U)
            Bs = Bs + Um.T @ (np.asarray(c) * (Um @ s))
        sBs = float(s @ Bs)
        if ys <= 1e-12 * float(np.linalg.norm(y) * np.linalg.norm(s)) or sBs <= 0:
            continue
        U += [y, Bs]
        c += [1.0 / ys, -1.0 / sBs]
    if not U:
        return 0.5 * (B + B.T)
    Um = np.asarray(U)
    B = B + (Um.T * np.asarray(c)) @ Um
    return 0.5 * (B + B.T)


def top_eigenvalue(B: np.ndarray, v0: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """The largest eigenvalue of the symmetric B (Lanczos, ARPACK; O(p^2) per product) and its
    vector (the next call's start): the damping's scale without a full eigendecomposition."""
    p = B.shape[0]
    if p <= 64:
        e, V = np.linalg.eigh(B)
        return float(e[-1]), V[:, -1]
    v0 = np.ones(p) if v0 is None else v0
    try:
        e, V = sparse_linalg.eigsh(B, k=1, which="LA", v0=v0, tol=1e-6)
        return float(e[0]), V[:, 0]
    except sparse_linalg.ArpackNoConvergence:
        e, V = np.linalg.eigh(B)
        return float(e[-1]), V[:, -1]
