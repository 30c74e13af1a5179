"""``softmax:<C>[:nobias]``: multinomial logistic regression, the closed-form C-class model.

The model's outputs are the C logits ``z_i = W x~_i`` (W of shape (C, d + 1), theta its rows
one after the other: ``theta[c (d+1) + j] = W[c, j]``, the bias last in each row); the
softmax and the loss act on them (:class:`nldist.models.losses.VectorLoss`). The logits are
linear in theta, so the adjoint block of every row is exact and label-free:

    A_i = int_0^1 J_i(t theta) dt = I_C (x) x~_i^T          (C, C (d+1))

and the block leverage of ``block-leverage`` is the diagonal block of the GLM hat matrix
``W^1/2 X (X^T W X)^+ X^T W^1/2`` with the softmax Fisher weights (MATH.md §6; tested against
a dense computation). A scalar of the logits — the cross-entropy residual
``r_i = sqrt(CE_i)`` or the margin — has adjoint ``g_i (x) x~_i`` with the ray mean
``g_i = int_0^1 grad_z r(t z_i) dt`` (C,), integrated here by composite Gauss-Legendre with
per-row escalation until (ID) ``<g_i, z_i> = r(z_i) - r(0)`` holds to ``rtol``.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.models.base import Model
from nldist.models.gauss import gauss_legendre

log = logging.getLogger("nldist")

SOFTMAX_RE = re.compile(r"^softmax:(?P<C>\d+)(?P<nobias>:nobias)?$")
#: nodes per piece and the largest number of pieces of the ray integral
RAY_NODES = 16
RAY_MAX_PIECES = 512
RAY_RTOL = 1e-13


def ray_mean_grad(loss: Any, Z: np.ndarray, y: np.ndarray, rtol: float = RAY_RTOL
                  ) -> tuple[np.ndarray, int]:
    """``g_i = int_0^1 grad_z r(t z_i, y_i) dt`` (n, C) for a scalar r of the logits.

    Composite Gauss-Legendre (:data:`RAY_NODES` per piece) on 1, 2, 4, ... pieces, row by
    row until ``|<g_i, z_i> - r(z_i) + r(0)| <= rtol * (|r(z_i)| + |r(0)| + <|g_i|, |z_i|>)``
    (the identity (ID) of the ray), up to :data:`RAY_MAX_PIECES` pieces.

    Parameters
    ----------
    loss : VectorLoss
        ``cross_entropy`` (r = sqrt(CE)) or ``margin``.
    Z : ndarray (n, C)
        Logits at theta.
    y : ndarray (n,)
        Integer labels.

    Returns
    -------
    g : ndarray (n, C)
    unconverged : int
        Rows still above ``rtol`` at the largest rule.
    """
    Z = np.asarray(Z, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    n, C = Z.shape
    out = np.empty_like(Z)
    r1 = loss.residual(Z, y)
    r0 = loss.residual(np.zeros_like(Z), y)
    todo = np.arange(n)
    t0, w0 = gauss_legendre(RAY_NODES)
    pieces = 1
    while todo.size:
        edges = np.linspace(0.0, 1.0, pieces + 1)
        t = (edges[:-1, None] + np.diff(edges)[:, None] * t0[None, :]).ravel()
        w = np.tile(w0, pieces) / pieces
        Zt = Z[todo]
        # rows x nodes at a time, a few MB
        step = max(1, (1 << 20) // max(1, t.size * C))
        g = np.empty((todo.size, C))
        for a in range(0, todo.size, step):
            zs = Zt[a:a + step]
            k = zs.shape[0]
            G = loss.grad_logits((t[None, :, None] * zs[:, None, :]).reshape(-1, C),
                                 np.repeat(y[todo[a:a + step]], t.size))
            g[a:a + step] = np.einsum("m,kmc->kc", w, G.reshape(k, t.size, C))
        res = np.abs(np.einsum("kc,kc->k", g, Zt) - (r1[todo] - r0[todo]))
        scale = np.abs(r1[todo]) + np.abs(r0[todo]) + np.einsum("kc,kc->k", np.abs(g),
                                                                 np.abs(Zt))
        ok = res <= rtol * np.maximum(scale, np.finfo(float).tiny)
        last = pieces >= RAY_MAX_PIECES
        done = np.ones_like(ok) if last else ok
        out[todo[done]] = g[done]
        unconverged = int((~ok).sum()) if last else 0
        todo = todo[~done]
        pieces *= 2
    return out, (unconverged if n else 0)


@dataclass
class Softmax(Model):
    """Multinomial logistic regression with C outputs (the logits), see the module docstring.

    theta layout: W (C, d + 1) row-major (p = C (d + 1)); ``:nobias`` drops the bias column.
    """

    closed_form = True
    n_classes: int = 2
    bias: bool = True

    def __post_init__(self) -> None:
        if self.n_classes < 2:
            raise NldistError(f"softmax needs C >= 2 classes, got {self.n_classes}; write "
                              "softmax:<C> with C the number of classes")
        self.n_outputs = int(self.n_classes)
        self.n_params = self.n_classes * (self.n_features + int(self.bias))

    @property
    def has_bias(self) -> bool:
        return self.bias

    def _W(self, theta: np.ndarray) -> np.ndarray:
        return np.asarray(theta, dtype=np.float64).reshape(self.n_classes, -1)

    def kron_design(self, X: Any) -> np.ndarray:
        """x~_i = [x_i, 1] (n, d + 1) float64: the logits' Jacobian is I_C (x) x~_i^T (the
        block kinds use this structure, :class:`nldist.scores.rows.BlockRows`)."""
        return self._design(self.check_X(X))

    def _design(self, X: np.ndarray) -> np.ndarray:
        if not self.bias:
            return X
        out = np.empty((X.shape[0], self.n_features + 1))
        out[:, :-1] = X
        out[:, -1] = 1.0
        return out

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """Logits z_i (n, C) float64."""
        theta, X = self.check_theta(theta), self.check_X(X)
        W = self._W(theta)
        Z = X @ W[:, : self.n_features].T
        return Z + W[:, -1] if self.bias else Z

    def output_adjoint(self, theta: Any, X: Any, V: Any) -> np.ndarray:
        """``V_i (x) x~_i`` (n, p): exact, the logits are linear in theta."""
        X = self.check_X(X)
        V = np.asarray(V, dtype=np.float64)
        Xd = self._design(X)
        return (V[:, :, None] * Xd[:, None, :]).reshape(X.shape[0], -1)

    def adjoint_block(self, theta: Any, X: Any) -> np.ndarray:
        """``I_C (x) x~_i^T`` (n, C, p), exact."""
        X = self.check_X(X)
        n, C = X.shape[0], self.n_classes
        Xd = self._design(X)
        q = Xd.shape[1]
        out = np.zeros((n, C, C * q))
        for c in range(C):
            out[:, c, c * q:(c + 1) * q] = Xd
        return out

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """d z_i / d theta (n, C, p) (the adjoint block: the logits are linear)."""
        return self.adjoint_block(theta, X)

    def vjp(self, theta: Any, X: Any, G: Any) -> np.ndarray:
        """``sum_i J_i^T G_i`` (p,) for G (n, C): the gradient of a loss with dL/dz = G."""
        X = self.check_X(X)
        return (np.asarray(G, dtype=np.float64).T @ self._design(X)).ravel()

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        """Adjoint of r_i = r(z_i(theta), y_i): ``g_i (x) x~_i`` with the ray mean g_i."""
        theta, X = self.check_theta(theta), self.check_X(X)
        g, bad = ray_mean_grad(loss, self.predict(theta, X), y)
        if bad:
            log.warning(
                "softmax ray integral: %d row(s) did not reach (ID) rtol %.0e", bad, RAY_RTOL)
        return self.output_adjoint(theta, X, g)

    def f0(self, X: Any) -> np.ndarray:
        """The logits at theta = 0: zeros (n, C)."""
        return np.zeros((np.shape(X)[0], self.n_classes))

    def torch_forward(self, theta: Any, X: Any) -> Any:
        """Logits (n, C) on tensors."""
        W = theta.reshape(self.n_classes, -1)
        Z = X @ W[:, : self.n_features].T
        return Z + W[:, -1] if self.bias else Z

    def memory_per_row(self, augmented: bool = True) -> int:
        return 3 * 8 * (self.n_params + int(augmented)) + 8 * 4 * self.n_classes * RAY_NODES


def softmax_spec(spec: str, d: int) -> Softmax:
    """``softmax:<C>[:nobias]``."""
    match = SOFTMAX_RE.match(spec)
    if not match:
        raise NldistError(f"cannot read model spec {spec!r}; write softmax:<C> (C >= 2 classes),"
                          " e.g. softmax:10, or softmax:<C>:nobias")
    return Softmax(spec=spec, n_features=d, n_classes=int(match["C"]),
                   bias=not match["nobias"])
