"""The one-read sampler's predictions, pure arithmetic on the pass's per-candidate sums
(:func:`nldist.scores.oneread.totals`): each candidate's predicted relative error at a sample
size (:func:`error_at`, :func:`predict`), the size for a target error (:func:`size_for`), the
Kish effective sample size (:func:`ess_at`) and the choice of ``auto`` (:func:`choose`).

Predicted relative error of a fit on the weighted sample (first order, Poisson sampling,
MATH.md (P)): ``E ≈ (Z·Σ_i γ_i/q_i / s − Σ_i γ_i) / L`` with ``γ_i = r_i²·τ_i`` (C rows:
``‖Σ_c r_ic W a_ic‖²``), τ_i the exact leverage (estimated by ``(m/n)·u_i`` from a pilot) and
``L = Σ r_i²``. Its reliability guard: ``d_n = Z·Σ τ_i²/q_i / p²`` (= 1 for leverage sampling);
the prediction is trusted for ``s ≥ GUARD·p·d_n``.

Kish effective sample size of a candidate's Horvitz–Thompson weights at s:
``ESS = n² / Σ_i 1/π_i`` (= s for uniform, less for any other distribution; ``(Σw)²/Σw²`` in
expectation), from the pass's ``W = Σ_i 1/q_i``. ``auto`` never samples by a distribution whose
ESS is below :data:`ESS_FLOOR`·p (see :func:`choose`).
"""

from __future__ import annotations

import numpy as np

#: the candidate distributions, in the order of every per-candidate array
CANDIDATES: tuple[str, ...] = ("uniform", "nonlinear-leverage", "influence", "influence-mix")
#: the prediction of a candidate is trusted when s >= GUARD * p * d_n (MATH.md §9: within 2x
#: of the measured median for 97-98 % of cases above 10 p d_n)
GUARD = 10.0
#: ``auto`` leaves the robust default (influence-mix) only for a candidate predicted at most
#: this fraction of its error
AUTO_MARGIN = 0.7
#: ``auto`` samples by a weighted candidate only when the Kish effective sample size of its
#: Horvitz–Thompson weights at s is at least this many times p: below it the weighted fit rests
#: on fewer effective rows than parameters (a few rows carry the loss), the first-order picture
#: behind every prediction is void, and uniform (ESS = s) is the safe sample (bio at s = 5p:
#: the mixture's ESS is 0.89 p and it loses 2x to uniform; bench/RESULTS.md, issue 26)
ESS_FLOOR = 1.0


def effective(tot: dict) -> tuple[np.ndarray, float]:
    """The sums ``A`` (per candidate) and ``B`` of the predicted error with the deferred terms
    of rows outside the pilot's span only through columns the pilot never saw
    (:class:`nldist.scores.oneread.RowFactor` ``unseen``): ``Σ_c T_jc/N_c`` and
    ``Σ_c TB_c/N_c`` added (the pass's per-column sums)."""
    A, B = np.asarray(tot["A"], dtype=np.float64), float(tot["B"])
    if "N" not in tot:
        return A, B
    N = np.asarray(tot["N"], dtype=np.float64)
    ok = N > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        dA = np.asarray(tot["T"], dtype=np.float64)[:, ok] / N[ok]
    return A + dA.sum(axis=1), B + float(np.sum(np.asarray(tot["TB"])[ok] / N[ok]))


def error_at(tot: dict, j: int, s: float) -> float:
    """Candidate j's predicted relative error at s: Σ_i γ_i (1/π_i − 1) / L with Poisson
    inclusion π_i = min(1, s q_i/Z). Rows with π_i = 1 add nothing; their terms are taken out
    of the sums using the heavy rows (every row with q above the pass's threshold), so a
    sample that takes the highest rows with certainty is not predicted below zero."""
    Aj, B = effective(tot)
    Z, A = float(tot["Z"][j]), float(Aj[j])
    if not np.isfinite(A):
        return np.inf
    if "heavy" in tot and tot["heavy"][j].size:
        q, g = tot["heavy"][j]
        cap = s * q >= Z
        with np.errstate(divide="ignore", invalid="ignore"):
            A -= float(np.sum(np.where(q[cap] > 0, g[cap] / q[cap], 0.0)))
        B -= float(np.sum(g[cap]))
    return max(0.0, (Z * A / float(s) - B) / max(float(tot["L"]), 1e-300))


def ess_at(tot: dict, j: int, s: float) -> float:
    """Kish effective sample size of candidate j's Horvitz–Thompson weights at s:
    ``n² / Σ_i 1/π_i`` with π_i = min(1, s q_i/Z) (rows taken with certainty, known from the
    heavy rows, count 1 each): s for uniform, ≤ s for any distribution (Cauchy–Schwarz)."""
    n, Z = float(tot["n"]), float(tot["Z"][j])
    if "W" not in tot or n <= 0 or not Z > 0:
        return np.nan
    W, certain = float(tot["W"][j]), 0
    if "heavy" in tot and tot["heavy"][j].size:
        q = tot["heavy"][j][0]
        cap = (s * q >= Z) & (q > 0)
        W -= float(np.sum(1.0 / q[cap]))
        certain = int(np.sum(cap))
    inv = Z / float(s) * max(W, 0.0) + certain
    return n * n / inv if inv > 0 else float(s)


def predict(tot: dict, s: float | np.ndarray, p: int) -> dict[str, dict]:
    """Predicted relative error at s, the guard and the effective sample size, per candidate.

    Returns
    -------
    dict: candidate -> {``predicted``: relative error at s, ``d_n``, ``trusted``: bool,
    ``total``: Z, ``ess``: Kish effective sample size at s (:func:`ess_at`; NaN without the
    pass's W), ``ess_floor``: :data:`ESS_FLOOR`·p, ``ess_ok``: ess ≥ ess_floor (True when
    unknown)}
    """
    out = {}
    for j, name in enumerate(CANDIDATES):
        Z, D = float(tot["Z"][j]), float(tot["D"][j])
        pred = error_at(tot, j, float(s))
        d_n = Z * D / max(p, 1) ** 2 if np.isfinite(D) else np.inf
        ess = ess_at(tot, j, float(s))
        out[name] = {"predicted": pred, "d_n": d_n, "trusted": bool(s >= GUARD * p * d_n),
                     "total": Z, "ess": ess, "ess_floor": ESS_FLOOR * p,
                     "ess_ok": bool(not np.isfinite(ess) or ess >= ESS_FLOOR * p)}
    return out


def size_for(tot: dict, name: str, eps: float) -> float:
    """The smallest s whose predicted relative error is at most ``eps`` (inf when none)."""
    j = CANDIDATES.index(name)
    Aj, B = effective(tot)
    Z, A = float(tot["Z"][j]), float(Aj[j])
    if not np.isfinite(A):
        return np.inf
    guess = Z * A / (eps * max(float(tot["L"]), 1e-300) + B)  # uncapped
    if "heavy" not in tot or not tot["heavy"][j].size:
        return guess
    lo, hi = 1.0, max(2.0, float(tot["n"]))  # the capped error decreases in s: bisect
    if error_at(tot, j, hi) > eps:
        return np.inf
    for _ in range(100):
        mid = np.sqrt(lo * hi)
        if error_at(tot, j, mid) > eps:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-6 * hi:
            break
    return hi


def choose(pred: dict[str, dict]) -> tuple[str, str]:
    """``auto``: the candidate to sample by, and why.

    The default is ``influence-mix`` (the robust choice on real tables, MATH.md §9); another
    weighted candidate replaces it only when its prediction is trusted (s ≥ GUARD·p·d_n) and
    at most :data:`AUTO_MARGIN` of the mixture's. Whatever is picked must keep a Kish effective
    sample size of at least :data:`ESS_FLOOR`·p (``ess_ok``); when the pick does not, ``auto``
    samples uniformly (ESS = s): a weighted fit resting on fewer effective rows than parameters
    is not what any prediction describes, and it lost to uniform where it happened (bio at
    s = 5p)."""
    base = "influence-mix"
    best, why = base, "default: the half-influence, half-leverage mixture"
    for name in CANDIDATES:
        if name == base:
            continue
        c, b = pred[name], pred[best]
        if (c["trusted"] and c.get("ess_ok", True)
                and c["predicted"] < AUTO_MARGIN * b["predicted"]):
            best = name
            why = (f"{name}'s predicted error {c['predicted']:.3g} is < {AUTO_MARGIN} x "
                   f"{base}'s {pred[base]['predicted']:.3g} and trusted "
                   f"(s >= {GUARD:g}·p·d_n, d_n = {c['d_n']:.3g})")
    if not pred[best].get("ess_ok", True):
        u = pred["uniform"]
        b = pred[best]
        floor = b.get("ess_floor", np.nan)
        why = (f"uniform: {best}'s weights leave an effective sample size (Kish) of "
               f"{b['ess']:.3g} rows at this s, below {floor:.3g} (= {ESS_FLOOR:g} x p): a "
               "weighted fit would rest on fewer effective rows than parameters (uniform's "
               f"ESS: {u['ess']:.3g})")
        best = "uniform"
    return best, why
