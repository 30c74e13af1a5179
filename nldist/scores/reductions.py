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

Each reduction owns its three steps, so the block engine (:mod:`nldist.scores.block`) never
asks which kind it runs: :meth:`Reduction.close_block` turns a block's accumulated value (the
Gram, or ``‖A_b‖_F²``) into its pass-1 statistics, :meth:`Reduction.finalize` the reduced
statistics into the :class:`Normalizer`, and :meth:`Reduction.rows` / :meth:`Reduction.mass`
give the pass-2 row values and a chunk's mass from pass 1 alone. The engine plans around two
declared capabilities: ``gram`` (pass 1 accumulates the Gram; a block's R may need the whole
block) and ``matrix`` (False: the values follow from the row count, X is never read).
"""

from __future__ import annotations

from collections.abc import Callable
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


class Reduction:
    """The declared contract of every reduction, with its defaults.

    Attributes
    ----------
    gram : bool
        Pass 1 accumulates each block's Gram ``A_bᵀA_b`` (and its R); else ``‖A_b‖_F²``.
    uses_ridge : bool
        The normalizer takes the job's ridge.
    matrix : bool
        Row values come from a matrix; False: from the row count alone (no pass over X).
    """

    gram: bool = False
    uses_ridge: bool = False
    matrix: bool = True

    def close_block(self, value: Any, finite: bool, *, spec: Any, rows: int, offset: int,
                    n: int, block: Callable[[], np.ndarray], be: Any) -> dict:
        """Pass-1 statistics of one block from its accumulated ``value`` (the Gram with
        ``gram``, else ``‖A_b‖_F²``; ``finite`` says whether it is, the data being finite):
        ``{"fro2": ...}`` or ``{"R": ..., "methods": ...}``. ``rows`` is the block's matrix
        rows, ``offset .. offset + n - 1`` its examples (messages), ``block()`` the whole
        block when the value does not suffice."""
        if not finite:
            raise NldistError(
                f"the matrix for {spec.name} overflows in rows {offset}..{offset + n - 1}; "
                "rescale the data or check theta"
            )
        return {"fro2": value}

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        """The global normalizer from the tree-reduced pass-1 statistics."""
        raise NotImplementedError

    def rows(self, A: np.ndarray, norm: Normalizer, backend: Any, fresh: bool) -> np.ndarray:
        """Pass-2 values (before dividing by ``norm.total``) of the rows of ``A``."""
        raise NotImplementedError

    def constant_rows(self, n: int, norm: Normalizer) -> np.ndarray:
        """Pass-2 probabilities of ``n`` rows without a matrix (``matrix`` False only)."""
        raise NotImplementedError

    def mass(self, part: dict, norm: Normalizer, backend: Callable[[], Any]) -> float:
        """The sum of one block's pass-2 values (before dividing by ``norm.total``) from its
        pass-1 result ``part`` alone (:func:`nldist.scores.block.part_mass`); ``backend()``
        gives the block's backend."""
        return float(part["fro2"])


@dataclass(frozen=True)
class Leverage(Reduction):
    """Exact leverage ``‖U_i‖²`` from an R-only TSQR (sums to rank)."""

    gram = True
    uses_ridge = False

    def close_block(self, value: Any, finite: bool, *, spec: Any, rows: int, offset: int,
                    n: int, block: Callable[[], np.ndarray], be: Any) -> dict:
        """The block's R: from the Cholesky factor of the Gram in the common
        well-conditioned case, else from the whole block by the backend's ``block_r``."""
        G = value
        if spec.rows.gram_only:  # never formed: the Gram's R unless it is ill-conditioned
            R = (linalg.cholqr_r(G, linalg.KAPPA_CHOLQR2) if finite
                 and spec.qr_method == "auto" else None)
        else:
            R = (linalg.cholqr_r(G) if finite and spec.qr_method == "auto"
                 and rows >= 4 * G.shape[0] else None)
        method = "cholqr"
        if R is None:
            A = block()
            if not np.isfinite(A).all():
                raise NldistError(
                    f"the matrix for {spec.name} has NaN/inf entries in rows {offset}.."
                    f"{offset + n - 1} although the data are finite (overflow in the model at "
                    "this theta?); rescale the data or check theta"
                )
            R, method = be.block_r(A, spec.qr_method, G=G if finite else None)
        return {"R": R, "methods": {method: 1}}

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

    def mass(self, part: dict, norm: Normalizer, backend: Callable[[], Any]) -> float:
        """The row values of the block's (q, q) R summed: ``‖A_b M‖_F² = ‖R_b M‖_F²``."""
        R = part["R"]
        if R is None or part["n"] == 0:
            return 0.0
        R = np.ascontiguousarray(R, dtype=np.float64)
        return float(np.sum(self.rows(R, norm, backend(), True)))


@dataclass(frozen=True)
class RidgeLeverage(Leverage):
    """``a_iᵀ (AᵀA + λI)⁻¹ a_i`` (sums to the effective dimension)."""

    uses_ridge = True


@dataclass(frozen=True)
class SquaredNorm(Reduction):
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
class Uniform(Reduction):
    """Every row 1/n: no matrix, no pass over X."""

    gram = False
    uses_ridge = False
    matrix = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        return Normalizer(kind, stats["n"], float(stats["n"]))

    def constant_rows(self, n: int, norm: Normalizer) -> np.ndarray:
        return np.full(n, 1.0 / norm.total)

    def mass(self, part: dict, norm: Normalizer, backend: Callable[[], Any]) -> float:
        return float(part["n"])


@dataclass(frozen=True)
class ResponseAware(Reduction):
    """A response-aware distribution of :mod:`nldist.scores.oneread` (``influence``,
    ``influence-mix``, ``auto``): row values from a factor of the dual rows and the residual,
    normalised by a total only known after the pass — never reduced by the two-pass block
    engine (its pass 1 is the cheap squared norm, and its :meth:`finalize` refuses with the
    verbs that sample by it)."""

    candidate: str
    gram = False
    uses_ridge = False

    def finalize(self, kind: str, stats: dict, ridge: float, rtol: float | None) -> Normalizer:
        raise NldistError(
            f"kind {kind!r} is response-aware: it is sampled by `nldist select` (one read, or "
            "one_read: false for the exact two-pass version) and computed by nldist.scores; "
            "run, experiment and diagnose store leverage kinds — use kind: nonlinear-leverage "
            "there")
