"""How a block of a score matrix is reduced: per-block statistics in pass 1, a global
normalizer, per-row values in pass 2 (pure NumPy through an injected backend).

==================  ===============================  ==========================  =========
reduction           pass 1 (per block, then a tree)  global                      pass 2 row
==================  ===============================  ==========================  =========
:class:`Leverage`   block R (from the Gram)           R of the stacked R's, rank  ``‖R⁻ᵀa_i‖²``
:class:`RidgeLeverage`  same                           R of ``[R; √λ I]``, d_eff   same, ridge
:class:`SquaredNorm`  ``‖A_b‖_F²``                     ``‖A‖_F²``                  ``‖a_i‖²``
:class:`Uniform`    the row count                      n                           1
==================  ===============================  ==========================  =========

Row values divided by the global total sum to 1 over all rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.scores import linalg


@dataclass(frozen=True)
class Normalizer:
    """Global quantities pass 2 needs: the R factor (leverage kinds) and the normalizer.

    ``total`` is rank (leverage), effective dimension (ridge), ||A||_F^2 (norm) or n
    (uniform), so that block scores divided by it sum to 1 over all rows. ``persist`` holds
    pass 1's persisted-block statistics (:func:`nldist.scores.block.empty_stats`) or None.
    """

    kind: str
    n: int
    total: float
    factor: linalg.RFactor | None = None
    qr_methods: dict | None = None
    persist: dict | None = None
    #: per row chunk of X, the sum of its pass-2 values divided by ``total`` (float64
    #: (n_chunks,)), known from pass 1 alone (:func:`nldist.scores.block.part_mass`); set by
    #: :func:`nldist.graph.passes.pass1` with ``masses=True`` for the fused sampling pass
    masses: np.ndarray | None = None

    @property
    def rank(self) -> int | None:
        return None if self.factor is None else self.factor.rank


@dataclass(frozen=True)
class Leverage:
    """Exact leverage ``‖U_i‖²`` from an R-only TSQR (sums to rank)."""

    gram = True
    uses_ridge = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        fac = linalg.finalize_r(stats["R"], stats["n"], ridge=ridge if self.uses_ridge else 0,
                                rtol=rtol)
        if fac.total <= 0:
            raise NldistError(
                f"the matrix for {kind} is all zeros (rank 0); scores are undefined — "
                "check theta and the data, or use kind 'uniform'"
            )
        methods = dict(stats.get("methods") or {})
        return Normalizer(kind, stats["n"], fac.total, fac, methods, stats.get("persist"))

    def rows(self, A: np.ndarray, norm: Normalizer, backend: Any, fresh: bool) -> np.ndarray:
        return backend.row_leverage(A, norm.factor, fresh)


@dataclass(frozen=True)
class RidgeLeverage(Leverage):
    """``a_iᵀ (AᵀA + λI)⁻¹ a_i`` (sums to the effective dimension)."""

    uses_ridge = True


@dataclass(frozen=True)
class SquaredNorm:
    """Squared row norms ``‖a_i‖²`` (sums to ``‖A‖_F²``)."""

    gram = False
    uses_ridge = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        if stats["fro2"] <= 0:
            raise NldistError(f"the matrix for {kind} is all zeros; scores are undefined")
        return Normalizer(kind, stats["n"], stats["fro2"], persist=stats.get("persist"))

    def rows(self, A: np.ndarray, norm: Normalizer, backend: Any, fresh: bool) -> np.ndarray:
        return backend.row_sqnorms(A)


@dataclass(frozen=True)
class Uniform:
    """Every row 1/n: no matrix, no pass over X."""

    gram = False
    uses_ridge = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        return Normalizer(kind, stats["n"], float(stats["n"]))


@dataclass(frozen=True)
class ResponseAware:
    """A response-aware distribution of :mod:`nldist.scores.oneread` (``influence``,
    ``influence-mix``, ``auto``): row values from a factor of the dual rows and the residual,
    normalised by a total only known after the pass — never reduced by the two-pass block
    engine (its :meth:`finalize` refuses with the verbs that sample by it)."""

    candidate: str
    gram = True
    uses_ridge = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        raise NldistError(
            f"kind {kind!r} is response-aware: it is sampled by `nldist select` (one read, or "
            "one_read: false for the exact two-pass version) and computed by nldist.scores; "
            "run, experiment and diagnose store leverage kinds — use kind: nonlinear-leverage "
            "there")
