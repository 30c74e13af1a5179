"""Models: spec strings -> :class:`Model` objects with their capabilities (no Dask, no Zarr).

The registry below is the only place a spec prefix means anything. Each entry is a
factory ``(spec, n_features) -> Model``; ``torch:`` is loaded by name on first use, because
importing its module imports torch (about a second and a few hundred MB per worker that GLM
and relu2 jobs never pay).

========================  =========================================  ===================
spec                      model                                      module
========================  =========================================  ===================
``linear[:nobias]``       <w, x> + b                                 :mod:`.glm`
``glm:<act>[:nobias]``    act(<w, x> + b)                            :mod:`.glm`
``relu2:<h>[:<act>]``     act(sum_j a_j relu(<b_j, x>))              :mod:`.relu2`
``torch:<mod>:<factory>`` any torch.nn.Module ((n,) or (n, C) out)  :mod:`.torchmodel`
``softmax:<C>[:nobias]``  C logits W [x, 1] (multinomial logistic)   :mod:`.softmax`
``mlp:<h1>,..:<C>[:act]`` MLP classifier, C logits                   :mod:`.torchmodel`
========================  =========================================  ===================
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.models import glm, relu2, softmax
from nldist.models.base import Model
from nldist.models.coded import Codes, coded
from nldist.models.glm import SPEC_HELP
from nldist.models.torchspec import mlp_torch_spec, parse_torch_spec

#: spec prefix -> factory(spec, d), or "module:function" loaded on first use
FACTORIES: dict[str, Callable[[str, int], Model] | str] = {
    "linear": glm.linear_spec,
    "glm": glm.glm_spec,
    "relu2": relu2.relu2_spec,
    "torch": "nldist.models.torchmodel:torch_spec",
    "softmax": softmax.softmax_spec,
    "mlp": "nldist.models.torchmodel:mlp_spec",
    # a live torch.nn.Module handed to the Python API (not a spec prefix)
    "live": "nldist.models.torchmodel:from_module",
}


def _factory(prefix: str) -> Callable[[str, int], Model]:
    entry = FACTORIES[prefix]
    if isinstance(entry, str):
        module, name = entry.split(":")
        entry = FACTORIES[prefix] = getattr(importlib.import_module(module), name)
    return entry


def as_model(model: Any, n_features: int) -> Model:
    """A :class:`Model` from what the API accepts: a spec string (built for
    ``n_features``), a Model, or a live ``torch.nn.Module`` (its architecture and
    ``state_dict`` travel to the workers; theta defaults to its parameters)."""
    if isinstance(model, str):
        return get_model(model, n_features)
    if _is_module(model):
        return _factory("live")(model, int(n_features))
    return check_model(model)


def _is_module(obj: Any) -> bool:
    """A torch.nn.Module, without importing torch unless the object comes from it."""
    for cls in type(obj).__mro__:
        if cls.__module__.startswith("torch.nn") and cls.__name__ == "Module":
            return True
    return False


def check_model(model: Any) -> Model:
    """``model`` itself when it is a :class:`Model`, else a one-line error naming the fix
    (a live ``torch.nn.Module`` never gets here: :func:`as_model` converts it)."""
    if isinstance(model, Model):
        return model
    what = type(model).__module__.split(".")[0] + "." + type(model).__name__
    raise NldistError(f"model must be a spec string such as 'glm:sigmoid', an nldist Model "
                      f"from nldist.get_model or a torch.nn.Module, got a {what}")


def get_model(spec: Any, n_features: int, codes: Codes | None = None) -> Model:
    """Build a model from a spec string, or from a live ``torch.nn.Module``.

    Parameters
    ----------
    spec : str or torch.nn.Module
        Model spec, see the table in DESIGN.md (``"linear"``, ``"glm:sigmoid"``, ...), or a
        module (as everywhere in the API: its architecture and ``state_dict`` travel to the
        workers; theta defaults to its parameters, ``model.initial_theta()``).
    n_features : int
        Number of input columns d.
    codes : Codes, optional
        The last ``codes.k`` columns of X hold integer codes of categorical columns (a
        dataset's ``Codes.from_attrs(attrs)``): the model is built on their one-hot design
        and takes the raw columns (:mod:`nldist.models.coded`).

    Returns
    -------
    Model
        With ``n_params`` (p) and the array methods of :class:`Model`.
    """
    if isinstance(n_features, bool) or not isinstance(n_features, (int, np.integer)):
        raise NldistError(f"n_features must be a positive integer, got {n_features!r}")
    if n_features < 1:
        raise NldistError(f"n_features must be >= 1, got {n_features}; check the data has columns")
    if _is_module(spec):
        return _factory("live")(spec, int(n_features))
    if not isinstance(spec, str):
        raise NldistError(f"model spec must be a string like 'glm:sigmoid' or a "
                          f"torch.nn.Module, got {spec!r}")
    spec = spec.strip().replace(" ", "")
    if spec in ("linear", "linear:nobias"):
        prefix = "linear"
    elif glm.GLM_RE.match(spec):
        prefix = "glm"
    else:
        prefix = spec.split(":", 1)[0]
        if prefix in ("linear", "glm", "live") or prefix not in FACTORIES:
            known = SPEC_HELP + "".join(f", {p}:..." for p in FACTORIES
                                        if p not in ("linear", "glm", "live"))
            raise NldistError(f"unknown model spec {spec!r}; use one of {known}")
    if codes is None:
        return _factory(prefix)(spec, int(n_features))
    design = int(n_features) - codes.k + codes.width
    return coded(_factory(prefix)(spec, design), int(n_features), codes)


def check_spec(spec: str) -> str:
    """Validate a spec without building the model (a ``torch:`` factory is imported, not
    called: it may need the real number of features); one-line error when it is bad."""
    if isinstance(spec, str) and spec.strip().startswith("torch:"):
        parse_torch_spec(spec, check_import=True)
    elif isinstance(spec, str) and spec.strip().startswith("mlp:"):
        mlp_torch_spec(spec)
    else:
        get_model(spec, 1)
    return spec


__all__ = ["FACTORIES", "Model", "as_model", "check_spec", "get_model"]
