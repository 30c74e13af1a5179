"""Synthetic table of new rows at scale (issue 26, Build item 6): one-read sampling against
the exact two-read scores and uniform, on a table where every row is drawn fresh.

Generator (``generate``; ``--rows`` n, rows made in blocks of ``BLOCK`` = 1,000,000, block b
drawn by ``np.random.default_rng([SEED, b])``: every row is new, nothing tiled or copied):

* numeric ``x1, x2 ~ Student-t(3)``; ``x3 = 0.6·x1 + 0.8·t(5)``; ``x4 = lognormal(0, 1) −
  e^{1/2}`` (centred, right tail); ``x5 ~ N(0, 1)``; ``x6 = lognormal(0, 0.75)·sign(N(0,1))``
  (two-sided heavy tail);
* ``c1``: ``L1`` = 5,000 levels, Zipf: P(c1 = k) ∝ (k + 1)^−1.1 (code 0 the most frequent,
  the reference level; expected rows of the rarest level: ~13 at 1M, ~270 at 20M; the 1M
  table has 3,475 of its 5,000 levels with under 50 rows, the rarest with 4);
* ``c2``: 50 levels, P(c2 = k) ∝ (k + 1)^−0.7, independent of c1;
* target ``y = 1 + x·β + α1[c1] + α2[c2] + 0.5·tanh(x3) + σ_i·ε_i`` with β = (1, −0.5,
  0.3, 0.2, 0.4, −0.25), α1[k] ~ N(0, 0.5²), α2[k] ~ N(0, 0.3²) (α[0] = 0; drawn once from
  ``default_rng([SEED, 0xA1FA])``), heteroscedastic heavy-tailed noise ``ε_i ~ t(3)``,
  ``σ_i = 0.5·(1 + 0.5·|x1_i|)·κ[c2_i]``, κ[k] = lognormal(0, 0.4) per c2 level. (The
  tanh term and the noise are outside the fitted model: a mildly misspecified mean.)

Stored with :func:`nldist.store.dataset.write_dataset` as float32 (X: n × 8, the codes in
the last two columns, ``attrs["codes"]``), model ``linear`` (OLS, squared loss) through
:func:`nldist.models.get_model` with ``Codes.from_attrs``: p = 6 + 4,999 + 49 + 1 = 5,055.

Samplers, all at the same s (``--s-mult`` × p), θ₀ = OLS on a uniform pilot (``--pilot``
rows, seeded; a level absent from the pilot gets 0):

* ``uniform``, ``nonlinear-leverage``, ``influence``, ``influence-mix``, ``auto``: the
  one-read kernel of :func:`nldist.select_sample` (its pilot factor from ``--pilot`` rows,
  random_state 0). Each kind's wall time is ONE call of ``select_sample`` on the Zarr store
  (dask, threaded scheduler, 2 workers). For the draws, the per-row candidate values q are
  computed once (the kernel's own ``_dual_rows``/``_row_values``/``_candidates`` over the
  same rows and factor) and draw k keeps the top s of ``q_i/u_i`` with
  ``u_i = hash_uniform(i, k + DRAW_SALT)`` — the priority sampling ``select_sample``
  does with ``random_state=k`` when its pilot is random_state 0's (checked: draw 0 equals
  the ``select_sample`` calls' samples row for row, weights to 1e-9). So the spread is the
  draws', one fixed pilot. ``auto``'s draws are those of the candidate it chose.
* ``nl-lev exact``: :func:`nldist.scores` (kind nonlinear-leverage: two reads, the exact
  R), sampled the same way (priority sampling of the exact scores, exact size s); and
  ``nl-lev exact iid``: the same scores drawn i.i.d. with replacement by :func:`nldist.sample`
  (the paper's sampler).

Fits: weighted least squares on the sample, solved exactly through the structure: the
5,000-level block of the normal equations is diagonal (each row has one c1 level), so it is
eliminated and the ~56-column Schur complement solved (a level absent from the sample keeps
coefficient 0 — the min-norm solution). θ* the same on all n rows in one streamed pass.
Error: ``(L(θ_S) − L*)/L*`` with L the full-data sum of squared residuals, every θ_S of every
sampler and draw evaluated in ONE streamed pass (``z = X_num·Θ_num + Θ1[c1] + Θ2[c2] + b``,
``ℓ − ℓ* = 2 r*·δ + δ²``).

Usage (BLAS single-threaded: on the shared 2-core machine two OpenBLAS threads made the
pilot's SVD ~30x slower)::

    OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python \
        bench/bench_synth.py --rows 1000000 --draws 20 --no-exact --out bench/synth_1m.json

``--rows 20000000`` is the issue's size (run with ``--no-exact``: bench/RESULTS.md "Synthetic
table at the issue's size", the one-read sampler 289 s there); the exact two-read scores did
not finish at 1M rows in 28 minutes (dense slices of the one-hot block in pass 1 at
p = 5,055). ``--exact`` (default) adds them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEED = 20261207
BLOCK = 1_000_000
L1, L2 = 5000, 50
ZIPF1, ZIPF2 = 1.1, 0.7
BETA = np.array([1.0, -0.5, 0.3, 0.2, 0.4, -0.25])
D_NUM = BETA.size
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# ----------------------------------------------------------------------------------------
# the generator
# ----------------------------------------------------------------------------------------


def _levels():
    rng = np.random.default_rng([SEED, 0xA1FA])
    a1 = rng.normal(0.0, 0.5, L1)
    a2 = rng.normal(0.0, 0.3, L2)
    kappa = rng.lognormal(0.0, 0.4, L2)
    a1[0] = a2[0] = 0.0
    p1 = (np.arange(L1) + 1.0) ** -ZIPF1
    p2 = (np.arange(L2) + 1.0) ** -ZIPF2
    return a1, a2, kappa, p1 / p1.sum(), p2 / p2.sum()


def generate_block(b: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows of block b (a fresh generator per block): X (rows, 8) float32, y (rows,)."""
    a1, a2, kappa, p1, p2 = _levels()
    rng = np.random.default_rng([SEED, b])
    X = np.empty((rows, D_NUM + 2), dtype=np.float64)
    X[:, 0] = rng.standard_t(3, rows)
    X[:, 1] = rng.standard_t(3, rows)
    X[:, 2] = 0.6 * X[:, 0] + 0.8 * rng.standard_t(5, rows)
    X[:, 3] = rng.lognormal(0.0, 1.0, rows) - np.exp(0.5)
    X[:, 4] = rng.standard_normal(rows)
    X[:, 5] = rng.lognormal(0.0, 0.75, rows) * np.sign(rng.standard_normal(rows))
    c1 = np.searchsorted(np.cumsum(p1), rng.random(rows), side="right").clip(0, L1 - 1)
    c2 = np.searchsorted(np.cumsum(p2), rng.random(rows), side="right").clip(0, L2 - 1)
    X[:, D_NUM], X[:, D_NUM + 1] = c1, c2
    Xf = X.astype(np.float32)
    xn = Xf[:, :D_NUM].astype(np.float64)  # the target from the stored (float32) features
    sigma = 0.5 * (1.0 + 0.5 * np.abs(xn[:, 0])) * kappa[c2]
    y = (1.0 + xn @ BETA + a1[c1] + a2[c2] + 0.5 * np.tanh(xn[:, 2])
         + sigma * rng.standard_t(3, rows))
    return Xf, y.astype(np.float32)


def generate(n: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.empty((n, D_NUM + 2), dtype=np.float32)
    y = np.empty(n, dtype=np.float32)
    for b, a in enumerate(range(0, n, BLOCK)):
        e = min(n, a + BLOCK)
        X[a:e], y[a:e] = generate_block(b, e - a)
    return X, y


def attrs() -> dict:
    return {"codes": {"c1": [f"c1_{k:04d}" for k in range(L1)],
                      "c2": [f"c2_{k:02d}" for k in range(L2)]},
            "columns": [f"x{j + 1}" for j in range(D_NUM)] + ["c1", "c2"],
            "target": "y", "generator": "bench/bench_synth.py"}


# ----------------------------------------------------------------------------------------
# weighted least squares through the structure (never a dense one-hot block)
# ----------------------------------------------------------------------------------------

P = D_NUM + (L1 - 1) + (L2 - 1) + 1  # theta: [x (6), c1 levels 1.. (4999), c2 (49), bias]
NO = D_NUM + (L2 - 1) + 1            # the non-c1 columns


def _other(Xb: np.ndarray) -> np.ndarray:
    """[x, onehot(c2)[1:], 1] of a row block, (m, NO) float64 (c2's one-hot: 49 columns)."""
    m = Xb.shape[0]
    O = np.zeros((m, NO))
    O[:, :D_NUM] = Xb[:, :D_NUM]
    c2 = Xb[:, D_NUM + 1].astype(np.int64)
    hit = np.flatnonzero(c2 > 0)
    O[hit, D_NUM + c2[hit] - 1] = 1.0
    O[:, -1] = 1.0
    return O


class Normal:
    """Σ w·[B, O]ᵀ[B, O] and Σ w·[B, O]ᵀy with B the c1 one-hot (diagonal block kept as a
    vector) and O the other columns: added block by block."""

    def __init__(self) -> None:
        self.D = np.zeros(L1)
        self.C = np.zeros((L1, NO))
        self.E = np.zeros((NO, NO))
        self.bB = np.zeros(L1)
        self.bO = np.zeros(NO)

    def add(self, Xb: np.ndarray, yb: np.ndarray, w: np.ndarray | None = None) -> None:
        O = _other(Xb)
        y = np.asarray(yb, dtype=np.float64)
        w = np.ones(y.size) if w is None else np.asarray(w, dtype=np.float64)
        c1 = Xb[:, D_NUM].astype(np.int64)
        Ow = O * w[:, None]
        self.E += Ow.T @ O
        self.bO += Ow.T @ y
        self.D += np.bincount(c1, w, minlength=L1)
        self.bB += np.bincount(c1, w * y, minlength=L1)
        for j in range(NO):
            self.C[:, j] += np.bincount(c1, Ow[:, j], minlength=L1)

    def solve(self) -> np.ndarray:
        """The minimum-norm WLS solution in nldist's theta layout (a c1 level with no rows
        keeps 0, as the reference level)."""
        D, C, bB = self.D[1:], self.C[1:], self.bB[1:]
        ok = D > 0
        Dinv = np.where(ok, 1.0 / np.where(ok, D, 1.0), 0.0)
        S = self.E - (C * Dinv[:, None]).T @ C
        rhs = self.bO - C.T @ (Dinv * bB)
        thO = np.linalg.lstsq(S, rhs, rcond=1e-12)[0]
        thB = Dinv * (bB - C @ thO)
        theta = np.empty(P)
        theta[:D_NUM] = thO[:D_NUM]
        theta[D_NUM:D_NUM + L1 - 1] = thB
        theta[D_NUM + L1 - 1:] = thO[D_NUM:]
        return theta


def wls(Xs: np.ndarray, ys: np.ndarray, w: np.ndarray) -> np.ndarray:
    ne = Normal()
    for a in range(0, Xs.shape[0], 250_000):
        ne.add(Xs[a:a + 250_000], ys[a:a + 250_000], w[a:a + 250_000])
    return ne.solve()


def check_wls(model, Xs, ys, w, theta) -> float:
    """max |Aᵀ W (A θ − y)| / max |Aᵀ W y| with A the sparse design (nldist's own
    ``sparse_design``): the normal equations hold (≈ 1e-10)."""
    A = model.sparse_design(np.asarray(Xs, np.float64), np.ones(Xs.shape[0]))
    r = A @ theta - ys
    g = A.T @ (w * r)
    return float(np.max(np.abs(g)) / np.max(np.abs(A.T @ (w * ys))))


# ----------------------------------------------------------------------------------------
# the full-data loss of many thetas in one streamed pass
# ----------------------------------------------------------------------------------------


def _split(theta: np.ndarray):
    """(numeric (6,), c1 coefficients by code (L1,), c2 by code (L2,), bias)."""
    t1 = np.concatenate([[0.0], theta[D_NUM:D_NUM + L1 - 1]])
    t2 = np.concatenate([[0.0], theta[D_NUM + L1 - 1:-1]])
    return theta[:D_NUM], t1, t2, theta[-1]


def losses(store: Path, star: np.ndarray, thetas: np.ndarray, block: int = 100_000
           ) -> tuple[float, np.ndarray]:
    """L* = Σ r*² and, for every row of ``thetas`` (T, P), L(θ) − L* = Σ (δ² − 2 r*·δ) with
    δ = z_θ − z* (one read of the store; z by gathers, never a one-hot block)."""
    from nldist.store.dataset import open_dataset
    X, y = open_dataset(store)
    sn, s1, s2, sb = _split(star)
    Th = np.atleast_2d(thetas) - star[None, :]
    Tn = Th[:, :D_NUM].T.copy()                                   # (6, T)
    T1 = np.vstack([np.zeros(len(Th)), Th[:, D_NUM:D_NUM + L1 - 1].T])  # (L1, T)
    T2 = np.vstack([np.zeros(len(Th)), Th[:, D_NUM + L1 - 1:-1].T])     # (L2, T)
    Tb = Th[:, -1]
    Lstar, dL = 0.0, np.zeros(len(Th))
    cr = int(X.chunks[0])
    for a in range(0, int(X.shape[0]), cr):
        Xc = np.asarray(X[a:a + cr])
        yc = np.asarray(y[a:a + cr], dtype=np.float64)
        for b in range(0, Xc.shape[0], block):
            xb = Xc[b:b + block]
            xn = xb[:, :D_NUM].astype(np.float64)
            c1 = xb[:, D_NUM].astype(np.int64)
            c2 = xb[:, D_NUM + 1].astype(np.int64)
            r = yc[b:b + block] - (xn @ sn + s1[c1] + s2[c2] + sb)
            Lstar += float(r @ r)
            dz = xn @ Tn
            dz += T1[c1]
            dz += T2[c2]
            dz += Tb
            dL += np.einsum("ij,ij->j", dz, dz) - 2.0 * (r @ dz)
    return Lstar, dL


# ----------------------------------------------------------------------------------------
# the run
# ----------------------------------------------------------------------------------------


def q3(v) -> dict:
    v = np.asarray(v, dtype=np.float64)
    return {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
            "q75": float(np.quantile(v, 0.75))}


def fmt(x: float) -> str:
    return f"{x:.3g}" if abs(x) >= 1e-3 else f"{x:.2e}"


def _q_only(xb, yb, **kw) -> tuple[np.ndarray, np.ndarray]:
    from nldist.scores import oneread
    got = oneread.chunk(xb, yb, **kw)
    return got["idx"], got["q"]


def version() -> dict:
    def git(*a: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True,
                              text=True).stdout.strip()
    return {"head": git("rev-parse", "HEAD"),
            "nldist_uncommitted": git("status", "--short", "--", "nldist").splitlines()}


def run(args) -> dict:
    import dask
    import dask.array as da

    import nldist
    from nldist import graph
    from nldist.models import get_model
    from nldist.models.coded import Codes
    from nldist.scores import oneread, oneread_plan
    from nldist.scores.spec import make_spec
    from nldist.store.counting import chunk_reads
    from nldist.store.dataset import open_dataset, write_dataset

    dask.config.set(scheduler="threads", num_workers=2)
    n, T = args.rows, {}
    res: dict = {"rows": n, "argv": sys.argv, "version": version(),
                 "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared)",
                 "load_before": os.getloadavg(), "timings_s": T}

    def tic(key: str, t0: float) -> None:
        T[key] = round(time.perf_counter() - t0, 3)
        print(f"  {key}: {T[key]:.1f} s (load {os.getloadavg()[0]:.1f})", flush=True)

    root = Path(args.store_dir or tempfile.mkdtemp(prefix="bench_synth_"))
    store = root / f"synth_{n}.zarr"
    t0 = time.perf_counter()
    Xall, yall = generate(n)
    tic("generate", t0)
    if not store.exists():
        t0 = time.perf_counter()
        write_dataset(store, Xall, yall, attrs())
        tic("write_store", t0)
    model = get_model("linear", D_NUM + 2, Codes.from_attrs(attrs()))
    p = int(model.n_params)
    assert p == P
    s = int(args.s_mult * p)
    c1 = Xall[:, D_NUM].astype(np.int64)
    cnt = np.bincount(c1, minlength=L1)
    res.update(p=p, s=s, s_mult=args.s_mult, draws=args.draws, pilot_rows=args.pilot,
               table={"levels_c1_present": int(np.sum(cnt > 0)),
                      "c1_rows_of_rarest_present_level": int(cnt[cnt > 0].min()),
                      "c1_levels_under_50_rows": int(np.sum(cnt < 50)),
                      "c1_share_of_top_level": float(cnt[0] / n),
                      "y_mean": float(yall.mean()), "y_std": float(yall.std()),
                      "x_kurtosis_excess": [float(((v - v.mean()) ** 4).mean() / v.var() ** 2
                                                  - 3) for v in
                                            Xall[:200_000, :D_NUM].astype(np.float64).T]})
    print(f"n={n:,} p={p:,} s={s:,}: {res['table']}", flush=True)

    def dask_xy(tok: str):
        X, y = open_dataset(store, count=tok)
        return graph.inputs.as_dask_xy(da.from_zarr(X), da.from_zarr(y), y_cols=None)

    X0, _ = open_dataset(store)
    n_chunks = -(-n // int(X0.chunks[0]))
    res["store"] = {"chunk_rows": int(X0.chunks[0]), "chunks": n_chunks,
                    "bytes_on_disk": sum(f.stat().st_size for f in store.rglob("*")
                                         if f.is_file())}
    reads = res["reads_of_X"] = {}

    # a plain read pass: the baseline
    dX, dy = dask_xy("plain")
    t0 = time.perf_counter()
    dask.compute(dX.sum(axis=0), dy.sum())
    tic("plain_read_pass", t0)
    reads["plain read pass"] = chunk_reads("plain") / n_chunks

    # theta*: the full-data OLS, streamed
    t0 = time.perf_counter()
    ne = Normal()
    cr = int(X0.chunks[0])
    y0 = open_dataset(store)[1]
    for a in range(0, n, cr):
        Xc = np.asarray(X0[a:a + cr])
        yc = np.asarray(y0[a:a + cr])
        for b in range(0, Xc.shape[0], 250_000):
            ne.add(Xc[b:b + 250_000], yc[b:b + 250_000])
    theta_star = ne.solve()
    tic("theta_star_fit (bench: streamed normal equations)", t0)

    # theta_0: OLS on the pilot rows select_sample uses (random_state 0)
    pick = np.sort(np.random.default_rng([0, 0x9170]).choice(n, size=min(args.pilot, n),
                                                              replace=False))
    theta0 = wls(Xall[pick], yall[pick].astype(np.float64), np.ones(pick.size))

    # ---- the one-read sampler: select_sample(kind="auto", random_state=0), stage by stage
    #      (the lines of nldist.api.select_sample, timed)
    dX, dy = dask_xy("oneread")
    t_all = time.perf_counter()
    t0 = time.perf_counter()
    spec = make_spec("nonlinear-leverage", model, theta0, dX.shape[1], True, loss=None,
                     y_cols=1)
    rows, th = spec.rows, spec.rows.theta
    Xp, yp = graph.draws.gather_rows(dX, dy, pick)
    tic("oneread.1_pilot_gather", t0)
    t0 = time.perf_counter()
    Dp = rows.matrix(Xp, yp, 0)
    fac = oneread.factor(Dp, n, m=pick.size)
    tic("oneread.2_pilot_factor (dense dual rows + SVD)", t0)
    t0 = time.perf_counter()
    fac, rates, _, heavy = oneread_plan.plan(Dp, th, fac, rows.group, "auto", s, None)
    tic("oneread.3_plan", t0)
    del Dp
    t0 = time.perf_counter()
    got = graph.passes.one_read_pass(dX, dy, rows=rows, theta=th, fac=fac, rates=rates,
                                     seed=0, heavy=heavy)
    tic("oneread.4_pass", t0)
    t0 = time.perf_counter()
    keep, w_auto0, info = oneread_plan.conclude(got, "auto", s, None, rates, 0, p, n)
    idx_auto0 = got["idx"][keep]
    tic("oneread.5_conclude", t0)
    T["oneread_total (= select_sample auto)"] = round(time.perf_counter() - t_all, 3)
    reads["one-read (select_sample auto: pilot gather + pass)"] = (
        chunk_reads("oneread") / n_chunks)
    chosen = info["kind"]
    res["auto"] = {k: info[k] for k in ("kind", "why", "predicted", "totals", "size",
                                          "drawn_rows", "certain") if k in info}
    print(f"  auto chose {chosen}: {info['why']}", flush=True)
    del got

    # ---- every row's candidate values (bench only: for the draws), the kernel's chunk
    t0 = time.perf_counter()
    dX, dy = dask_xy("q_all")
    from nldist.graph.inputs import row_blocks
    tasks = [dask.delayed(_q_only)(xb, yb, rows=rows, theta=th, fac=fac,
                                   rates=np.full(4, 1e300), seed=0, offset=off)
             for xb, yb, off in row_blocks(dX, dy)]
    Q = np.zeros((4, n))
    for ix, q in dask.compute(*tasks):
        Q[:, ix] = q
    tic("bench_all_rows_candidate_values", t0)
    allrows = np.arange(n, dtype=np.int64)

    # ---- the exact two-read scores
    if args.exact:
        import resource
        dX, dy = dask_xy("exact")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        sc = np.asarray(nldist.scores(dX, dy, model=model, theta=theta0,
                                      kind="nonlinear-leverage"), dtype=np.float64)
        tic("exact_nonlinear_leverage_scores (nldist.scores)", t0)
        res["peak_rss_gb_before_after_exact"] = [
            rss0 / 2**20, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20]
        reads["exact nonlinear-leverage (nldist.scores)"] = chunk_reads("exact") / n_chunks
        Qx = np.zeros((4, n))
        Qx[1] = sc
        rate_x = 1.5 * s / sc.sum()

    # ---- uniform reading only the rows it needs
    dX, dy = dask_xy("uniform")
    t0 = time.perf_counter()
    upick = np.sort(np.random.default_rng(1).choice(n, size=s, replace=False))
    graph.draws.gather_rows(dX, dy, upick)
    tic("uniform_gather_s_rows", t0)
    reads["uniform (gather of s rows)"] = chunk_reads("uniform") / n_chunks

    # ---- the draws and their fits
    samplers = ["uniform", "nonlinear-leverage", "influence", "influence-mix",
                *(["nl-lev exact", "nl-lev exact iid"] if args.exact else [])]
    if args.uniform_x:
        samplers.append(f"uniform {args.uniform_x:g}s")
    thetas: dict[str, list] = {k: [] for k in samplers}
    absent: dict[str, list] = {k: [] for k in samplers}
    check: dict = {}
    t_fit = []
    t0 = time.perf_counter()
    for k in range(args.draws):
        for name in samplers:
            if name in oneread.CANDIDATES:
                j = oneread.CANDIDATES.index(name)
                kp, w, _ = oneread.finalize(allrows, Q, name, s, float(rates[j]), k)
                ix = allrows[kp]
                if k == 0 and name == chosen:
                    check = {"same_rows": bool(np.array_equal(ix, idx_auto0)),
                             "max_rel_weight_diff": float(np.max(np.abs(w - w_auto0) / w_auto0))
                             if ix.size == idx_auto0.size else None}
            elif name == "nl-lev exact":
                kp, w, _ = oneread.finalize(allrows, Qx, "nonlinear-leverage", s, rate_x, k)
                ix = allrows[kp]
            elif name == "nl-lev exact iid":
                ix, w = nldist.sample(sc, s, random_state=k)
            else:
                ix = np.sort(np.random.default_rng([k, 77]).choice(
                    n, size=int(args.uniform_x * s), replace=False))
                w = np.full(ix.size, n / ix.size)
            t1 = time.perf_counter()
            th_s = wls(Xall[ix], yall[ix].astype(np.float64), np.asarray(w, np.float64))
            t_fit.append(time.perf_counter() - t1)
            if k == 0:
                check[f"normal_equations_{name}"] = check_wls(
                    model, Xall[ix], yall[ix].astype(np.float64), np.asarray(w), th_s)
            thetas[name].append(th_s)
            absent[name].append(int(L1 - np.unique(Xall[ix, D_NUM]).size))
        print(f"  draw {k}: {time.perf_counter() - t0:.0f} s", flush=True)
    tic("draws_and_fits", t0)
    res["fit_s_median"] = float(np.median(t_fit))
    res["kernel_check_draw0"] = check
    print(f"  check: {check}", flush=True)

    # ---- every theta's full-data loss in one streamed pass
    names = [(nm, k) for nm in samplers for k in range(args.draws)]
    Th = np.array([theta0] + [thetas[nm][k] for nm, k in names])
    t0 = time.perf_counter()
    Lstar, dL = losses(store, theta_star, Th)
    tic("loss_pass_all_thetas", t0)
    rel = dL / Lstar
    res["L_star"] = Lstar
    res["rel_error_theta0"] = float(rel[0])
    errs = {nm: [] for nm in samplers}
    for (nm, _), e in zip(names, rel[1:], strict=True):
        errs[nm].append(float(e))
    errs["auto"] = errs[chosen]
    absent["auto"] = absent[chosen]
    res["errors"] = errs
    res["summary"] = {nm: {**q3(v), "c1_levels_absent_median": float(np.median(absent[nm]))}
                      for nm, v in errs.items()}
    res["load_after"] = os.getloadavg()
    if not args.store_dir:
        shutil.rmtree(root, ignore_errors=True)
    return res


def report(res: dict) -> str:
    S, T, R = res["summary"], res["timings_s"], res["reads_of_X"]
    u = S["uniform"]["median"]
    one = T["oneread_total (= select_sample auto)"]
    ex = T.get("exact_nonlinear_leverage_scores (nldist.scores)")
    wall = {"uniform": (T["uniform_gather_s_rows"], R["uniform (gather of s rows)"])}
    if ex is not None:
        rx = R["exact nonlinear-leverage (nldist.scores)"]
        wall.update({"nl-lev exact": (ex, rx), "nl-lev exact iid": (ex, rx)})
    for k in ("nonlinear-leverage", "influence", "influence-mix", "auto"):
        wall[k] = (one, R["one-read (select_sample auto: pilot gather + pass)"])
    lines = [f"n = {res['rows']:,}, p = {res['p']:,}, s = {res['s']:,} ({res['s_mult']:g}p), "
             f"{res['draws']} draws; theta_0 rel. error {fmt(res['rel_error_theta0'])}; "
             f"auto chose {res['auto']['kind']}", "",
             "| sampler | rel. error median [IQR] | uniform ÷ it | c1 levels absent "
             "(median) | wall time (s) | reads of X |", "|---|---|---|---|---|---|"]
    for nm, v in S.items():
        t, r = wall.get(nm, (None, None))
        lines.append(f"| {nm} | {fmt(v['median'])} [{fmt(v['q25'])}–{fmt(v['q75'])}] | "
                     f"{u / v['median']:.2f} | {v['c1_levels_absent_median']:.0f} | "
                     f"{'' if t is None else f'{t:.1f}'} | "
                     f"{'' if r is None else f'{r:.2f}'} |")
    lines.append(f"| (plain read pass) | | | | {T['plain_read_pass']:.1f} | "
                 f"{R['plain read pass']:.2f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--s-mult", type=float, default=20.0)
    ap.add_argument("--pilot", type=int, default=10_000)
    ap.add_argument("--uniform-x", type=float, default=5.0,
                    help="also uniform at this multiple of s (0: none)")
    ap.add_argument("--exact", action=argparse.BooleanOptionalAction, default=True,
                    help="the exact two-read scores (nldist.scores) and their draws")
    ap.add_argument("--store-dir", help="keep (and reuse) the Zarr store here")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    res = run(args)
    text = report(res)
    print(text)
    res["table_md"] = text
    if args.out:
        args.out.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
