"""Losses beyond squared (MATH.md §6): residuals r_i with L = sum_i r_i^2.

For a nonnegative loss l(f, y) the residual is the *signed* root

    r(f, y) = sign(f - y) * sqrt(l(f, y)),

which has the same square as MATH.md's sqrt(l) and, unlike it, is smooth through f = y
(l vanishes quadratically there), so Gauss-Newton and the adjoint see a smooth function.
For ``squared`` it is exactly f - y, so the squared path is unchanged. Sections 1-3 of
MATH.md then apply to r_i: the dual matrix is ``[r*(theta), r(0)]`` with r* the adjoint of
``theta -> r(f(theta; x_i), y_i)``, and ``[r*, r(0)] @ [theta, 1] = r(theta)``.

Losses (``loss:`` in a job):

* ``squared``: l = (f - y)^2.
* ``bce``: binary cross-entropy of a probability output f in (0, 1) (sigmoid outputs:
  ``glm:sigmoid``, ``relu2:<h>:sigmoid``, a torch module ending in a sigmoid), labels y in
  [0, 1]: l = y log(y/f) + (1-y) log((1-y)/(1-f)) (= BCE for 0/1 labels; for soft labels
  BCE minus the label entropy, so l >= 0). f is clipped to [1e-12, 1 - 1e-12]; residuals of
  rows whose f is within ~1e-8 of 0 or 1 lose digits (f itself has lost them).
* ``poisson``: Poisson deviance / 2 of a positive mean f (``glm:exp``, ``glm:softplus``),
  counts y >= 0: l = f - y - y log(f/y) (= f for y = 0).

This module is pure residual math (r, dr/df and their torch forms, and the stable divided
difference of psi_y(z) = r(phi(z), y)); the adjoints of r are the models' own
``residual_adjoint``: closed forms for GLMs (single index, k = 1) and ``relu2``
(Prop. 3.1, k = 2), quadrature (:mod:`nldist.models.quadrature`) for torch modules.
Nothing here imports torch unless a torch function is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.special import expit as special_expit

from nldist.errors import NldistError
from nldist.models.gauss import gauss_legendre

LOSSES = ("squared", "bce", "poisson", "cross_entropy")
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
    """A loss through its signed-root residual r(f, y) (NumPy and torch forms).

    Attributes
    ----------
    name : str
        One of ``LOSSES``.
    """

    name: str

    # -- checks ------------------------------------------------------------------------
    def check(self, f: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        """Raise a one-line error when labels or model outputs are outside the domain."""
        if self.name == "bce":
            if y is not None and (np.any(y < 0) or np.any(y > 1)):
                raise NldistError("loss 'bce' needs labels in [0, 1]; ingest a binary target "
                                  "(dataset.classes: [A, B]) or use loss: squared")
            if f is not None and (np.any(f < 0) or np.any(f > 1)):
                raise NldistError("loss 'bce' needs model outputs in (0, 1); use a sigmoid "
                                  "output (glm:sigmoid, relu2:<h>:sigmoid, a torch module "
                                  "ending in nn.Sigmoid) or loss: squared")
        elif self.name == "poisson":
            if y is not None and np.any(y < 0):
                raise NldistError("loss 'poisson' needs labels y >= 0 (counts or positive "
                                  "amounts); do not standardize the target")
            if f is not None and np.any(f <= 0):
                raise NldistError("loss 'poisson' needs positive model outputs; use glm:exp or "
                                  "glm:softplus (a positive mean)")

    # -- NumPy ---------------------------------------------------------------------------
    def residual(self, f: Any, y: Any) -> np.ndarray:
        """r(f, y), elementwise (broadcasting), float64."""
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.name == "squared":
            return f - y
        if self.name == "poisson":
            f, y = np.broadcast_arrays(f, y)
            pos = y > 0
            ys = np.where(pos, y, 1.0)
            u = np.where(pos, (f - y) / ys, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(pos, (f - y) * np.sqrt(_g0(u) / ys), np.sqrt(f))
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
        """dr/df (f, y), elementwise, float64 (0 where bce clips f)."""
        f = np.asarray(f, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        if self.name == "squared":
            return np.ones(np.broadcast(f, y).shape)
        if self.name == "poisson":
            f, y = np.broadcast_arrays(f, y)
            pos = y > 0
            ys = np.where(pos, y, 1.0)
            u = np.where(pos, (f - y) / ys, 0.0)
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.where(pos, 1.0 / (2.0 * f * np.sqrt(_g0(u) / ys)),
                                0.5 / np.sqrt(f))
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

    # -- torch -------------------------------------------------------------------------
    def torch_residual(self, f: Any, y: Any) -> Any:
        """r(f, y) on tensors, differentiable in f with finite derivatives everywhere."""
        import torch

        if self.name == "squared":
            return f - y
        if self.name == "poisson":
            pos = y > 0
            ys = torch.where(pos, y, torch.ones_like(y))
            u = torch.where(pos, (f - y) / ys, torch.zeros_like(f))
            fpos = torch.where(pos, torch.ones_like(f), f)
            return torch.where(pos, (f - y) * torch.sqrt(_g0_torch(u) / ys), torch.sqrt(fpos))
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

    def torch_post(self) -> Any:
        """post-map (out, y) -> r for :mod:`nldist.quadrature` (None for squared: f - y)."""
        return lambda out, y: self.torch_residual(out, y)

    # -- bce from the logit z (f = sigmoid(z)): no loss of digits when f saturates -------
    def residual_logit(self, z: Any, y: Any) -> np.ndarray:
        """r(sigmoid(z), y) for ``bce``, computed from z (float64, elementwise)."""
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
        """d r(sigmoid(z), y) / dz for ``bce`` (float64, elementwise)."""
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
        """r(sigmoid(z), y) for ``bce`` on tensors, from the logit (smooth, no clipping)."""
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

    def torch_post_logit(self) -> Any:
        """post-map on the logit of a sigmoid output (``bce`` only), flagged ``on_logit``."""

        def post(z: Any, y: Any) -> Any:
            return self.torch_residual_logit(z, y)

        post.on_logit = True  # type: ignore[attr-defined]
        return post


def get_loss(name: str | Loss | VectorLoss) -> Any:
    """A :class:`Loss` (or :class:`VectorLoss` for ``cross_entropy``) by name, or a one-line
    error listing the names."""
    if isinstance(name, (Loss, VectorLoss)):
        return name
    if name not in LOSSES:
        raise NldistError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    if name in VECTOR_LOSSES:
        return VectorLoss(name)
    return Loss(name)


# --------------------------------------------------------------------------------------
# C outputs (logits): cross-entropy, the TRAK-style margin, the softmax Fisher factor
# --------------------------------------------------------------------------------------

#: losses of a C-output model (logits (n, C), integer labels 0..C-1); "margin" is internal:
#: the scalar f of ``margin-leverage`` (not a training loss)
VECTOR_LOSSES = ("cross_entropy", "margin")


def log_softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise log softmax of logits (n, C), stable (float64)."""
    Z = np.asarray(Z, dtype=np.float64)
    m = Z.max(axis=-1, keepdims=True)
    return Z - m - np.log(np.exp(Z - m).sum(axis=-1, keepdims=True))


def softmax(Z: np.ndarray) -> np.ndarray:
    """Row-wise softmax pi (n, C) of logits (float64)."""
    return np.exp(log_softmax(Z))


def check_labels(y: Any, n_classes: int, declared: bool = False) -> np.ndarray:
    """Integer class labels 0..C-1 as int64 (n,), or a one-line error naming the fix.

    Parameters
    ----------
    y : array-like (n,)
        Float or integer labels.
    n_classes : int
        C, the number of outputs of the model.
    declared : bool
        ``y`` is the whole dataset: every class 0..C-1 must occur (a missing class means
        the model's C or the labels are wrong).
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise NldistError(f"class labels must be a 1-D vector, got shape {y.shape}; pass one "
                          "integer label 0..C-1 per row")
    if not np.issubdtype(y.dtype, np.number):
        raise NldistError(f"class labels have dtype {y.dtype}; ingest the target as classes "
                          "(integers 0..C-1)")
    yf = y.astype(np.float64)
    if not np.all(np.isfinite(yf)):
        raise NldistError("class labels contain NaN or inf; drop those rows (--dropna)")
    if np.any(yf != np.round(yf)):
        bad = yf[yf != np.round(yf)][0]
        raise NldistError(f"loss 'cross_entropy' needs integer class labels 0..{n_classes - 1},"
                          f" got {bad!r}; ingest the target as classes, not a standardized "
                          "number (drop standardize_target)")
    if yf.size and (yf.min() < 0 or yf.max() > n_classes - 1):
        bad = yf[(yf < 0) | (yf > n_classes - 1)][0]
        raise NldistError(f"class label {int(bad)} is outside 0..{n_classes - 1} for a model "
                          f"with {n_classes} outputs; build the model with C = the number of "
                          "classes (softmax:<C>, mlp:<h>:<C>)")
    yi = yf.astype(np.int64)
    if declared:
        missing = np.setdiff1d(np.arange(n_classes), np.unique(yi))
        if missing.size:
            raise NldistError(f"classes {missing.tolist()[:5]} of the model's {n_classes} never "
                              "occur in the labels; set C to the number of classes present")
    return yi


def target_columns(y: Any) -> int:
    """Columns of y: 1 for None, (n,) or (n, 1), else its second dimension (the C targets
    of a multi-output regression)."""
    shape = np.shape(y) if y is not None else (0,)
    return int(shape[1]) if len(shape) == 2 and shape[1] > 1 else 1


def targets(y: Any, n: int, C: int) -> np.ndarray:
    """Targets of a C-output regression as float64 (n, C), or a one-line error."""
    Y = np.asarray(y, dtype=np.float64)
    if Y.ndim == 1 and C == 1:
        Y = Y[:, None]
    if Y.shape != (n, C):
        raise NldistError(f"y has shape {Y.shape} but a {C}-output model with squared loss "
                          f"needs targets of shape ({n}, {C}): one column per output")
    return Y


def fisher_weights(P: np.ndarray) -> np.ndarray:
    """The softmax Fisher factor ``B_i^T`` (n, C, C) of probabilities P (n, C).

    ``B_i = diag(sqrt(pi_i)) (I - sqrt(pi_i) sqrt(pi_i)^T)``, so ``B_i B_i^T = diag(pi_i) -
    pi_i pi_i^T`` (the Fisher / Gauss-Newton block of cross-entropy); ``B_i^T @ A_i`` are the
    Fisher-weighted rows of a per-class block A_i (C, q), and row j of ``B_i^T`` is the
    class weighting of Fisher row j."""
    sq = np.sqrt(P)
    C = P.shape[1]
    return sq[:, :, None] * (np.eye(C)[None] - P[:, None, :])


@dataclass(frozen=True)
class VectorLoss:
    """A scalar function of a C-vector of logits and an integer label: its NumPy value,
    gradient in the logits and torch form (MATH.md §6 applied to C outputs).

    * ``cross_entropy``: ``r = sqrt(CE)``, ``CE = logsumexp(z) - z_y`` (> 0 for finite z, so
      r is smooth): the residual whose square is the loss.
    * ``margin``: ``m = z_y - logsumexp_{c != y} z_c = log(p_y / (1 - p_y))`` (TRAK).
    """

    name: str
    vector = True

    def check(self, F: np.ndarray | None = None, y: np.ndarray | None = None) -> None:
        """Labels integers in range for the C outputs of F (n, C)."""
        if F is not None and y is not None:
            check_labels(y, np.shape(F)[-1])

    @staticmethod
    def _others(Z: np.ndarray, yi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """t_i = logsumexp_{c != y_i} (z_ic - z_iy) (n,) and the softmax over the other
        classes (n, C) (0 at y): CE = softplus(t), margin = -t, 1 - p_y = sigmoid(t) —
        accurate when p_y is within rounding of 1."""
        n, C = Z.shape
        D = Z - np.take_along_axis(Z, yi[:, None], axis=1)
        D[np.arange(n), yi] = -np.inf
        m = D.max(axis=1, keepdims=True)
        E = np.exp(D - m)
        s = E.sum(axis=1, keepdims=True)
        return (m + np.log(s))[:, 0], E / s

    def _zy(self, F: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        Z = np.asarray(F, dtype=np.float64)
        if Z.ndim != 2 or Z.shape[1] < 2:
            raise NldistError(f"loss {self.name!r} needs a model with C >= 2 outputs (logits of "
                              f"shape (n, C)), got outputs of shape {Z.shape}; use softmax:<C>, "
                              "mlp:<h>:<C> or a torch module returning (n, C)")
        return Z, np.asarray(y).astype(np.int64).reshape(-1)

    def row_loss(self, F: Any, y: Any) -> np.ndarray:
        """Per-row CE_i (n,) (cross_entropy) or the margin m_i."""
        Z, yi = self._zy(F, y)
        t, _ = self._others(Z, yi)
        return np.logaddexp(0.0, t) if self.name == "cross_entropy" else -t

    def residual(self, F: Any, y: Any) -> np.ndarray:
        """r_i (n,): sqrt(CE_i), or the margin."""
        v = self.row_loss(F, y)
        return np.sqrt(v) if self.name == "cross_entropy" else v

    def grad_logits(self, F: Any, y: Any) -> np.ndarray:
        """d r_i / d z_i (n, C)."""
        Z, yi = self._zy(F, y)
        n = len(yi)
        t, Po = self._others(Z, yi)
        if self.name == "margin":
            G = -Po
            G[np.arange(n), yi] = 1.0
            return G
        q = special_expit(t)  # 1 - p_y
        G = Po * q[:, None]  # p_c for c != y
        G[np.arange(n), yi] = -q
        ce = np.logaddexp(0.0, t)
        return G / (2.0 * np.sqrt(np.maximum(ce, 1e-300)))[:, None]

    def torch_residual(self, F: Any, y: Any) -> Any:
        import torch

        yi = y.long()
        mask = torch.arange(F.shape[-1], device=F.device) == yi.unsqueeze(-1)
        D = F - F.gather(-1, yi.unsqueeze(-1))
        t = torch.logsumexp(D.masked_fill(mask, float("-inf")), dim=-1)
        if self.name == "cross_entropy":
            return torch.sqrt(torch.clamp(torch.nn.functional.softplus(t), min=1e-300))
        return -t

    def torch_post(self) -> Any:
        """post-map (logits (b, C), labels (b,)) -> r (b,) for the quadrature engine."""
        return lambda out, y: self.torch_residual(out, y)


def torch_combination(out: Any, V: Any) -> Any:
    """post-map (outputs (b, C), weights (b, C)) -> sum_c V_c out_c (b,): the adjoint of this
    is the V-combination of the rows of the output's adjoint block."""
    return (out * V).sum(dim=-1)


MARGIN = VectorLoss("margin")


def psi_divdiff(loss: Loss, act: Any, z: np.ndarray, y: np.ndarray,
                small: float = 0.5, nodes: int = 24) -> np.ndarray:
    """(psi(z) - psi(0)) / z for psi(z) = r(act(z), y), per row, without cancellation.

    Direct where |z| >= ``small``; below, ``int_0^1 psi'(s z) ds`` by Gauss-Legendre
    (``nodes``) — psi is smooth (analytic for the losses here), so this is exact to rounding
    for |z| < 0.5; its value at z = 0 is psi'(0).

    Parameters
    ----------
    loss : Loss
    act : nldist.models.activations.Activation
        The output map phi (identity for a plain linear predictor).
    z : ndarray (n,)
        The index <theta, x~> (GLM) or the homogeneous inner map g (relu2).
    y : ndarray (n,)
    """
    z = np.asarray(z, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if loss.name == "bce" and act.name == "sigmoid":  # from the logit: exact when saturated
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
