"""nldist: importance sampling for nonlinear models with nonlinear leverage scores on Dask."""

from nldist.api import adjoint, dual_matrix, leverage, sample, scores
from nldist.errors import NldistError
from nldist.models import Model, get_model

__version__ = "0.1.0"

__all__ = [
    "Model",
    "NldistError",
    "__version__",
    "adjoint",
    "dual_matrix",
    "get_model",
    "leverage",
    "sample",
    "scores",
]
