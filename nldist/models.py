"""Model specs and closed-form nonlinear adjoints (pure NumPy / torch, no Dask).

A :class:`Model` maps parameters ``theta`` (p,) and rows ``X`` (n, d) to outputs (n,).
Every model provides, as arrays in and arrays out:

* ``predict(theta, X)``  -> (n,)   f(theta; x_i)
* ``adjoint(theta, X)``  -> (n, p) f*_i(theta) = int_0^1 grad f_i(t theta) dt   (MATH.md §1)
* ``jacobian(theta, X)`` -> (n, p) grad f_i(theta) (used by the Gauss-Newton trainer)
* ``f0(X)``              -> (n,)   f(0; x_i), the offset column of the dual matrix
* ``torch_forward(theta, X)``      the same map on torch tensors (training on the sample)

Model specs (DESIGN.md): ``linear``, ``linear:nobias``, ``glm:<act>``, ``glm:<act>:nobias``
with ``act`` in identity, sigmoid, tanh, softplus, exp, swish (``swish(c1=..,c2=..,zeta=..)``).
All NumPy computation is in float64 whatever the input dtype, so the identity (ID)
``f(theta) = f(0) + <theta, f*(theta)>`` holds to float64 rounding for every row.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special

from nldist.errors import NldistError

# --------------------------------------------------------------------------------------
# Activations: phi, phi', and the stable divided difference (phi(z) - phi(0)) / z
# --------------------------------------------------------------------------------------

_SMALL = 1e-4  # |z| below which the divided differences switch to a Taylor series


def _tanhc(u: np.ndarray) -> np.ndarray:
    """tanh(u) / u, exact to float64 rounding including u = 0 (series 1 - u^2/3 near 0)."""
    small = np.abs(u) < _SMALL
    safe = np.where(small, 1.0, u)
    return np.where(small, 1.0 - u * u / 3.0, np.tanh(safe) / safe)


def _softplus_dd(z: np.ndarray) -> np.ndarray:
    """(softplus(z) - log 2) / z without cancellation: log1p(expm1(z)/2)/z, series near 0."""
    small = np.abs(z) < _SMALL
    safe = np.where(small, 1.0, z)
    mid = np.minimum(safe, 30.0)
    big = np.logaddexp(0.0, safe) - math.log(2.0)
    num = np.where(safe > 30.0, big, np.log1p(np.expm1(mid) / 2))
    return np.where(small, 0.5 + z / 8.0 - z**3 / 192.0, num / safe)


@dataclass(frozen=True)
class Activation:
    """A scalar output map phi with NumPy and torch forms.

    Attributes
    ----------
    name : str
        Spec name, e.g. ``"sigmoid"`` or ``"swish(c1=1,c2=2,zeta=1)"``.
    phi, dphi, divdiff : callable ndarray -> ndarray
        phi(z), phi'(z) and (phi(z) - phi(0)) / z (stable at z = 0, where it is phi'(0)).
    torch_phi : callable Tensor -> Tensor
    phi0 : float
        phi(0).
    """

    name: str
    phi: Callable[[np.ndarray], np.ndarray]
    dphi: Callable[[np.ndarray], np.ndarray]
    divdiff: Callable[[np.ndarray], np.ndarray]
    torch_phi: Callable[[Any], Any]
    phi0: float


def _torch():
    import torch

    return torch


def _swish(c1: float = 1.0, c2: float = 2.0, zeta: float = 1.0) -> Activation:
    """phi(t) = t (sqrt(c1) + (sqrt(c2) - sqrt(c1)) sigmoid(zeta t)), MATH.md §5."""
    if not (0 < c1 <= c2):
        raise NldistError(f"swish needs 0 < c1 <= c2, got c1={c1}, c2={c2}; fix the model spec")
    a, b = math.sqrt(c1), math.sqrt(c2) - math.sqrt(c1)

    def divdiff(z):
        return a + b * special.expit(zeta * z)

    def dphi(z):
        s = special.expit(zeta * z)
        return a + b * (s + z * zeta * s * (1.0 - s))

    return Activation(
        name=f"swish(c1={c1:g},c2={c2:g},zeta={zeta:g})",
        phi=lambda z: z * divdiff(z),
        dphi=dphi,
        divdiff=divdiff,
        torch_phi=lambda z: z * (a + b * _torch().sigmoid(zeta * z)),
        phi0=0.0,
    )


def _activation(name: str, params: dict[str, float]) -> Activation:
    if name == "swish":
        return _swish(**params)
    if params:
        raise NldistError(f"activation {name!r} takes no parameters; remove '({params})'")
    if name == "identity":
        return Activation("identity", lambda z: z, np.ones_like, np.ones_like, lambda z: z, 0.0)
    if name == "sigmoid":
        return Activation(
            "sigmoid",
            special.expit,
            lambda z: special.expit(z) * special.expit(-z),
            lambda z: 0.25 * _tanhc(z / 2.0),
            lambda z: _torch().sigmoid(z),
            0.5,
        )
    if name == "tanh":
        return Activation(
            "tanh",
            np.tanh,
            lambda z: 1.0 - np.tanh(z) ** 2,
            _tanhc,
            lambda z: _torch().tanh(z),
            0.0,
        )
    if name == "softplus":
        return Activation(
            "softplus",
            lambda z: np.logaddexp(0.0, z),
            special.expit,
            _softplus_dd,
            lambda z: _torch().logaddexp(z, _torch().zeros_like(z)),
            math.log(2.0),
        )
    if name == "exp":
        return Activation("exp", np.exp, np.exp, special.exprel, lambda z: _torch().exp(z), 1.0)
    raise NldistError(
        f"unknown activation {name!r}; use one of identity, sigmoid, tanh, softplus, exp, swish"
    )


ACTIVATIONS = ("identity", "sigmoid", "tanh", "softplus", "exp", "swish")

# --------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------


@dataclass
class Model:
    """Base class: a model spec bound to a number of input features.

    Subclasses implement ``predict``, ``adjoint``, ``jacobian``, ``f0`` and
    ``torch_forward``. Use :func:`get_model` to build one from a spec string.
    """

    spec: str
    n_features: int
    n_params: int = field(init=False)

    # -- validation -----------------------------------------------------------------
    def check_theta(self, theta: Any) -> np.ndarray:
        """Return theta as a float64 (p,) array or raise a one-line error."""
        if hasattr(theta, "detach"):
            theta = theta.detach().cpu().numpy()
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim != 1 or t.shape[0] != self.n_params:
            raise NldistError(
                f"theta has shape {t.shape} but model {self.spec!r} with {self.n_features} "
                f"features has p = {self.n_params} parameters; pass a 1-D vector of length "
                f"{self.n_params}"
            )
        if not np.all(np.isfinite(t)):
            raise NldistError("theta contains NaN or inf; pass finite parameters")
        return t

    def check_X(self, X: Any) -> np.ndarray:
        """Return X as a float64 (n, d) array or raise a one-line error."""
        X = np.asarray(X)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise NldistError(
                f"X has shape {X.shape} but model {self.spec!r} expects (n, {self.n_features}); "
                f"build the model with n_features={X.shape[-1] if X.ndim else 0} or fix X"
            )
        if not np.issubdtype(X.dtype, np.number) or np.issubdtype(X.dtype, np.complexfloating):
            raise NldistError(f"X has dtype {X.dtype}; convert it to float32 or float64")
        return X.astype(np.float64, copy=False)

    # -- interface ------------------------------------------------------------------
    # The NumPy methods below default to the torch path of :mod:`nldist.quadrature`
    # (float64 unless configured otherwise), so a subclass that only implements
    # ``torch_forward`` gets all of them; closed forms override them (GLM, relu2).
    # ``homogeneous_degree`` (k) may be declared by models whose output is positively
    # k-homogeneous in theta; they then provide a one-gradient adjoint themselves.
    homogeneous_degree = None

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """f(theta; x_i) for every row, (n,) float64 (default: the torch forward)."""
        from nldist import quadrature

        return quadrature.predict(self, self.check_theta(theta), self.check_X(X))

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """F*(theta), (n, p) float64 (default: Gauss-Legendre quadrature along t theta)."""
        from nldist import quadrature

        return quadrature.adjoint(self, self.check_theta(theta), self.check_X(X))

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """d f_i / d theta, (n, p) float64 (default: torch.func per-row gradients)."""
        from nldist import quadrature

        return quadrature.jacobian(self, self.check_theta(theta), self.check_X(X))

    def f0(self, X: Any) -> np.ndarray:
        """f(0; x_i), (n,) float64 (default: the torch forward at theta = 0)."""
        from nldist import quadrature

        return quadrature.predict(self, np.zeros(self.n_params), self.check_X(X))

    def torch_forward(self, theta: Any, X: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_theta(self, seed: int = 0) -> np.ndarray:
        """Default starting point of training (zeros; nets override: 0 is a saddle there)."""
        return np.zeros(self.n_params)

    @property
    def has_bias(self) -> bool:
        """Whether the last parameter is an intercept (linear scores then add a 1-column)."""
        return False


@dataclass
class GLM(Model):
    """Single-index model f = act(<w, x> + b) (or act(<w, x>) without bias).

    theta layout: ``[w_1..w_d, b]`` (p = d + 1) or ``w`` (p = d) for ``:nobias``.
    Adjoint (MATH.md §1): f* = [(phi(z) - phi(0)) / z] * [x, 1], z = <theta, [x, 1]>.
    """

    activation: Activation = field(default_factory=lambda: _activation("identity", {}))
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


# --------------------------------------------------------------------------------------
# Spec parsing
# --------------------------------------------------------------------------------------

_GLM_RE = re.compile(r"^glm:(?P<act>[a-z0-9_]+)(?:\((?P<params>[^)]*)\))?(?P<nobias>:nobias)?$")

SPEC_HELP = (
    "linear, linear:nobias, glm:<act>, glm:<act>:nobias with act in "
    + ", ".join(ACTIVATIONS)
    + " (e.g. glm:swish(c1=1,c2=2,zeta=1))"
)

# Other modules (relu2, torch models) register parsers here: prefix -> factory(spec, d).
_SPEC_PARSERS: dict[str, Callable[[str, int], Model]] = {}


def register_spec(prefix: str, factory: Callable[[str, int], Model]) -> None:
    """Register a model-spec prefix (``"relu2"``, ``"torch"``) with a factory(spec, d)."""
    _SPEC_PARSERS[prefix] = factory


def _parse_params(text: str | None, spec: str) -> dict[str, float]:
    params: dict[str, float] = {}
    if not text:
        return params
    for item in text.split(","):
        key, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            params[key.strip()] = float(value)
        except ValueError:
            raise NldistError(
                f"cannot read parameter {item!r} in model spec {spec!r}; write key=number, "
                "e.g. glm:swish(c1=1,c2=2,zeta=1)"
            ) from None
    unknown = set(params) - {"c1", "c2", "zeta"}
    if unknown:
        raise NldistError(
            f"unknown parameter(s) {sorted(unknown)} in {spec!r}; swish takes c1, c2, zeta"
        )
    return params


def get_model(spec: str, n_features: int) -> Model:
    """Build a model from a spec string.

    Parameters
    ----------
    spec : str
        Model spec, see the table in DESIGN.md (``"linear"``, ``"glm:sigmoid"``, ...).
    n_features : int
        Number of input columns d.

    Returns
    -------
    Model
        With ``n_params`` (p) and the array methods of :class:`Model`.
    """
    if not isinstance(spec, str):
        raise NldistError(f"model spec must be a string like 'glm:sigmoid', got {spec!r}")
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
        raise NldistError(f"n_features must be a positive integer, got {n_features!r}")
    if n_features < 1:
        raise NldistError(f"n_features must be >= 1, got {n_features}; check the data has columns")
    spec = spec.strip().replace(" ", "")
    d = int(n_features)
    if spec in ("linear", "linear:nobias"):
        m = GLM(spec=spec, n_features=d, bias=spec == "linear")
        return m
    match = _GLM_RE.match(spec)
    if match:
        act = _activation(match["act"], _parse_params(match["params"], spec))
        return GLM(spec=spec, n_features=d, activation=act, bias=not match["nobias"])
    prefix = spec.split(":", 1)[0]
    if prefix not in _SPEC_PARSERS:
        import nldist.nets  # noqa: F401 - registers relu2 and torch (lazy: no torch import)
    if prefix in _SPEC_PARSERS:
        return _SPEC_PARSERS[prefix](spec, d)
    known = SPEC_HELP + "".join(f", {p}:..." for p in _SPEC_PARSERS)
    raise NldistError(f"unknown model spec {spec!r}; use one of {known}")
