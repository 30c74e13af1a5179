"""Output maps phi of the models: phi, phi', the stable divided difference (phi(z) - phi(0)) / z,
and their torch forms (pure NumPy; torch only when a torch form is called).

All NumPy computation is in float64, so the identity (ID) f(theta) = f(0) + <theta, f*(theta)>
holds to float64 rounding for every closed-form model built on these maps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import special

from nldist.errors import NldistError

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

    def __repr__(self) -> str:  # its spec name, not the addresses of its functions
        return f"Activation({self.name!r})"


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


def activation(name: str, params: dict[str, float]) -> Activation:
    """The activation ``name`` (``swish`` takes c1, c2, zeta) or a one-line error."""
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


def parse_params(text: str | None, spec: str) -> dict[str, float]:
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
