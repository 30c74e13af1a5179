"""nldist: importance sampling for nonlinear models with nonlinear leverage scores on Dask."""

from nldist._version import __version__
from nldist.api import (
    Sample,
    adjoint,
    dual_matrix,
    leverage,
    load_sample,
    sample,
    scores,
    to_torch,
)
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.base import Model

__all__ = [
    "Model",
    "NldistError",
    "Sample",
    "__version__",
    "adjoint",
    "dual_matrix",
    "get_model",
    "leverage",
    "load_sample",
    "sample",
    "scores",
    "to_torch",
]
