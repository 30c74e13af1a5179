"""Closed-form single-index models: ``linear``, ``linear:nobias``, ``glm:<act>[:nobias]``.

f = act(<w, x> + b); the nonlinear adjoint (MATH.md §1) is
``f* = [(phi(z) - phi(0)) / z] * [x, 1]`` with z = <theta, [x, 1]>, exact to float64
rounding at every z (z = 0 included) through the stable divided differences of
:mod:`nldist.models.activations`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.models.activations import ACTIVATIONS, Activation, activation, parse_params
from nldist.models.base import Model
from nldist.models.losses import Loss, psi_divdiff

GLM_RE = re.compile(r"^glm:(?P<act>[a-z0-9_]+)(?:\((?P<params>[^)]*)\))?(?P<nobias>:nobias)?$")

SPEC_HELP = (
    "linear, linear:nobias, glm:<act>, glm:<act>:nobias with act in "
    + ", ".join(ACTIVATIONS)
    + " (e.g. glm:swish(c1=1,c2=2,zeta=1))"
)


@dataclass
class GLM(Model):
    """Single-index model f = act(<w, x> + b) (or act(<w, x>) without bias).

    theta layout: ``[w_1..w_d, b]`` (p = d + 1) or ``w`` (p = d) for ``:nobias``.
    Adjoint (MATH.md §1): f* = [(phi(z) - phi(0)) / z] * [x, 1], z = <theta, [x, 1]>.
    """

    closed_form = True
    activation: Activation = field(default_factory=lambda: activation("identity", {}))
    bias: bool = True

    def __post_init__(self) -> None:
        self.n_params = self.n_features + int(self.bias)

    @property
    def has_bias(self) -> bool:
        return self.bias

    def _z(self, theta: np.ndarray, X: np.ndarray) -> np.ndarray:
        z = X @ theta[: self.n_features]
        return z + theta[-1] if self.bias else z

    def _design(self, X: np.ndarray, scale: np.ndarray) -> np.ndarray:
        out = np.empty((X.shape[0], self.n_params), dtype=np.float64)
        np.multiply(X, scale[:, None], out=out[:, : self.n_features])
        if self.bias:
            out[:, -1] = scale
        return out

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """f(theta; x_i) for every row. Returns (n,) float64."""
        theta, X = self.check_theta(theta), self.check_X(X)
        return self.activation.phi(self._z(theta, X))

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """Nonlinear adjoint F*(theta), (n, p) float64, closed form."""
        theta, X = self.check_theta(theta), self.check_X(X)
        return self._design(X, self.activation.divdiff(self._z(theta, X)))

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Loss) -> np.ndarray:
        """Adjoint of r_i = r(phi(z_i), y_i), closed form ``psi_divdiff(z) * [x, 1]``."""
        return self._design(X, psi_divdiff(loss, self.activation, self._z(theta, X), y))

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """Jacobian d f_i / d theta, (n, p) float64."""
        theta, X = self.check_theta(theta), self.check_X(X)
        return self._design(X, self.activation.dphi(self._z(theta, X)))

    def f0(self, X: Any) -> np.ndarray:
        """f(0; x_i) = phi(0) for every row, (n,) float64."""
        return np.full(np.shape(X)[0], self.activation.phi0, dtype=np.float64)

    def torch_forward(self, theta: Any, X: Any) -> Any:
        """f(theta; X) on torch tensors (differentiable in theta)."""
        z = X @ theta[: self.n_features]
        if self.bias:
            z = z + theta[-1]
        return self.activation.torch_phi(z)


def linear_spec(spec: str, d: int) -> GLM:
    """``linear`` / ``linear:nobias``."""
    return GLM(spec=spec, n_features=d, bias=spec == "linear")


def glm_spec(spec: str, d: int) -> GLM:
    """``glm:<act>[(params)][:nobias]``."""
    match = GLM_RE.match(spec)
    if not match:
        raise NldistError(f"cannot read model spec {spec!r}; use one of {SPEC_HELP}")
    act = activation(match["act"], parse_params(match["params"], spec))
    return GLM(spec=spec, n_features=d, activation=act, bias=not match["nobias"])


def swish_ratio(model: Model) -> float:
    """c2 / c1 of a ``glm:swish(...)`` model: nonlinear <= (c2/c1) x linear leverage.

    Sampling by linear leverage with s scaled by this ratio then carries the nonlinear
    leverage guarantee for every theta (MATH.md §5, Example 3.3).
    """
    spec = getattr(model, "spec", "")
    match = re.match(r"^glm:swish(?:\((?P<params>[^)]*)\))?(?::nobias)?$", spec)
    glm = getattr(model, "inner", model)  # over coded categoricals: the wrapped GLM
    if not isinstance(glm, GLM) or not match:
        raise NldistError(f"the swish bound needs a glm:swish model, got {spec!r}; set model: "
                          "glm:swish(c1=..,c2=..) or drop swish_bound")
    params = {"c1": 1.0, "c2": 2.0, **parse_params(match["params"], spec)}
    return params["c2"] / params["c1"]
