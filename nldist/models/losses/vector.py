"""Losses of a C-output model (logits (n, C), integer labels 0..C-1): the :class:`VectorLoss`
interface, :class:`CrossEntropy` and the TRAK :class:`Margin`; label checks, softmax, the
softmax Fisher factor and the targets of a multi-output regression.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from scipy.special import expit as special_expit

from nldist.errors import NldistError

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

    name: ClassVar[str] = ""
    logit_of: ClassVar[str | None] = None
    vector: ClassVar[bool] = True

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

    @staticmethod
    def _torch_others(F: Any, y: Any) -> Any:
        """:meth:`_others`' t on tensors (b,)."""
        import torch

        yi = y.long()
        mask = torch.arange(F.shape[-1], device=F.device) == yi.unsqueeze(-1)
        D = F - F.gather(-1, yi.unsqueeze(-1))
        return torch.logsumexp(D.masked_fill(mask, float("-inf")), dim=-1)

    def row_loss(self, F: Any, y: Any) -> np.ndarray:
        """The per-row value (n,) of the loss."""
        raise NotImplementedError

    def residual(self, F: Any, y: Any) -> np.ndarray:
        """r_i (n,)."""
        raise NotImplementedError

    def grad_logits(self, F: Any, y: Any) -> np.ndarray:
        """d r_i / d z_i (n, C)."""
        raise NotImplementedError

    def torch_residual(self, F: Any, y: Any) -> Any:
        """r on tensors: logits (b, C), labels (b,) -> (b,)."""
        raise NotImplementedError

    def torch_post(self) -> Any:
        """post-map (logits (b, C), labels (b,)) -> r (b,) for the quadrature engine."""
        return lambda out, y: self.torch_residual(out, y)


class CrossEntropy(VectorLoss):
    """``cross_entropy``: ``r = sqrt(CE)``, ``CE = logsumexp(z) - z_y``."""

    name = "cross_entropy"

    def row_loss(self, F: Any, y: Any) -> np.ndarray:
        """Per-row CE_i (n,)."""
        Z, yi = self._zy(F, y)
        t, _ = self._others(Z, yi)
        return np.logaddexp(0.0, t)

    def residual(self, F: Any, y: Any) -> np.ndarray:
        """r_i (n,): sqrt(CE_i)."""
        return np.sqrt(self.row_loss(F, y))

    def grad_logits(self, F: Any, y: Any) -> np.ndarray:
        Z, yi = self._zy(F, y)
        n = len(yi)
        t, Po = self._others(Z, yi)
        q = special_expit(t)  # 1 - p_y
        G = Po * q[:, None]  # p_c for c != y
        G[np.arange(n), yi] = -q
        ce = np.logaddexp(0.0, t)
        return G / (2.0 * np.sqrt(np.maximum(ce, 1e-300)))[:, None]

    def torch_residual(self, F: Any, y: Any) -> Any:
        import torch

        t = self._torch_others(F, y)
        return torch.sqrt(torch.clamp(torch.nn.functional.softplus(t), min=1e-300))


class Margin(VectorLoss):
    """``margin``: ``m = z_y - logsumexp_{c != y} z_c`` (TRAK), the scalar f of
    ``margin-leverage`` (not a training loss: not registered; :data:`MARGIN`)."""

    name = "margin"

    def row_loss(self, F: Any, y: Any) -> np.ndarray:
        """Per-row margin m_i (n,)."""
        Z, yi = self._zy(F, y)
        t, _ = self._others(Z, yi)
        return -t

    def residual(self, F: Any, y: Any) -> np.ndarray:
        """r_i (n,): the margin."""
        return self.row_loss(F, y)

    def grad_logits(self, F: Any, y: Any) -> np.ndarray:
        Z, yi = self._zy(F, y)
        n = len(yi)
        t, Po = self._others(Z, yi)
        G = -Po
        G[np.arange(n), yi] = 1.0
        return G

    def torch_residual(self, F: Any, y: Any) -> Any:
        return -self._torch_others(F, y)


def torch_combination(out: Any, V: Any) -> Any:
    """post-map (outputs (b, C), weights (b, C)) -> sum_c V_c out_c (b,): the adjoint of this
    is the V-combination of the rows of the output's adjoint block."""
    return (out * V).sum(dim=-1)


#: the margin of a C-output model (``margin-leverage``)
MARGIN = Margin()
