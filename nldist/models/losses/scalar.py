"""Losses of a scalar output through their signed-root residual r(f, y) (MATH.md §6): the
:class:`Loss` interface (NumPy and torch forms, the form from a logit where one exists) and
one class per loss — :class:`Squared`, :class:`BCE`, :class:`Poisson` — and the stable
divided difference :func:`psi_divdiff` the closed-form adjoints use.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit as special_expit

from nldist.errors import NldistError
from nldist.models.gauss import gauss_legendre

BCE_EPS = 1e-12
_SERIES_TERMS = 18


def _g0(u: np.ndarray) -> np.ndarray:
    """(u - log1p(u)) / u^2 for u > -1, without cancellation (series for |u| < 0.1)."""
    u = np.asarray(u, dtype=np.float64)
    small = np.abs(u) < 0.1
    us = np.where(small, u, 0.0)
    ser = np.zeros_like(u)
    for k in range(_SERIES_TERMS - 1, -1, -1):  # sum_k (-u)^k / (k + 2), Horner
        ser = 1.0 / (k + 2) - us * ser
    ub = np.where(small, 1.0, u)
    with np.errstate(divide="ignore", invalid="ignore"):
        direct = (ub - np.log1p(ub)) / (ub * ub)
    return np.where(small, ser, direct)


def _g0_torch(u: Any) -> Any:
    import torch

    small = u.abs() < 0.1
    us = torch.where(small, u, torch.zeros_like(u))
    ser = torch.zeros_like(u)
    for k in range(_SERIES_TERMS - 1, -1, -1):
        ser = 1.0 / (k + 2) - us * ser
    ub = torch.where(small, torch.ones_like(u), u)
    return torch.where(small, ser, (ub - torch.log1p(ub)) / (ub * ub))


@dataclass(frozen=True)
class Loss:
    """A loss of a scalar output through its signed-root residual r(f, y): the interface
    every scalar loss implements (NumPy and torch forms), one subclass per loss, registered
    by name (:data:`nldist.models.losses.REGISTRY`, :func:`~nldist.models.losses.get_loss`).

    Attributes
    ----------
    name : str
        The loss's name in the registry (a class attribute).
    logit_of : str or None
        The output map (an activation's name) whose logit this loss is computed from
        exactly (:meth:`residual_logit`, ...): ``"sigmoid"`` for ``bce``; None when the
        loss has no such form.
    """

    name: ClassVar[str] = ""
    logit_of: ClassVar[str | None] = None
    vector: ClassVar[bool] = False

    # -- checks ------------------------------------------------------------------------
    def check(self, f: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        """Raise a one-line error when labels or model outputs are outside the domain
        (nothing to check by default)."""

    # -- NumPy ---------------------------------------------------------------------------
    def residual(self, f: Any, y: Any) -> np.ndarray:
        """r(f, y), elementwise (broadcasting), float64."""
        raise NotImplementedError

    def dresidual(self, f: Any, y: Any) -> np.ndarray:
        """dr/df (f, y), elementwise, float64."""
        raise NotImplementedError

    # -- torch -------------------------------------------------------------------------
    def torch_residual(self, f: Any, y: Any) -> Any:
        """r(f, y) on tensors, differentiable in f with finite derivatives everywhere."""
        raise NotImplementedError

    def torch_post(self) -> Any:
        """post-map (out, y) -> r for :mod:`nldist.models.quadrature`."""
        return lambda out, y: self.torch_residual(out, y)

    # -- from the logit of :attr:`logit_of` (only where it is set) ------------------------
    def residual_logit(self, z: Any, y: Any) -> np.ndarray:
        """r(phi(z), y) from the logit z, phi the output map :attr:`logit_of`."""
        raise NldistError(f"loss {self.name!r} has no form from a logit")

    def dresidual_logit(self, z: Any, y: Any) -> np.ndarray:
        """d r(phi(z), y) / dz."""
        raise NldistError(f"loss {self.name!r} has no form from a logit")

    def torch_residual_logit(self, z: Any, y: Any) -> Any:
        """r(phi(z), y) on tensors, from the logit."""
        raise NldistError(f"loss {self.name!r} has no form from a logit")

    def torch_post_logit(self) -> Any:
        """post-map on the logit of a :attr:`logit_of` output, flagged ``on_logit``."""

        def post(z: Any, y: Any) -> Any:
            return self.torch_residual_logit(z, y)

        post.on_logit = True  # type: ignore[attr-defined]
        return post


class Squared(Loss):
    """``squared``: l = (f - y)^2, r = f - y."""

    name = "squared"

    def residual(self, f: Any, y: Any) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return f - y

    def dresidual(self, f: Any, y: Any) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        return np.ones(np.broadcast(f, y).shape)

    def torch_residual(self, f: Any, y: Any) -> Any:
        return f - y


class BCE(Loss):
    """``bce``: binary cross-entropy of a probability output f in (0, 1), labels in [0, 1]
    (see the module docstring); also computed from the logit z of a sigmoid output."""

    name = "bce"
    logit_of = "sigmoid"

    def check(self, f: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        if y is not None and (np.any(y < 0) or np.any(y > 1)):
            raise NldistError("loss 'bce' needs labels in [0, 1]; ingest a binary target "
                              "(dataset.classes: [A, B]) or use loss: squared")
        if f is not None and (np.any(f < 0) or np.any(f > 1)):
            raise NldistError("loss 'bce' needs model outputs in (0, 1); use a sigmoid "
                              "output (glm:sigmoid, relu2:<h>:sigmoid, a torch module "
                              "ending in nn.Sigmoid) or loss: squared")

    def residual(self, f: Any, y: Any) -> np.ndarray:
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        f, y = np.broadcast_arrays(np.clip(f, BCE_EPS, 1 - BCE_EPS), y)
        d = f - y
        with np.errstate(invalid="ignore", divide="ignore"):
            r1 = -np.sqrt(-np.log(f))
            r0 = np.sqrt(-np.log1p(-f))
            soft = (y > 0) & (y < 1)
            ys = np.where(soft, y, 0.5)
            G = _g0(d / ys) / ys + _g0(-d / (1 - ys)) / (1 - ys)
            rs = d * np.sqrt(G)
        return np.where(y >= 1, r1, np.where(y <= 0, r0, rs))

    def dresidual(self, f: Any, y: Any) -> np.ndarray:
        """dr/df (f, y), elementwise, float64 (0 where f is clipped)."""
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        inside = (f > BCE_EPS) & (f < 1 - BCE_EPS)
        fc = np.clip(f, BCE_EPS, 1 - BCE_EPS)
        fc, y = np.broadcast_arrays(fc, y)
        d = fc - y
        with np.errstate(invalid="ignore", divide="ignore"):
            soft = (y > 0) & (y < 1)
            ys = np.where(soft, y, 0.5)
            s_soft = np.sqrt(_g0(d / ys) / ys + _g0(-d / (1 - ys)) / (1 - ys))
            s_hard = self.residual(fc, y) / np.where(d == 0, 1.0, d)
            s = np.where(soft, s_soft, s_hard)
            out = 1.0 / (2.0 * fc * (1 - fc) * s)
        return np.where(inside, out, 0.0)

    def torch_residual(self, f: Any, y: Any) -> Any:
        import torch

        f = torch.clamp(f, BCE_EPS, 1 - BCE_EPS)
        d = f - y
        hard1, hard0 = y >= 1, y <= 0
        soft = ~(hard0 | hard1)
        ys = torch.where(soft, y, torch.full_like(y, 0.5))
        ds = torch.where(soft, d, torch.zeros_like(d))  # keep the unused branch finite
        G = _g0_torch(ds / ys) / ys + _g0_torch(-ds / (1 - ys)) / (1 - ys)
        rs = ds * torch.sqrt(G)
        f1 = torch.where(hard1, f, torch.full_like(f, 0.5))
        f0 = torch.where(hard0, f, torch.full_like(f, 0.5))
        r1 = -torch.sqrt(-torch.log(f1))
        r0 = torch.sqrt(-torch.log1p(-f0))
        return torch.where(hard1, r1, torch.where(hard0, r0, rs))

    # -- from the logit z (f = sigmoid(z)): no loss of digits when f saturates -----------
    def residual_logit(self, z: Any, y: Any) -> np.ndarray:
        """r(sigmoid(z), y), computed from z (float64, elementwise)."""
        z, y = np.broadcast_arrays(np.asarray(z, dtype=np.float64), np.asarray(y, np.float64))
        sp_neg, sp_pos = np.logaddexp(0.0, -z), np.logaddexp(0.0, z)  # -log f, -log(1-f)
        f = special_expit(z)
        d = f - y
        soft = (y > 0) & (y < 1)
        ys = np.where(soft, y, 0.5)
        with np.errstate(invalid="ignore", divide="ignore"):
            near = soft & (np.abs(d) <= 0.5 * np.minimum(ys, 1 - ys))
            ds = np.where(near, d, 0.0)
            r_near = ds * np.sqrt(_g0(ds / ys) / ys + _g0(-ds / (1 - ys)) / (1 - ys))
            ent = -(ys * np.log(ys) + (1 - ys) * np.log1p(-ys))
            r_far = np.sign(d) * np.sqrt(np.maximum(ys * sp_neg + (1 - ys) * sp_pos - ent, 0.0))
        r_soft = np.where(near, r_near, r_far)
        return np.where(y >= 1, -np.sqrt(sp_neg), np.where(y <= 0, np.sqrt(sp_pos), r_soft))

    def dresidual_logit(self, z: Any, y: Any) -> np.ndarray:
        """d r(sigmoid(z), y) / dz (float64, elementwise)."""
        z, y = np.broadcast_arrays(np.asarray(z, dtype=np.float64), np.asarray(y, np.float64))
        r = self.residual_logit(z, y)
        f, g = special_expit(z), special_expit(-z)  # f and 1 - f, both accurate
        # dl/dz = f - y (soft: f - y as well); dr/dz = (f - y) / (2 r) away from r = 0
        num = np.where(y >= 1, -g, np.where(y <= 0, f, f - y))
        with np.errstate(invalid="ignore", divide="ignore"):
            out = num / (2.0 * r)
            # soft labels at f = y: the limit f (1 - f) sqrt(G) with G -> 1 / (2 y (1 - y))
            lim = f * g / np.sqrt(2.0 * np.clip(y * (1 - y), 1e-300, None))
        return np.where(r == 0, lim, out)

    def torch_residual_logit(self, z: Any, y: Any) -> Any:
        """r(sigmoid(z), y) on tensors, from the logit (smooth, no clipping)."""
        import torch

        sp_neg = torch.nn.functional.softplus(-z)
        sp_pos = torch.nn.functional.softplus(z)
        hard1, hard0 = y >= 1, y <= 0
        soft = ~(hard0 | hard1)
        f = torch.sigmoid(z)
        ys = torch.where(soft, y, torch.full_like(y, 0.5))
        d = f - ys
        near = soft & (d.abs() <= 0.5 * torch.minimum(ys, 1 - ys))
        ds = torch.where(near, d, torch.zeros_like(d))
        r_near = ds * torch.sqrt(_g0_torch(ds / ys) / ys + _g0_torch(-ds / (1 - ys)) / (1 - ys))
        ent = -(ys * torch.log(ys) + (1 - ys) * torch.log1p(-ys))
        far = ys * sp_neg + (1 - ys) * sp_pos - ent
        far = torch.where(near | ~soft, torch.ones_like(far), far)
        r_far = torch.sign(d) * torch.sqrt(torch.clamp(far, min=1e-300))
        r_soft = torch.where(near, r_near, r_far)
        s1 = torch.where(hard1, sp_neg, torch.ones_like(sp_neg))
        s0 = torch.where(hard0, sp_pos, torch.ones_like(sp_pos))
        return torch.where(hard1, -torch.sqrt(s1), torch.where(hard0, torch.sqrt(s0), r_soft))


class Poisson(Loss):
    """``poisson``: Poisson deviance / 2 of a positive mean f, counts y >= 0."""

    name = "poisson"

    def check(self, f: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        if y is not None and np.any(y < 0):
            raise NldistError("loss 'poisson' needs labels y >= 0 (counts or positive "
                              "amounts); do not standardize the target")
        if f is not None and np.any(f <= 0):
            raise NldistError("loss 'poisson' needs positive model outputs; use glm:exp or "
                              "glm:softplus (a positive mean)")

    @staticmethod
    def _terms(f: Any, y: Any) -> tuple[np.ndarray, ...]:
        """f and y broadcast as float64, the mask y > 0, y with 1 where it is 0, and the
        relative gap u = (f - y)/y (0 where y = 0): what the residual and its derivative
        share."""
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        f, y = np.broadcast_arrays(f, y)
        pos = y > 0
        ys = np.where(pos, y, 1.0)
        u = np.where(pos, (f - y) / ys, 0.0)
        return f, y, pos, ys, u

    def residual(self, f: Any, y: Any) -> np.ndarray:
        f, y, pos, ys, u = self._terms(f, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pos, (f - y) * np.sqrt(_g0(u) / ys), np.sqrt(f))

    def dresidual(self, f: Any, y: Any) -> np.ndarray:
        f, _, pos, ys, u = self._terms(f, y)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(pos, 1.0 / (2.0 * f * np.sqrt(_g0(u) / ys)),
                            0.5 / np.sqrt(f))

    def torch_residual(self, f: Any, y: Any) -> Any:
        import torch

        pos = y > 0
        ys = torch.where(pos, y, torch.ones_like(y))
        u = torch.where(pos, (f - y) / ys, torch.zeros_like(f))
        fpos = torch.where(pos, torch.ones_like(f), f)
        return torch.where(pos, (f - y) * torch.sqrt(_g0_torch(u) / ys), torch.sqrt(fpos))


def psi_divdiff(loss: Loss, act: Any, z: np.ndarray, y: np.ndarray,
                small: float = 0.5, nodes: int = 24) -> np.ndarray:
    """(psi(z) - psi(0)) / z for psi(z) = r(act(z), y), per row, without cancellation.

    Direct where |z| >= ``small``; below, ``int_0^1 psi'(s z) ds`` by Gauss-Legendre
    (``nodes``) — psi is smooth (analytic for the losses here), so this is exact to rounding
    for |z| < 0.5; its value at z = 0 is psi'(0).

    Parameters
    ----------
    loss : Loss
        From the logit (:meth:`Loss.residual_logit`) when ``act`` is its ``logit_of``.
    act : nldist.models.activations.Activation
        The output map phi (identity for a plain linear predictor).
    z : ndarray (n,)
        The index <theta, x~> (GLM) or the homogeneous inner map g (relu2).
    y : ndarray (n,)
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if loss.logit_of is not None and act.name == loss.logit_of:  # exact when saturated
        def psi(v, yy):
            return loss.residual_logit(v, yy)

        def dpsi(v, yy):
            return loss.dresidual_logit(v, yy)
    else:
        def psi(v, yy):
            return loss.residual(act.phi(v), yy)

        def dpsi(v, yy):
            return loss.dresidual(act.phi(v), yy) * act.dphi(v)
    out = np.empty_like(z)
    big = np.abs(z) >= small
    if big.any():
        zb, yb = z[big], y[big]
        out[big] = (psi(zb, yb) - psi(np.zeros_like(zb), yb)) / zb
    if (~big).any():
        s, w = gauss_legendre(nodes)
        zs = z[~big][:, None] * s[None, :]
        ys = y[~big][:, None]
        out[~big] = dpsi(zs, ys) @ w
    return out
