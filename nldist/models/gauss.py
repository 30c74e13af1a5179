"""Gauss-Legendre rules on [0, 1] (pure NumPy): the nodes of the quadrature engine and of the
losses' divided differences."""

from __future__ import annotations

import functools

import numpy as np


@functools.lru_cache(maxsize=64)
def gauss_legendre(q: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on [0, 1] (exact for degree 2q - 1).

    Returns
    -------
    t : ndarray (q,), increasing, in (0, 1)
    w : ndarray (q,), positive, summing to 1
    """
    x, w = np.polynomial.legendre.leggauss(int(q))
    t, w = (x + 1.0) / 2.0, w / 2.0
    return t, w
