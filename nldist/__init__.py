"""nldist: importance sampling for nonlinear models with nonlinear leverage scores on Dask.

The public names load on first use (PEP 562): ``import nldist`` imports neither Dask,
pandas, zarr nor torch, so the command line and ``nldist.__version__`` start in a fraction
of a second; ``nldist.scores`` (or ``from nldist import scores``) imports the API then.
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

from nldist._version import __version__
from nldist.errors import NldistError

if TYPE_CHECKING:  # the same names, for type checkers and the import graph of test_layers
    from nldist.api import (
        Sample,
        adjoint,
        dual_matrix,
        fit,
        leverage,
        load_sample,
        sample,
        scores,
        select_sample,
        to_torch,
    )
    from nldist.models import get_model
    from nldist.models.base import Model

#: public name -> the module that defines it, imported on first access (``__getattr__``)
_LAZY = {
    "Sample": "nldist.api",
    "adjoint": "nldist.api",
    "dual_matrix": "nldist.api",
    "fit": "nldist.api",
    "leverage": "nldist.api",
    "load_sample": "nldist.api",
    "sample": "nldist.api",
    "scores": "nldist.api",
    "select_sample": "nldist.api",
    "to_torch": "nldist.api",
    "get_model": "nldist.models",
    "Model": "nldist.models.base",
}

__all__ = [
    "Model",
    "NldistError",
    "Sample",
    "__version__",
    "adjoint",
    "dual_matrix",
    "fit",
    "get_model",
    "leverage",
    "load_sample",
    "sample",
    "scores",
    "select_sample",
    "to_torch",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'nldist' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # once: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    """The public names (tab completion), not the helpers this module imports."""
    return sorted({*__all__, "__version__"})


class _Package(types.ModuleType):
    """The package module, whose public ``scores`` function is never shadowed by the
    subpackage ``nldist.scores`` (the import system binds a loaded submodule on its parent;
    the eager ``from nldist.api import scores`` used to rebind it afterwards)."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return  # reachable as sys.modules["nldist.scores"] / ``from nldist.scores import``
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
