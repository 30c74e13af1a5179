"""``torch:<module.path>:<factory>``: any PyTorch module, adjoint by quadrature or Prop. 3.1.

``torch:<module.path>:<factory>`` (optionally ``...:<factory>(key=value,...)``)
    Any ``torch.nn.Module`` the factory returns. The factory is called as
    ``factory(n_features, **kwargs)`` when its first parameter is positional, else as
    ``factory(**kwargs)``. ``<module.path>`` is an importable dotted module name or a path
    to a ``.py`` file. ``forward(X)`` must map (n, d) to (n,) or (n, 1), rows
    independently (the module is put in eval mode). theta is
    ``torch.nn.utils.parameters_to_vector(module.parameters())`` order. A module may
    declare ``homogeneous_degree = k`` (its forward is positively k-homogeneous in its
    parameters, e.g. a ReLU net without biases has k = its number of layers) and
    optionally ``outer_activation = "sigmoid"`` (then the model is sigmoid(forward(X)));
    the adjoint is then the one-gradient shortcut of Prop. 3.1, verified row by row by
    (ID) with quadrature as the fallback. Otherwise it is computed by quadrature
    (:mod:`nldist.models.quadrature`). A trailing ``nn.Sigmoid`` of an ``nn.Sequential`` is taken
    as the outer map too, so ``loss: bce`` works on the logit (exact when f saturates).

    The model object is small and pickle-safe: it travels as spec + the module's
    ``state_dict`` bytes, and is rebuilt on a worker with ``torch.load(weights_only=True)``
    (once per worker thread, cached).

:class:`TorchForwardModel` is the base of every model that only has a torch forward: its
NumPy methods go through the quadrature engine. This module (and torch) is loaded only when
a ``torch:`` spec is built (:mod:`nldist.models` registers it by name).
"""

from __future__ import annotations

import copy
import hashlib
import io
import logging
import math
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cloudpickle
import numpy as np

from nldist._runtime import use_worker_threads
from nldist.errors import NldistError
from nldist.models import quadrature
from nldist.models.activations import Activation, activation
from nldist.models.base import Model
from nldist.models.losses import psi_divdiff, torch_combination
from nldist.models.quadrature.rays import (
    FunctionalRay,
    ScaledModuleRay,
    as_rows,
    install_scale_hooks,
)
from nldist.models.torchspec import (
    import_factory,
    mlp_torch_spec,
    parse_torch_spec,
    takes_positional,
)
from nldist.options import AdjointOptions

log = logging.getLogger("nldist")


@dataclass
class TorchForwardModel(Model):
    """A model given by ``torch_forward`` alone: predict, adjoint, residual adjoint, Jacobian
    and f(0) by the quadrature engine (:mod:`nldist.models.quadrature`, float64 unless
    configured otherwise)."""

    quad_options: Any = None

    def predict(self, theta: Any, X: Any) -> np.ndarray:
        """f(theta; x_i) for every row, (n,) float64 — (n, C) for a C-output model (the
        torch forward)."""
        if self.n_outputs > 1:
            return quadrature.outputs(self, self.check_theta(theta), self.check_X(X))
        return quadrature.predict(self, self.check_theta(theta), self.check_X(X))

    def output_adjoint(self, theta: Any, X: Any, V: Any) -> np.ndarray:
        """Adjoint (n, p) of ``sum_c V_ic f_ic`` (a C-output model) by quadrature."""
        return quadrature.adjoint(self, self.check_theta(theta), self.check_X(X),
                                  aux=np.asarray(V, dtype=np.float64),
                                  post=torch_combination)

    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """F*(theta), (n, p) float64 (Gauss-Legendre quadrature along t theta)."""
        return quadrature.adjoint(self, self.check_theta(theta), self.check_X(X))

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        """Adjoint of r_i = r(f_i, y_i) by quadrature with the residual as post-map."""
        return quadrature.adjoint(self, theta, X, aux=y, post=loss.torch_post())

    def jacobian(self, theta: Any, X: Any) -> np.ndarray:
        """d f_i / d theta, (n, p) float64 (torch.func per-row gradients)."""
        return quadrature.jacobian(self, self.check_theta(theta), self.check_X(X))

    def f0(self, X: Any) -> np.ndarray:
        """f(0; x_i), (n,) (or (n, C)) float64 (the torch forward at theta = 0)."""
        return self.predict(np.zeros(self.n_params), X)

    def configure(self, **options: Any) -> Model:
        """Set quadrature options (fields of :class:`nldist.options.AdjointOptions`)."""
        return quadrature.configure(self, **options)

    def workspace_bytes(self) -> int:
        """The quadrature engine's largest vectorized evaluation: 16 bytes x max_elems."""
        return 16 * quadrature.options(self).max_elems


# Layers computing L(c P; a) = c L(P; a) in their own parameters P: the fast scaled ray.
_LINEAR_IN_PARAMS = (
    "Linear", "Bilinear", "Conv1d", "Conv2d", "Conv3d", "ConvTranspose1d", "ConvTranspose2d",
    "ConvTranspose3d", "Embedding", "LayerNorm", "GroupNorm", "BatchNorm1d", "BatchNorm2d",
    "BatchNorm3d", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "RMSNorm",
)


@dataclass
class _Built:
    """A module built for one thread: float64, eval mode, scale hooks, validated."""

    net: Any
    names: list[str]
    shapes: list[tuple[int, ...]]
    params: dict[str, Any]
    buffers: dict[str, Any]
    fast: bool
    width: int
    degree: int | None
    outer: Activation | None
    n_outputs: int = 1


_CACHE = threading.local()


def _module_dtype_cast(d: dict[str, Any], dtype: Any) -> dict[str, Any]:
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in d.items()}


@dataclass
class TorchModel(TorchForwardModel):
    """A ``torch.nn.Module`` from ``torch:<module.path>:<factory>`` (see module docstring).

    Attributes
    ----------
    state : bytes
        ``torch.save(module.state_dict())`` — buffers and the reference parameters; with
        the spec it is everything a worker needs to rebuild the module.
    """

    state: bytes = field(default=b"", repr=False)
    #: the ``torch:`` spec the module is built from when ``spec`` is a shorthand (``mlp:``)
    source: str = ""
    #: a live module's architecture (cloudpickle), for modules handed to the Python API
    module_blob: bytes = field(default=b"", repr=False)
    accepts_state_dict = True

    @property
    def torch_spec(self) -> str:
        return self.source or self.spec

    # -- building ------------------------------------------------------------------------
    def __post_init__(self) -> None:
        mod, fac, _ = parse_torch_spec(self.torch_spec)
        self._mod, self._fac = mod, fac
        if mod.endswith(".py") and "://" not in mod:  # resolve now: workers may run elsewhere
            self._mod = str(Path(mod).expanduser().resolve())
        built = self._built()
        self.n_params = int(sum(math.prod(s) for s in built.shapes))
        self.n_outputs = built.n_outputs
        if not self.state:  # record the factory's state; the built module already has it
            self.state = _state_bytes(built.net)
            self._key = None
            _CACHE.models[self._cache_key()] = built

    def _cache_key(self) -> tuple:
        key = getattr(self, "_key", None)
        if key is None:
            digest = hashlib.sha256(self.state + self.module_blob).hexdigest()[:16]
            key = self._key = (self.spec, self._mod, self.n_features, digest)
        return key

    def _built(self) -> _Built:
        cache = getattr(_CACHE, "models", None)
        if cache is None:
            cache = _CACHE.models = {}
        key = self._cache_key()
        if key not in cache:
            if len(cache) > 16:
                cache.clear()
            cache[key] = self._build()
        return cache[key]

    def _make_net(self) -> Any:
        """A fresh module: unpickled from ``module_blob`` (a live module given to the API),
        else built by the spec's factory (seeded)."""
        import torch

        if self.module_blob:
            return cloudpickle.loads(self.module_blob)
        _, _, kwargs = parse_torch_spec(self.torch_spec)
        factory = import_factory(self._mod, self._fac, self.torch_spec)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            return (factory(self.n_features, **kwargs) if takes_positional(factory)
                    else factory(**kwargs))

    def _build(self) -> _Built:
        import torch

        try:
            net = self._make_net()
        except NldistError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise NldistError(f"factory of {self.spec!r} failed: {type(exc).__name__}: "
                              f"{_first_line(exc)}; check its "
                              "arguments") from None
        if not isinstance(net, torch.nn.Module):
            raise NldistError(f"factory of {self.spec!r} returned {type(net).__name__}, not a "
                              "torch.nn.Module; return the module")
        net = net.double().eval()
        if self.state:
            try:
                sd = torch.load(io.BytesIO(self.state), weights_only=True)
                net.load_state_dict(sd)
            except Exception as exc:  # noqa: BLE001
                raise NldistError(f"cannot load the state_dict of {self.spec!r} "
                                  f"({type(exc).__name__}); the checkpoint does not match the "
                                  "module the factory builds") from None
            net = net.double().eval()
        outer_name = getattr(net, "outer_activation", None)
        if (outer_name is None and isinstance(net, torch.nn.Sequential) and len(net) > 1
                and type(net[-1]) is torch.nn.Sigmoid):
            # a trailing sigmoid becomes the outer map: losses (bce) then work on the logit
            net, outer_name = net[:-1], "sigmoid"
        named = list(net.named_parameters())
        if not named:
            raise NldistError(f"module of {self.spec!r} has no parameters; nothing to score")
        names = [n for n, _ in named]
        shapes = [tuple(v.shape) for _, v in named]
        params = {n: v.detach() for n, v in named}
        buffers = {n: b.detach() for n, b in net.named_buffers()}
        fast = _linear_in_params(net)
        if fast:
            install_scale_hooks(net, [m for m in net.modules()
                                      if next(m.parameters(recurse=False), None) is not None])
        degree = getattr(net, "homogeneous_degree", None)
        if degree is not None and (not isinstance(degree, (int, float)) or degree <= 0):
            raise NldistError(f"module of {self.spec!r} declares homogeneous_degree={degree!r}; "
                              "it must be a positive number")
        outer = activation(outer_name, {}) if outer_name else None
        built = _Built(net, names, shapes, params, buffers, fast, 1, degree, outer)
        built.width = self._validate(built)
        try:
            agrees = self._fast_agrees(built) if fast else True
        except NldistError:
            raise
        except Exception as exc:  # noqa: BLE001 - e.g. .item() under vmap
            raise NldistError(f"module of {self.spec!r} cannot be vectorized with torch.func "
                              f"({type(exc).__name__}: {_first_line(exc)}); use torch ops only in "
                              "forward (no .item(), .numpy() or data-dependent Python control "
                              "flow)") from None
        if not agrees:
            log.warning("model %s: layers' outputs are not linear in their parameters (the "
                        "scaled evaluator disagrees); using the generic quadrature", self.spec)
            built.fast = False
        return built

    def _validate(self, built: _Built) -> int:
        """Smoke test on 3 fixed rows: shape, finiteness, differentiability; activation width."""
        import torch
        from torch.func import functional_call, grad


        d = self.n_features
        X = torch.linspace(-1.0, 1.0, 3 * d, dtype=torch.float64).reshape(3, d)
        width = [0]

        def count(_m: Any, _i: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                width[0] += out[0].numel() if out.ndim else 1

        hooks = [m.register_forward_hook(count) for m in built.net.modules()]
        try:
            with torch.no_grad():
                out = functional_call(built.net, (built.params, built.buffers), (X,))
        except NldistError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise NldistError(f"module of {self.spec!r} fails on input of shape (3, {d}): "
                              f"{type(exc).__name__}: {_first_line(exc)}"
                              f"; its forward must take X of shape (n, {d})") from None
        finally:
            for hk in hooks:
                hk.remove()
        if isinstance(out, torch.Tensor) and out.ndim == 2 and out.shape[1] > 1:
            built.n_outputs = int(out.shape[1])  # C outputs (logits of a classifier)
            if built.degree is not None or built.outer is not None:
                raise NldistError(f"module of {self.spec!r} has {built.n_outputs} outputs; "
                                  "homogeneous_degree and an outer sigmoid are for one output "
                                  "— drop them (cross-entropy works on the logits)")
        C = built.n_outputs
        out = as_rows(out, 3, f"module of {self.spec!r}", n_outputs=C)
        if not torch.all(torch.isfinite(out)):
            raise NldistError(f"module of {self.spec!r} returns NaN or inf on test rows; fix its "
                              "forward or initialization")

        def f(prm: dict) -> Any:
            return as_rows(functional_call(built.net, (prm, built.buffers), (X,)), 3,
                           n_outputs=C).sum()

        try:
            g = grad(f)(built.params)
        except Exception as exc:  # noqa: BLE001
            raise NldistError(f"module of {self.spec!r} is not differentiable with torch.func "
                              f"({type(exc).__name__}: {_first_line(exc)}"
                              "); use torch ops only in forward (no .item(), .numpy(), "
                              "detach or in-place ops on inputs)") from None
        gnorm = sum(float(v.abs().sum()) for v in g.values())
        if not math.isfinite(gnorm):
            raise NldistError(f"module of {self.spec!r} has NaN or inf gradients on test rows; fix "
                              "its forward")
        if gnorm == 0.0:
            zero = {k: torch.zeros_like(v) for k, v in built.params.items()}
            with torch.no_grad():
                moved = float((as_rows(functional_call(built.net, (zero, built.buffers), (X,)), 3,
                                       n_outputs=C) - out).abs().max())
            if moved > 0:
                raise NldistError(f"module of {self.spec!r} is not differentiable in its "
                                  "parameters (zero gradient but the output changes with them: "
                                  "rounding, argmax, detach?); use differentiable ops")
        return max(1, width[0])

    def _fast_agrees(self, built: _Built) -> bool:
        """The scaled evaluator equals the generic one on two rows at two points of the ray."""
        import torch


        d = self.n_features
        X = torch.linspace(-1.0, 1.0, 2 * d, dtype=torch.float64).reshape(2, d).flip(1)
        fn = self._fn(built)
        rows = torch.arange(2)
        T = torch.tensor([0.3, 0.8], dtype=torch.float64)
        W = torch.tensor([0.5, 0.5], dtype=torch.float64)
        C = built.n_outputs
        aux = post = None
        if C > 1:  # one fixed combination of the outputs
            aux = torch.linspace(0.5, 1.5, 2 * C, dtype=torch.float64).reshape(2, C)
            post = torch_combination
        slow = FunctionalRay(fn, built.params, X, aux, post, n_outputs=C).grads(rows, T, W)
        quick = ScaledModuleRay(built.net, built.params, built.buffers, X, aux, post,
                                n_outputs=C).grads(rows, T, W)
        scale = float(slow.abs().max()) or 1.0
        return float((slow - quick).abs().max()) <= 1e-9 * scale

    def _fn(self, built: _Built) -> Any:
        from torch.func import functional_call


        where = f"module of {self.spec!r}"

        def fn(prm: dict, Xb: Any) -> Any:
            return as_rows(functional_call(built.net, (prm, built.buffers), (Xb,)), Xb.shape[0],
                           where, n_outputs=built.n_outputs)

        return fn

    # -- pickling: spec + state bytes ----------------------------------------------------
    def __getstate__(self) -> dict:
        return {"spec": self.spec, "n_features": self.n_features, "n_params": self.n_params,
                "n_outputs": self.n_outputs, "source": self.source, "state": self.state,
                "quad_options": self.quad_options, "_mod": self._mod, "_fac": self._fac,
                "module_blob": self.module_blob}

    def __setstate__(self, st: dict) -> None:
        self.__dict__.update(st)
        self._key = None

    # -- parameters ------------------------------------------------------------------------
    def _params(self, theta: Any, dtype: Any) -> dict[str, Any]:
        built = self._built()
        out, i = {}, 0
        for name, shape in zip(built.names, built.shapes, strict=True):
            k = math.prod(shape)
            out[name] = theta[i : i + k].reshape(shape).to(dtype)
            i += k
        return out

    def initial_theta(self, seed: int = 0) -> np.ndarray:
        """The module's own parameters (from the factory, or the loaded checkpoint)."""
        import torch

        built = self._built()
        return torch.cat([built.params[n].reshape(-1) for n in built.names]).numpy().copy()

    def theta_from_state_dict(self, sd: dict) -> np.ndarray:
        """theta of a state_dict (parameters_to_vector order); its buffers become the model's."""
        import torch

        built = self._built()
        try:
            net = self._build_plain()
            net.load_state_dict(sd)
        except NldistError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise NldistError(f"state_dict does not fit model {self.spec!r} ({type(exc).__name__}"
                              f": {_first_line(exc)}); save module.state_dict() of the "
                              "same architecture") from None
        net = net.double()
        theta = torch.nn.utils.parameters_to_vector(net.parameters()).detach().numpy().copy()
        if theta.size != self.n_params or len(built.names) != len(list(net.parameters())):
            raise NldistError(f"state_dict has {theta.size} parameters but {self.spec!r} has "
                              f"{self.n_params}")
        self.state = _state_bytes(net)
        self._key = None
        self._built()
        return theta

    def _build_plain(self) -> Any:
        return self._make_net().double().eval()

    # -- torch forms -------------------------------------------------------------------------
    def torch_forward(self, theta: Any, X: Any) -> Any:
        """f(theta; X) on tensors (n,), differentiable in theta (outer map applied)."""
        built = self._built()
        out = self._fn(built)(self._params(theta, X.dtype), X)
        return built.outer.torch_phi(out) if built.outer is not None else out

    def torch_jacobian(self, theta: Any, X: Any) -> Any:
        """Per-row gradients (n, p) on tensors (torch.func), for training on the sample."""
        import torch

        dt = X.dtype
        J = self._ray(theta.detach().to(dt), X, None, None, None).grads(
            torch.arange(X.shape[0]), torch.ones(1, dtype=dt), torch.ones(1, dtype=dt))
        return J

    def _post(self, built: _Built, post: Any) -> Any:
        if built.outer is None or getattr(post, "on_logit", False):
            return post
        phi = built.outer.torch_phi
        if post is None:
            return lambda out, a: phi(out)
        return lambda out, a: post(phi(out), a)

    def _ray(self, theta: Any, X: Any, aux: Any, post: Any, opts: Any, inner: bool = False):

        opts = opts or AdjointOptions()
        built = self._built()
        dt = X.dtype
        prm = self._params(theta, dt)
        post = post if inner else self._post(built, post)
        C = built.n_outputs
        if built.fast:
            return ScaledModuleRay(built.net, prm, _module_dtype_cast(built.buffers, dt), X, aux,
                                   post, opts.max_elems, built.width, n_outputs=C)
        buffers = _module_dtype_cast(built.buffers, dt)
        from torch.func import functional_call


        def fn(p: dict, Xb: Any) -> Any:
            return as_rows(functional_call(built.net, (p, buffers), (Xb,)), Xb.shape[0],
                           f"module of {self.spec!r}", n_outputs=C)

        return FunctionalRay(fn, prm, X, aux, post, opts.max_elems, n_outputs=C)

    def ray(self, theta: Any, X: Any, aux: Any, post: Any, opts: Any) -> Any:
        """The quadrature engine's evaluator for this module (fast scaled one when eligible)."""
        return self._ray(theta, X, aux, post, opts)

    # -- adjoint: homogeneous shortcut, else quadrature --------------------------------------
    def adjoint(self, theta: Any, X: Any) -> np.ndarray:
        """F*(theta) (n, p) float64: Prop. 3.1 if the module declares a degree, else quadrature."""

        theta, X = self.check_theta(theta), self.check_X(X)
        if self._built().degree is not None:
            outer = self._built().outer or activation("identity", {})
            return self._homogeneous(theta, X, lambda g: outer.divdiff(g), None)
        return quadrature.adjoint(self, theta, X)

    def residual_adjoint(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                         loss: Any) -> np.ndarray:
        """Adjoint of r_i = r(f_i, y_i) (Prop. 3.1 when homogeneous, else quadrature)."""

        if self._built().degree is not None:
            outer = self._built().outer or activation("identity", {})
            return self._homogeneous(theta, X, lambda g: psi_divdiff(loss, outer, g, y),
                                     (y, loss))
        return self.residual_adjoint_quadrature(theta, X, y, loss)

    def residual_adjoint_quadrature(self, theta: np.ndarray, X: np.ndarray, y: np.ndarray,
                                    loss: Any) -> np.ndarray:
        """Adjoint of r_i by quadrature (a loss of the output's logit, bce of a sigmoid
        output: from the logit)."""

        outer = self._built().outer
        logit = loss.logit_of is not None and outer is not None and outer.name == loss.logit_of
        post = loss.torch_post_logit() if logit else loss.torch_post()
        return quadrature.adjoint(self, theta, X, aux=y, post=post)

    def _homogeneous(self, theta: np.ndarray, X: np.ndarray, factor: Any, resid: Any):
        """f* = factor(g) / k * grad g; rows failing (ID) fall back to quadrature."""
        import torch


        use_worker_threads()
        built = self._built()
        opts = quadrature.options(self)
        dt = quadrature.torch_dtype(opts)
        ray = self._ray(torch.as_tensor(theta).to(dt), torch.as_tensor(X).to(dt), None, None,
                        opts, inner=True)
        rows = torch.arange(X.shape[0])
        one = torch.ones(1, dtype=dt)
        G = quadrature.guard(self, "the gradient", lambda: ray.grads(rows, one, one))
        with torch.no_grad():
            g = ray.forward(1.0, rows).double().numpy()
        G = G.double().numpy()
        F = G * (factor(g) / float(built.degree))[:, None]
        # (ID) check on the model's own output (or residual) and fallback
        outer = built.outer or activation("identity", {})
        f1, f0 = outer.phi(g), np.full_like(g, outer.phi0)
        if resid is not None:
            y, loss = resid
            if loss.logit_of is not None and outer.name == loss.logit_of:
                f1, f0 = loss.residual_logit(g, y), loss.residual_logit(np.zeros_like(g), y)
            else:
                f1, f0 = loss.residual(f1, y), loss.residual(f0, y)
        dot = F @ theta
        scale = np.abs(f1) + np.abs(f0) + np.abs(F) @ np.abs(theta)
        bad = np.abs(f1 - f0 - dot) > opts.rtol * np.maximum(scale, np.finfo(float).tiny)
        if bad.any():
            log.warning("model %s declares homogeneous_degree=%s but (ID) fails on %d row(s); "
                        "using quadrature for them", self.spec, built.degree, int(bad.sum()))
            aux = None if resid is None else resid[0][bad]
            F[bad] = (quadrature.adjoint(self, theta, X[bad]) if resid is None else
                      self.residual_adjoint_quadrature(theta, X[bad], aux, resid[1]))
        return F


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def _state_bytes(net: Any) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save({k: v.detach().clone() for k, v in net.state_dict().items()}, buf)
    return buf.getvalue()


def _linear_in_params(net: Any) -> bool:
    """Every module holding parameters directly is a layer linear in them (known types)."""
    for m in net.modules():
        if next(m.parameters(recurse=False), None) is None:
            continue
        if type(m).__module__.split(".")[0] != "torch" or type(m).__name__ not in _LINEAR_IN_PARAMS:
            return False
    return True


def torch_spec(spec: str, d: int) -> TorchModel:
    """``torch:<module.path>:<factory>[(k=v,...)]``."""
    parse_torch_spec(spec)
    return TorchModel(spec=spec, n_features=d)


def mlp_spec(spec: str, d: int) -> TorchModel:
    """``mlp:<h1>,<h2>,...:<C>[:<act>]``: a C-class MLP classifier (logits out) built by
    :func:`nldist.examples.nets.classifier`."""
    return TorchModel(spec=spec, n_features=d, source=mlp_torch_spec(spec))


def from_module(module: Any, n_features: int) -> TorchModel:
    """A live ``torch.nn.Module`` as a model: its architecture (cloudpickle) and its
    ``state_dict`` travel to the workers; theta is its parameters (``parameters_to_vector``
    order, ``model.initial_theta()``). The spec names its class (provenance)."""
    import torch

    if not isinstance(module, torch.nn.Module):
        raise NldistError(f"expected a torch.nn.Module, got {type(module).__name__}")
    cls = type(module)
    mine = copy.deepcopy(module).cpu()  # the user's module is left as it is
    try:
        blob = cloudpickle.dumps(mine)
    except Exception as exc:  # noqa: BLE001
        raise NldistError(f"cannot serialize the module {cls.__name__} for the workers "
                          f"({type(exc).__name__}: {_first_line(exc)}); name its factory "
                          "instead: model='torch:my_module:make_net'") from None
    state = _state_bytes(mine.double())
    return TorchModel(spec=f"torch:{cls.__module__}:{cls.__name__}", n_features=n_features,
                      module_blob=blob, state=state)
