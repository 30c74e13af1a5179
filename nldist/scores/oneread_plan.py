"""The one-read sampler's driver side (:mod:`nldist.scores.oneread`): before the pass, the
pilot's estimates and each candidate's draw rate (:func:`plan`); after it, the choice, the
size and the exact-size sample (:func:`conclude`), and the pooling of the sample with the
uniform pilot (:func:`pooling_weight`). Pure NumPy; the select stage and
:func:`nldist.select_sample` call these.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from nldist.errors import NldistError
from nldist.scores.oneread import (
    ONE_READ_KINDS,
    RowFactor,
    estimate_totals,
    finalize,
    pilot_totals,
)
from nldist.scores.oneread_predict import CANDIDATES, GUARD, choose, error_at, predict, size_for

#: rows whose value is within this factor of certainty at the planned size come back with
#: their terms (at most HEAVY x s per candidate): the predicted error is capped exactly for
#: sizes up to about HEAVY x the planned one
HEAVY = 8.0


#: drawn rows per expected sample row: covers the pilot's error in estimating the totals
#: (rows the final sample wants beyond it are kept with their draw probability: still
#: unbiased, the sample a little smaller)
OVERSAMPLE = 1.5


def plan(Dp: np.ndarray, theta: np.ndarray, fac: RowFactor, group: int, kind: str,
         s: int | None, eps: float | None
         ) -> tuple[RowFactor, np.ndarray, float, np.ndarray]:
    """Before the pass: the pilot's totals, and each candidate's draw rate.

    Parameters
    ----------
    Dp : ndarray of shape (m·g, p + 1)
        The pilot's dual rows.
    theta : ndarray of shape (p,)
    fac : RowFactor
    group : int
    kind : str
        A candidate or ``auto`` (every candidate drawn).
    s, eps : int or None, float or None
        The sample size, or the target error it is planned from (the pilot's prediction).

    Returns
    -------
    fac : RowFactor with ``z_hat`` set
    rates : ndarray of shape (4,) (0 for a candidate not drawn)
    s_plan : float, the size the draw is planned for
    heavy : ndarray of shape (4,), the value above which a row's terms come back for the
        capped prediction (:data:`HEAVY` times below the certainty threshold at s_plan)
    """
    if kind not in ONE_READ_KINDS:
        raise NldistError(f"kind {kind!r} is not sampled in one read; use one of "
                          f"{', '.join(ONE_READ_KINDS)}")
    if (s is None) == (eps is None):
        raise NldistError("give the sample size s or target_error, not both")
    z_hat = estimate_totals(Dp, theta, fac, group)
    fac = replace(fac, z_hat=z_hat)
    if eps is not None:
        if not 0 < eps < 1:
            raise NldistError(f"target_error must be in (0, 1), got {eps!r}")
        ptot = pilot_totals(Dp, theta, fac, group)
        guess = {c: size_for(ptot, c, eps) for c in CANDIDATES}
        s_plan = (min(g for g in guess.values() if np.isfinite(g)) if kind == "auto"
                  else guess[kind])
        if not np.isfinite(s_plan):
            raise NldistError(f"target_error {eps:g}: the pilot predicts no finite sample size "
                              f"for kind {kind}; give s instead")
    else:
        if int(s) < 1:
            raise NldistError(f"s must be an int >= 1, got {s!r}")
        s_plan = float(s)
    s_plan = min(max(float(s_plan), 1.0), float(fac.n))
    drawn = CANDIDATES if kind == "auto" else (kind,)
    rates = np.array([OVERSAMPLE * s_plan / z_hat[c] if c in drawn else 0.0
                      for c in CANDIDATES])
    heavy = np.array([z_hat[c] / (HEAVY * s_plan) for c in CANDIDATES])
    return fac, rates, s_plan, heavy


def conclude(got: dict, kind: str, s: int | None, eps: float | None, rates: np.ndarray,
             seed: int, p: int, n: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """After the pass: the distribution (``auto``: :func:`choose`), the size (``eps``:
    :func:`size_for` on the exact sums) and the final sample (:func:`finalize`).

    Parameters
    ----------
    got : dict
        The pass's result: ``totals`` and the drawn rows ``idx`` (k,), ``q`` (4, k).
    kind, s, eps, rates : as :func:`plan`
    seed : int
    p : int
        Parameters of the model (the guard's p).
    n : int

    Returns
    -------
    keep : ndarray of shape (s',), positions into the drawn rows
    weights : ndarray of shape (s',)
    info : dict, the JSON summary (choice and why, predictions at the final size, sizes)
    """
    tot = got["totals"]
    sizes = {c: size_for(tot, c, eps) for c in CANDIDATES} if eps is not None else None
    if kind == "auto":
        s_pred = s if sizes is None else min(v for v in sizes.values() if np.isfinite(v))
        chosen, why = choose(predict(tot, s_pred, p))
    else:
        chosen, why = kind, "the job's kind"
    s_final = int(s) if sizes is None else int(np.ceil(min(sizes[chosen], n)))
    pred = predict(tot, s_final, p)
    j = CANDIDATES.index(chosen)
    keep, w, finfo = finalize(got["idx"], got["q"], chosen, s_final, float(rates[j]), seed)
    if keep.size == 0:
        raise NldistError(f"the {chosen} sample came out empty (size {s_final}); raise s or "
                          "target_error")

    def clean(v: Any) -> Any:
        return None if isinstance(v, float) and not np.isfinite(v) else v

    info = {
        "kind": chosen, "requested": kind, "why": why, "requested_size": s_final,
        "totals_n": int(tot["n"]),
        "size": int(keep.size), "target_error": eps, "drawn_rows": int(got["idx"].size),
        "oversample": OVERSAMPLE,
        "totals": {c: float(tot["Z"][i]) for i, c in enumerate(CANDIDATES)},
        "loss_theta0": float(tot["L"]), "rank_estimate": float(tot["H"]),
        "predicted": {c: {k: clean(v) for k, v in d.items()} for c, d in pred.items()},
        "guard": f"a prediction is trusted when s >= {GUARD:g} p d_n",
        **finfo,
    }
    if sizes is not None:
        info["sizes_for_target"] = {c: clean(float(v)) for c, v in sizes.items()}
    if finfo["short"]:
        info["short"] = (f"the draw held {keep.size} of the {s_final} rows asked for (the "
                         "pilot over-estimated the distribution's total): kept with their "
                         "Poisson weights, still unbiased; raise pilot_factor_s for the full "
                         "size")
    return keep, w, info


def pooling_weight(tot_pred: float, pilot_pred: float) -> float:
    """λ of the pooled fit λ·(sample) + (1 − λ)·(uniform pilot): inverse-variance weights of
    the two unbiased estimates of the full-data loss, from their predicted errors (the
    sample's at s, uniform's at the pilot's m); 1 when the pilot's prediction is unknown,
    0 when the pilot holds every row (its error is 0)."""
    if not np.isfinite(pilot_pred) or pilot_pred < 0:
        return 1.0
    if not np.isfinite(tot_pred) or tot_pred < 0:
        return 0.0
    if tot_pred + pilot_pred <= 0:
        return 1.0
    return float(pilot_pred / (tot_pred + pilot_pred))


def pilot_error(tot: dict, m: int) -> float:
    """Predicted relative error of a fit on a uniform sample of m rows (the pilot): uniform's
    prediction at s = m (0 when m covers every row)."""
    if m >= int(tot["n"]):
        return 0.0
    return error_at(tot, CANDIDATES.index("uniform"), float(m))
