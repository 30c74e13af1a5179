"""The sample as the Hessian of the full-data problem (MATH.md §9, "The sample as a
preconditioner"; issue 27): exact full-data gradients, a sample's Gauss-Newton matrix
(``nldist fit``).

The modules, in the order a fit uses them:

* :mod:`nldist.precond.gradient` — one row block's exact loss and gradient (the full-data
  pass: :func:`grad_block`), the weighted sample's (loss, gradient) oracle;
* :mod:`nldist.precond.sample_model` — the sample's model matrix H_S(theta)
  (:func:`sample_gn`), its BFGS corrections and its largest eigenvalue;
* :mod:`nldist.precond.steps` — the step solver: the minimizer of the damped model over the
  ball by Cholesky factorizations or an eigendecomposition, the KKT norm, the bound that
  gates the stopping test;
* :mod:`nldist.precond.driver` — :func:`fit_precond` (accept/reject, damping, secant pairs,
  the stopping rule) and :class:`PrecondResult`;
* :mod:`nldist.precond.lbfgs` — L-BFGS on all rows (:func:`fit_lbfgs`), the third
  candidate;
* :mod:`nldist.precond.choice` — the choice between full Gauss-Newton, the preconditioned
  method and L-BFGS by measured cost (:func:`choose`, :func:`chunk_costs`,
  :func:`sample_passes`).

Every name callers used from the former single module is bound here.
"""

from __future__ import annotations

from nldist.precond.choice import choose, chunk_costs, sample_passes
from nldist.precond.driver import (
    CHOL_MU,
    NOISE,
    NULL_GTOL,
    RCOND,
    SLACK,
    XTOL,
    PrecondResult,
    fit_precond,
)
from nldist.precond.gradient import grad_block, sample_oracle_any
from nldist.precond.lbfgs import fit_lbfgs
from nldist.precond.sample_model import JAC_ROWS, bfgs, sample_gn, top_eigenvalue
from nldist.precond.steps import ball_step, chol_ball_step, kkt_norm, newton_lower_bound
from nldist.train import project_ball

__all__ = [
    "CHOL_MU", "JAC_ROWS", "NOISE", "NULL_GTOL", "RCOND", "SLACK", "XTOL", "PrecondResult",
    "ball_step", "bfgs", "choose", "chol_ball_step", "chunk_costs", "fit_lbfgs", "fit_precond",
    "grad_block", "kkt_norm", "newton_lower_bound", "project_ball", "sample_gn",
    "sample_oracle_any", "sample_passes", "top_eigenvalue",
]
