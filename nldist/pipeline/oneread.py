"""The one-read sampling stage of ``select`` (:mod:`nldist.scores.oneread`, MATH.md §9).

A factor of the model's dual rows at theta_0 — from a uniform pilot (the ingest reservoir: no
read of X) or, with ``one_read: false``, from the exact R of pass 1 (one more read) — then ONE
read of X in which every chunk scores its rows against the factor, draws its Poisson rows for
each candidate distribution, takes its evaluation rows and returns its sums. On the driver:
each candidate's predicted error, the choice (``kind: auto``) and the sample size
(``target_error``), and the final sample, thinned to the exact totals with Horvitz–Thompson
weights.
"""

from __future__ import annotations

import time

import numpy as np

from nldist import graph
from nldist.errors import NldistError
from nldist.models.losses import target_columns
from nldist.pipeline import stages
from nldist.pipeline.context import RunContext
from nldist.precond.gradient import ball_multiplier
from nldist.scores import oneread, oneread_plan
from nldist.scores.spec import make_spec

#: seed offset of the evaluation sample (as the two-pass fused pass)
EVAL_SALT = 0x3E7A1


def _factor(ctx: RunContext, rows: object, theta0: np.ndarray, exact: bool, n: int
            ) -> tuple[oneread.RowFactor, np.ndarray, dict, tuple]:
    """The factor, the pilot's dual rows (for the totals' estimates), its provenance and
    the pilot's rows (X, y)."""
    job = ctx.job
    Xp, yp, _, prov = stages.theta.pilot_rows(ctx, stages.theta.factor_rows(ctx))
    if yp is None:
        raise NldistError("select samples by the residual and needs a target; set "
                          "dataset.target")
    Dp = np.asarray(rows.matrix(Xp, yp, 0), dtype=np.float64)  # type: ignore[attr-defined]
    if not exact:
        fac = oneread.factor(Dp, n, m=int(Xp.shape[0]))
        return fac, Dp, {**prov, "factor": "pilot", "rank": fac.rank}, (Xp, yp)
    X, y = stages.data.xy(ctx)
    spec = make_spec("nonlinear-leverage", stages.data.model(ctx), theta0, X.shape[1], True,
                     loss=job.loss, device=job.device, y_cols=target_columns(y))
    with ctx.timed("pass 1"):
        norm = graph.passes.pass1(X, y, spec, ridge=0.0, split_every=job.split_every)
    ctx.read("pass 1 (exact factor)")
    fac = oneread.factor_from_r(norm.factor.R, n)
    return fac, Dp, {**prov, "factor": "exact (pass 1)", "rank": fac.rank}, (Xp, yp)


def sample(ctx: RunContext, kind: str, theta0: np.ndarray, s: int | None, eval_rate: float,
           exact: bool = False) -> dict:
    """Draw the sample of ``kind`` (a candidate or ``auto``) at theta_0 in one read.

    Parameters
    ----------
    kind : str
        ``uniform``, ``nonlinear-leverage``, ``influence``, ``influence-mix`` or ``auto``.
    theta0 : ndarray of shape (p,)
    s : int or None
        Expected sample size (None: from ``job.target_error``).
    eval_rate : float
        Bernoulli rate of the evaluation sample.
    exact : bool
        Factor from pass 1's exact R instead of the pilot (one more read).

    Returns
    -------
    dict with ``indices`` (s',), ``weights`` (s',), ``X`` (s', d), ``y``, ``pilot`` (X, y) the
    pilot's rows (uniform, m), ``q`` (4, s') the
    sampled rows' candidate values, ``residual`` (s',) their residual norms at theta_0,
    ``eval`` (indices, X, y), ``info`` (the JSON summary: choice, predictions, sizes,
    totals, factor).
    """
    job = ctx.job
    X, y = stages.data.xy(ctx)
    if y is None:
        raise NldistError("select needs a target column; set dataset.target")
    n = int(X.shape[0])
    m = stages.data.model(ctx)
    spec = make_spec("nonlinear-leverage", m, theta0, X.shape[1], True, loss=job.loss,
                     device=job.device, y_cols=target_columns(y))
    rows = spec.rows
    eps = job.target_error if s is None else None
    with ctx.timed("factor"):
        fac, Dp, fprov, pilot_xy = _factor(ctx, rows, theta0, exact, n)
        # the predicted error sees the ball (RowFactor.with_ball): its multiplier at theta_0
        # from the factor's pilot rows (n/m each)
        lam = ball_multiplier(m, theta0, *pilot_xy, job.radius,
                              weight=n / max(1, int(pilot_xy[0].shape[0])), loss=job.loss)
        fac = fac.with_ball(lam)
        fac, rates, s_plan, heavy = oneread_plan.plan(Dp, theta0, fac, rows.group, kind, s, eps)
    seed = int(job.seed)
    t0 = time.perf_counter()
    with ctx.timed("one read", kind=kind, key=f"score:{kind}"):
        got = graph.passes.one_read_pass(X, y, rows=rows, theta=theta0, fac=fac, rates=rates,
                                  seed=seed, eval_rate=eval_rate,
                                  eval_seed=int(job.seed) + EVAL_SALT, heavy=heavy)
    ctx.read("one read: scores + sample + evaluation rows")
    ctx.pass1_s = time.perf_counter() - t0  # a measured pass: what a full-data pass costs
    keep, w, info = oneread_plan.conclude(got, kind, s, eps, rates, seed, int(m.n_params), n)
    pred = info["predicted"][info["kind"]]["predicted"]
    m_pilot = int(pilot_xy[0].shape[0])
    pil = oneread_plan.pilot_error(got["totals"], m_pilot)
    info["pooling"] = {"pilot_rows": m_pilot, "pilot_predicted": pil,
                       "lambda": oneread_plan.pooling_weight(np.inf if pred is None else pred, pil)}
    info.update(exact_factor=exact, planned_size=s_plan, factor=fprov,
                totals_pilot_estimate=fac.z_hat, ball_multiplier=lam)
    return {"indices": got["idx"][keep], "weights": w, "X": got["X"][keep],
            "pilot": pilot_xy,
            "q": got["q"][:, keep], "residual": got["r"][keep],
            "y": None if got["y"] is None else got["y"][keep], "eval": got["eval"],
            "info": info}
