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

The package: :mod:`~nldist.models.losses.scalar` (the :class:`Loss` interface of a scalar
output and one class per loss: squared, bce, poisson; the divided difference
:func:`psi_divdiff`), :mod:`~nldist.models.losses.vector` (C outputs: the
:class:`VectorLoss` interface, cross-entropy, the TRAK margin, labels and the softmax
Fisher factor) and here the registry: each training loss by name (:data:`REGISTRY`,
:func:`get_loss`).
"""

from __future__ import annotations

from typing import Any

from nldist.errors import NldistError
from nldist.models.losses.scalar import (
    BCE,
    BCE_EPS,
    Loss,
    Poisson,
    Squared,
    psi_divdiff,
)
from nldist.models.losses.vector import (
    MARGIN,
    VECTOR_LOSSES,
    CrossEntropy,
    Margin,
    VectorLoss,
    check_labels,
    fisher_weights,
    log_softmax,
    softmax,
    target_columns,
    targets,
    torch_combination,
)

__all__ = ["BCE", "BCE_EPS", "LOSSES", "MARGIN", "REGISTRY", "VECTOR_LOSSES", "CrossEntropy",
           "Loss", "Margin", "Poisson", "Squared", "VectorLoss", "check_labels",
           "fisher_weights", "get_loss", "log_softmax", "psi_divdiff", "residual_pair", "softmax",
           "target_columns", "targets", "torch_combination"]

#: every training loss by name, one class each: adding a loss is a class (a
#: :class:`Loss` or :class:`VectorLoss`) and its row here
REGISTRY: dict[str, type[Loss] | type[VectorLoss]] = {
    cls.name: cls for cls in (Squared, BCE, Poisson, CrossEntropy)}
#: the training losses' names, in that order
LOSSES = tuple(REGISTRY)


def get_loss(name: str | Loss | VectorLoss) -> Any:
    """The loss registered as ``name`` (a :class:`Loss`, or a :class:`VectorLoss` for
    ``cross_entropy``), or a one-line error listing the names; a loss object is returned
    as it is."""
    if isinstance(name, (Loss, VectorLoss)):
        return name
    if name not in REGISTRY:
        raise NldistError(f"unknown loss {name!r}; use one of {', '.join(LOSSES)}")
    return REGISTRY[name]()


def residual_pair(f: Any, y: Any, loss: str) -> tuple[Any, Any]:
    """The residuals r (n,) of predictions f (n,) against targets y (n,) and their
    derivatives dr/df (n,) — for ``squared`` exactly ``f - y`` and the scalar 1.0 (no
    check, no copy); other losses check f and y first (:meth:`Loss.check`)."""
    if loss == "squared":
        return f - y, 1.0
    lo = get_loss(loss)
    lo.check(f, y)
    return lo.residual(f, y), lo.dresidual(f, y)
