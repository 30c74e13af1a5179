"""nldist: importance sampling for nonlinear models with nonlinear leverage scores on Dask."""

from nldist._version import __version__
from nldist.api import adjoint, dual_matrix, leverage, sample, scores
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.base import Model

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
