"""The :class:`Model` interface: a model spec bound to d input features, with its capabilities.

A model maps parameters ``theta`` (p,) and rows ``X`` (n, d) to outputs (n,). As arrays in
and arrays out it provides:

* ``predict(theta, X)``  -> (n,)   f(theta; x_i)
* ``adjoint(theta, X)``  -> (n, p) f*_i(theta) = int_0^1 grad f_i(t theta) dt   (MATH.md §1)
* ``residual_adjoint(theta, X, y, loss)`` -> (n, p) the adjoint of r_i = r(f_i, y_i) (§6)
* ``jacobian(theta, X)`` -> (n, p) grad f_i(theta) (used by the Gauss-Newton trainer)
* ``f0(X)``              -> (n,)   f(0; x_i), the offset column of the dual matrix
* ``torch_forward(theta, X)``      the same map on torch tensors (training on the sample)

and declares what the engine needs to plan around it: ``closed_form`` (the adjoint is a
formula: rebuilding a dual block costs about a copy of X), ``memory_per_row`` and
``workspace_bytes`` (the dry-run memory bound of :mod:`nldist._budget`), ``configure``
(quadrature settings; a no-op for closed forms) and ``theta_from_checkpoint``.

Closed forms live in :mod:`nldist.models.glm` and :mod:`nldist.models.relu2`; models that
only have a torch forward subclass :class:`nldist.models.torchmodel.TorchForwardModel`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nldist.errors import NldistError


@dataclass
class Model:
    """Base class: a model spec bound to a number of input features.

    Subclasses implement ``predict``, ``adjoint``, ``residual_adjoint``, ``jacobian``,
    ``f0`` and ``torch_forward``. Use :func:`nldist.get_model` to build one from a spec.
    """

    spec: str
    n_features: int
    n_params: int = field(init=False)

    #: the adjoint is a closed formula (no quadrature): a dual block is cheaper to rebuild
    #: than to keep (pass 1 / pass 2 of :mod:`nldist.scores.block`)
    closed_form = False
    #: k when the output is positively k-homogeneous in theta (one-gradient adjoint)
    homogeneous_degree = None
    #: C: outputs per row (logits of a C-class classifier); 1 for (n,) models
    n_outputs = 1

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
    def _missing(self, what: str) -> NldistError:
        return NldistError(f"model {self.spec!r} ({type(self).__name__}) does not implement "
                           f"{what}; subclass nldist.models.torchmodel.TorchForwardModel to get "
                           "it from torch_forward by quadrature")

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """f(theta; x_i) for every row, (n,) float64."""
        raise self._missing("predict")

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """F*(theta), (n, p) float64."""
        raise self._missing("adjoint")

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        """Adjoint r*(theta) (n, p) of r_i(theta) = r(f(theta; x_i), y_i) for a
        :class:`nldist.models.losses.Loss` (MATH.md §6)."""
        raise self._missing("residual_adjoint")

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """d f_i / d theta, (n, p) float64."""
        raise self._missing("jacobian")

    # -- C outputs (n_outputs > 1) ----------------------------------------------------------
    def output_adjoint(self, theta: Any, X: Any, V: Any) -> np.ndarray:
        """Adjoint (n, p) of the combination ``sum_c V_ic f_ic(theta)`` of a C-output model's
        outputs, V of shape (n, C): row i is ``V_i^T A_i`` for the adjoint block A_i (C, p)."""
        raise self._missing("output_adjoint")

    def adjoint_block(self, theta: Any, X: Any) -> np.ndarray:
        """The adjoint block A_i = int_0^1 J_i(t theta) dt of every row, (n, C, p) float64:
        one :meth:`output_adjoint` per output (C vector-Jacobian products per node)."""
        theta, X = self.check_theta(theta), self.check_X(X)
        C = self.n_outputs
        out = np.empty((X.shape[0], C, self.n_params))
        for c in range(C):
            V = np.zeros((X.shape[0], C))
            V[:, c] = 1.0
            out[:, c] = self.output_adjoint(theta, X, V)
        return out

    def check_outputs(self, loss: str | None = None) -> None:
        """One-line error when the model's outputs and the loss do not fit each other."""
        vec = loss in ("cross_entropy",)
        if self.n_outputs > 1 and loss is not None and not vec and loss != "squared":
            raise NldistError(f"model {self.spec!r} has {self.n_outputs} outputs; use loss: "
                              "cross_entropy (classes) or loss: squared (one target column "
                              f"per output), not {loss!r}")
        if self.n_outputs == 1 and vec:
            raise NldistError(f"loss 'cross_entropy' needs a model with C >= 2 outputs, "
                              f"{self.spec!r} has one; use softmax:<C>, mlp:<h>:<C>, or loss: "
                              "bce for two classes")

    def f0(self, X: Any) -> np.ndarray:
        """f(0; x_i), (n,) float64."""
        raise self._missing("f0")

    def torch_forward(self, theta: Any, X: Any) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def initial_theta(self, seed: int = 0) -> np.ndarray:
        """Default starting point of training (zeros; nets override: 0 is a saddle there)."""
        return np.zeros(self.n_params)

    @property
    def has_bias(self) -> bool:
        """Whether the last parameter is an intercept (linear scores then add a 1-column)."""
        return False

    # -- capabilities the engine plans with ------------------------------------------
    def configure(self, **options: Any) -> Model:
        """Set adjoint options (quadrature settings of :class:`nldist.options.AdjointOptions`);
        closed forms have none and ignore them. Returns the model."""
        return self

    def memory_per_row(self, augmented: bool = True) -> int:
        """Bytes per row that scoring this model's dual rows holds at once: the float64 row
        of the dual block (p + augmented columns) three times (slice, kept block, QR work)."""
        return 3 * 8 * (self.n_params + int(augmented))

    def workspace_bytes(self) -> int:
        """Fixed bytes per task beyond the rows (the quadrature engine's batch; 0 here)."""
        return 0

    def theta_from_state_dict(self, state_dict: dict) -> np.ndarray:
        """theta of a torch ``state_dict`` (torch models only)."""
        raise NldistError(f"a state_dict does not fit model {self.spec!r}; save theta as a 1-D "
                          "tensor (or {'theta': tensor})")

    def theta_from_checkpoint(self, path: str | Path, data: bytes | None = None
                              ) -> np.ndarray:
        """theta from a torch checkpoint loaded with ``weights_only=True`` (from ``data``,
        its bytes, when given: a file on object storage; ``path`` then names it).

        Accepts a 1-D tensor (theta itself), ``{"theta": tensor}``, or — for ``torch:``
        models — a ``state_dict`` (also nested under ``"state_dict"`` /
        ``"model_state_dict"``), whose buffers then become part of the model.
        """
        import torch

        try:
            src = str(path) if data is None else io.BytesIO(data)
            obj = torch.load(src, weights_only=True, map_location="cpu")
        except Exception as exc:  # noqa: BLE001
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise NldistError(f"cannot read checkpoint {str(path)!r} with torch.load(weights_"
                              f"only=True) ({type(exc).__name__}: {msg}); save a tensor or a "
                              "state_dict with torch.save") from None
        if isinstance(obj, torch.Tensor):
            return self.check_theta(obj.detach().double().reshape(-1))
        if isinstance(obj, dict):
            if isinstance(obj.get("theta"), torch.Tensor):
                return self.check_theta(obj["theta"].detach().double().reshape(-1))
            for key in ("state_dict", "model_state_dict"):
                if isinstance(obj.get(key), dict):
                    obj = obj[key]
                    break
            if self.accepts_state_dict:
                return self.theta_from_state_dict(obj)
        raise NldistError(f"checkpoint {str(path)!r} holds {type(obj).__name__}; for model "
                          f"{self.spec!r} save theta as a 1-D tensor (or {{'theta': tensor}})")

    #: theta_from_checkpoint may read a state_dict (torch: modules)
    accepts_state_dict = False
