"""``relu2:<h>`` / ``relu2:<h>:<act>``: a two-layer ReLU net without biases (closed form).

g(theta; x) = sum_j a_j relu(<b_j, x>), theta = [a (h), B (h x d) row-major], no biases,
so g is positively 2-homogeneous and (MATH.md §1, Prop. 3.1) the adjoint of f = phi(g) is
the closed form ``f* = [(phi(g) - phi(0)) / (2 g)] grad g`` — one gradient, no integral,
pure NumPy (no torch on the workers). ``<act>`` is any activation of ``glm:`` (identity
when omitted; sigmoid for classification).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.models.activations import Activation, activation, parse_params
from nldist.models.base import Model
from nldist.models.losses import psi_divdiff

_RELU2_RE = re.compile(
    r"^relu2:(?P<h>\d+)(?::(?P<act>[a-z]+)(?:\((?P<params>[^)]*)\))?)?$"
)


@dataclass
class ReLU2(Model):
    """f = phi(sum_j a_j relu(<b_j, x>)); theta = [a (h), B (h, d) row-major], p = h (d + 1).

    Closed forms (MATH.md §1): with Z = X B^T, g = relu(Z) a,
    ``grad g = [relu(Z), (a 1[Z > 0]) (x) x]`` and
    ``f* = [(phi(g) - phi(0)) / (2 g)] grad g``, the factor being phi'(0) / 2 at g = 0.
    """

    closed_form = True
    hidden: int = 1
    activation: Activation = field(default_factory=lambda: activation("identity", {}))
    homogeneous_degree = 2

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise NldistError(f"relu2 needs at least one hidden unit, got {self.hidden}")
        self.n_params = self.hidden * (self.n_features + 1)

    def _split(self, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h, d = self.hidden, self.n_features
        return theta[:h], theta[h:].reshape(h, d)

    def _inner(self, theta: np.ndarray, X: np.ndarray, scale: np.ndarray | None = None,
               grad: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """g (n,) and, when ``grad``, scale[:, None] * grad g (n, p)."""
        a, B = self._split(theta)
        Z = X @ B.T
        R = np.maximum(Z, 0.0)
        g = R @ a
        if not grad:
            return g, None
        n, h, d = X.shape[0], self.hidden, self.n_features
        c = np.ones(n) if scale is None else scale
        out = np.empty((n, self.n_params), dtype=np.float64)
        np.multiply(R, c[:, None], out=out[:, :h])
        M = np.where(Z > 0, a * c[:, None], 0.0)
        out[:, h:] = (M[:, :, None] * X[:, None, :]).reshape(n, h * d)
        return g, out

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """f(theta; x_i), (n,) float64."""
        theta, X = self.check_theta(theta), self.check_X(X)
        return self.activation.phi(self._inner(theta, X, grad=False)[0])

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """F*(theta), (n, p) float64, closed form (Prop. 3.1 with k = 2)."""
        theta, X = self.check_theta(theta), self.check_X(X)
        g, _ = self._inner(theta, X, grad=False)
        return self._inner(theta, X, 0.5 * self.activation.divdiff(g))[1]

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """d f_i / d theta, (n, p) float64."""
        theta, X = self.check_theta(theta), self.check_X(X)
        g, _ = self._inner(theta, X, grad=False)
        return self._inner(theta, X, self.activation.dphi(g))[1]

    def f0(self, X: Any) -> np.ndarray:
        """f(0; x_i) = phi(0), (n,) float64."""
        return np.full(np.shape(X)[0], self.activation.phi0, dtype=np.float64)

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        """Adjoint of r_i = r(phi(g_i), y_i): Prop. 3.1 with the outer map psi_y = r(phi(.), y)."""
        theta, X = self.check_theta(theta), self.check_X(X)
        g, _ = self._inner(theta, X, grad=False)
        return self._inner(theta, X, 0.5 * psi_divdiff(loss, self.activation, g, y))[1]

    def torch_forward(self, theta: Any, X: Any) -> Any:
        """f(theta; X) on torch tensors (differentiable in theta)."""
        import torch

        h, d = self.hidden, self.n_features
        a, B = theta[:h], theta[h:].reshape(h, d)
        return self.activation.torch_phi(torch.relu(X @ B.T) @ a)

    def torch_jacobian(self, theta: Any, X: Any) -> Any:
        """d f_i / d theta on torch tensors (n, p), closed form."""
        import torch

        h, d = self.hidden, self.n_features
        a, B = theta[:h], theta[h:].reshape(h, d)
        Z = X @ B.T
        R = torch.relu(Z)
        g = R @ a
        with torch.enable_grad():
            gg = g.detach().requires_grad_(True)
            (dphi,) = torch.autograd.grad(self.activation.torch_phi(gg).sum(), gg)
        M = (Z > 0).to(X.dtype) * a
        J = torch.cat([R, (M[:, :, None] * X[:, None, :]).reshape(X.shape[0], h * d)], dim=1)
        return J * dphi[:, None]

    def initial_theta(self, seed: int = 0) -> np.ndarray:
        """Random start (theta = 0 is a stationary point): B ~ N(0, 1/d), a ~ N(0, 1/h)."""
        rng = np.random.default_rng([seed, 2])
        h, d = self.hidden, self.n_features
        return np.concatenate([rng.normal(0, 1 / math.sqrt(h), h),
                               rng.normal(0, 1 / math.sqrt(d), h * d)])


def relu2_spec(spec: str, d: int) -> ReLU2:
    """``relu2:<h>[:<act>[(params)]]``."""
    match = _RELU2_RE.match(spec)
    if not match:
        raise NldistError(f"cannot read model spec {spec!r}; write relu2:<hidden units>, e.g. "
                          "relu2:32 or relu2:32:sigmoid")
    act = activation(match["act"] or "identity", parse_params(match["params"], spec))
    return ReLU2(spec=spec, n_features=d, hidden=int(match["h"]), activation=act)
