"""Fashion-MNIST, 10 classes, in the real-table sampling benchmark (issue 26, item 6).

Runs :class:`bench_sampling.Bench` (imported, not copied: the draws, the kernel check, the
predictions and ``oneread.choose`` are that module's) on the packaged ``fashion_mnist_10x10``
table — 70,000 real images (train + test) resized to 10×10, pixels in [0, 1] as
``jobs/fashion_mnist_softmax.yaml`` uses them (not standardized), labels 0..9 — with
``softmax:10`` and cross-entropy (p = 10 × 101 = 1,010), radius 30 (the job's).

What differs from ``bench_sampling.py``:

* the table (:func:`fashion_table`): a :class:`bench_sampling.Table` with the 100 pixels as
  its numeric block and no categoricals;
* the parent's ``values`` passes the dual rows' ``group`` to ``oneread._row_values``. For
  ``loss: cross_entropy`` :class:`nldist.scores.rows.DualRows` has
  ``group == 1``: its rows are the residual adjoint ``[r*(θ), r(0)]`` with one signed residual
  ``r_i = ±√ℓ_i`` per example (checked: ``Σ r_i² = Σ ℓ_i``), not C rows per example (C rows
  are the multi-output *squared* loss's). The parent's pilot factor and ``estimate_totals``
  calls assume one row per example, so :meth:`FashionBench.run` refuses ``group > 1``;
* :meth:`FashionBench.exact_R`: the QR of the (n·group, p + 1) dual matrix, 10,000 examples a
  chunk, the chunks' R factors merged by QR (the parent uses the normal equations for
  p > 300; here the QR costs about 2 s a chunk, so it is affordable and better conditioned);
* θ* (the full-data fit: ``train_on_sample`` over all 70,000 rows with unit weights, the
  cross-entropy Newton method, radius 30, from θ₀) is cached in ``/tmp`` keyed by θ₀, the
  radius and the tolerance (``--no-cache`` recomputes); the full-data loss is summed chunk by
  chunk with ``row_losses_block`` (the parent's ``full_loss``);
* θ₀ is fitted on 2,000 pilot rows (the job's ``pilot_s``; the parent's default is 1,000 <
  p), the pilot factor on 10,000 (the parent's);
* uniform at equal wall time: when the budget buys no more rows than the largest s, it is the
  uniform result at that s (the same seeded draws), not refitted.

Usage::

    nice -n 10 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \\
        .venv/bin/python bench/bench_sampling_fashion.py [--draws 10] [--s-mult 2 4 10]
    .venv/bin/python bench/bench_sampling_fashion.py --table   # markdown from the JSON

Writes bench/sampling_fashion.json (a partial copy after each s:
/tmp/bench_sampling_fashion.partial.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import bench_sampling as bs  # noqa: E402

import nldist.datasets  # noqa: E402
from nldist.precond.gradient import ball_multiplier  # noqa: E402
from nldist.scores import oneread  # noqa: E402
from nldist.scores.rows import DualRows  # noqa: E402

HERE = Path(__file__).resolve().parent
OUT = HERE / "sampling_fashion.json"
PARTIAL = Path("/tmp") / "bench_sampling_fashion.partial.json"
PILOT_S = 2000  # jobs/fashion_mnist_softmax.yaml pilot_s
RADIUS = 30.0   # jobs/fashion_mnist_softmax.yaml radius


def fashion_table() -> bs.Table:
    df, info = nldist.datasets.load("fashion_mnist_10x10")
    y = df[info.target].to_numpy(np.float64)
    feats = df.drop(columns=[info.target])
    return bs.Table(
        "fashion", "softmax:10", "cross_entropy", RADIUS, False,
        np.ascontiguousarray(feats.to_numpy(np.float64)), [], [], y,
        "fashion_mnist_10x10 (70,000 real images, train + test, resized to 10x10; pixels in "
        "[0, 1], not standardized, as jobs/fashion_mnist_softmax.yaml), labels 0..9; "
        "softmax:10 + cross-entropy, p = 1,010, radius 30", list(feats.columns))


_train = bs.train_on_sample


@dataclasses.dataclass
class _Fit:
    theta: np.ndarray


def _cached_train(n: int, use_cache: bool):
    """``train_on_sample`` with the full-data fit (all n rows, unit weights) cached in /tmp."""

    def train(model, X, y, w, radius, theta0=None, **kw):
        full = X.shape[0] == n and theta0 is not None and np.all(w == 1.0)
        if not (full and use_cache):
            return _train(model, X, y, w, radius, theta0=theta0, **kw)
        key = hashlib.sha256(np.asarray(theta0, np.float64).tobytes()
                             + repr((radius, kw.get("tol"), kw.get("max_iter"))).encode()
                             ).hexdigest()[:16]
        f = Path("/tmp") / f"nldist_fashion_theta_star_{key}.npz"
        if f.exists():
            z = np.load(f)
            print(f"[fashion] theta* reused from {f}", flush=True)
            return _Fit(z["theta"])
        t0 = time.perf_counter()
        fit = _train(model, X, y, w, radius, theta0=theta0, **kw)
        np.savez(f, theta=fit.theta, loss=fit.loss, iterations=fit.iterations,
                 converged=fit.converged, seconds=time.perf_counter() - t0)
        print(f"[fashion] theta*: {fit.iterations} iterations, converged {fit.converged}, "
              f"{time.perf_counter() - t0:.1f} s; cached in {f}", flush=True)
        return fit

    return train


class FashionBench(bs.Bench):
    def exact_R(self, theta: np.ndarray) -> np.ndarray:
        """R of the full (n·group, p + 1) dual matrix at theta: QR per chunk, merged by QR."""
        rows = DualRows(self.m, theta, use_y=True, loss=self.t.loss)
        Rs: list[np.ndarray] = []
        for a, b in bs.chunks(self.t.n, self.chunk):
            D = rows.matrix(self.t.rows(slice(a, b)), self.t.y[a:b])
            Rs.append(np.linalg.qr(D, mode="r"))
            if len(Rs) > 4:
                Rs = [np.linalg.qr(np.vstack(Rs), mode="r")]
        return np.linalg.qr(np.vstack(Rs), mode="r")

    def run(self, draws: int, s_mults: list[int], cli: bool) -> dict:
        g = DualRows(self.m, np.zeros(self.p), use_y=True, loss=self.t.loss).group
        if g != 1:
            raise SystemExit(f"dual rows with group {g}: bench_sampling.Bench.run's pilot "
                             "factor and estimate_totals assume one row per example")
        return super().run(draws, s_mults, cli)

    def equal_time(self, cli, mid, fit_times, s_list, draws, us) -> dict:
        s_top = max(s_list)
        per_row = fit_times[s_top] / s_top
        T = self.kernel_time_s
        s_u = int(min(self.t.n, max(s_top, T / per_row)))
        if s_u > s_top or not self.partial_path.exists():
            return super().equal_time(cli, mid, fit_times, s_list, draws, us)
        u = json.loads(self.partial_path.read_text())["results"][str(s_top)]["uniform"]
        return {"s_one_read": mid, "kernel_one_read_s": T,
                "budget_from": "in-memory kernel pass + its fit (no CLI run)", "budget_s": T,
                "uniform_fit_s_per_row": per_row, "s_uniform": s_u,
                "how": ("s_uniform = budget / (uniform's median fit time per row at the "
                        "largest s), at least that s: the budget buys no more rows, so this "
                        "is the uniform result at the largest s (the same seeded draws)"),
                "draws": draws, "uniform": {k: u[k] for k in ("median", "q25", "q75",
                                                              "fit_s_median", "per_draw")}}


def repredict(b: FashionBench, path: Path = OUT) -> None:
    """Recompute the predictions, ESS and ``oneread.choose``'s pick of a finished run with the
    pass's heavy rows in the sums (as ``select`` and the current ``bench_sampling`` cap them):
    the same pilot, θ₀ and factors as :meth:`bench_sampling.Bench.run` (seed 0), no new draws
    (the draws do not depend on the heavy rows; auto's errors are the chosen candidate's)."""
    d = json.loads(path.read_text())
    t, n, p = b.t, b.t.n, b.p
    rng = np.random.default_rng(0)
    pilot = np.sort(rng.choice(n, size=min(bs.PILOT_FACTOR, n), replace=False))
    p1 = pilot[rng.choice(pilot.size, size=min(b.pilot_theta, pilot.size), replace=False)]
    b.theta0 = bs.train_on_sample(b.m, t.rows(p1), t.y[p1], np.full(p1.size, n / p1.size),
                                  t.radius, tol=bs.TOL, max_iter=bs.MAX_ITER,
                                  loss=t.loss).theta
    b.rows = DualRows(b.m, b.theta0, use_y=True, loss=t.loss)
    b.L_star = float(d["star"]["loss"])
    rel0 = (b.full_loss(b.theta0) - b.L_star) / b.L_star
    assert abs(rel0 - d["star"]["rel_error_theta0"]) <= 1e-9 * abs(rel0), "theta_0 differs"
    Dp = b.rows.matrix(t.rows(pilot), t.y[pilot])
    fac1 = oneread.factor(Dp, n)
    fac1 = dataclasses.replace(fac1, z_hat=oneread.estimate_totals(Dp, b.theta0, fac1))
    facx = oneread.factor_from_r(b.exact_R(b.theta0), n)
    facx = dataclasses.replace(facx, z_hat=oneread.estimate_totals(Dp, b.theta0, facx))
    b.s_max = max(d["s"])
    # the ball's multiplier at theta_0 from the factor's pilot rows (n/m each), as select
    # estimates it (pipeline.oneread.sample): the predictions see it (RowFactor.with_ball)
    lam = ball_multiplier(b.m, b.theta0, t.rows(pilot), t.y[pilot], t.radius,
                          weight=n / pilot.size, loss=t.loss)
    d["ball_multiplier_theta0"] = lam
    print(f"ball multiplier at theta_0 (pilot of {pilot.size}): {lam:.4g}")
    TOT, TOT0 = {}, {}
    for k, fac in {"1read": fac1, "exact": facx}.items():
        TOT0[k] = b.values(fac, k)[1]
        TOT[k] = b.values(fac.with_ball(lam), k)[1]
        zr = np.max(np.abs(TOT[k]["Z"] - np.array([d["totals"][k][c] for c in
                                                    oneread.CANDIDATES])) / TOT[k]["Z"])
        assert zr < 1e-9, f"factor {k}: totals differ ({zr:.2g})"
    for s in d["s"]:
        r = d["results"][str(s)]
        pred = {k: oneread.predict(TOT[k], s, p) for k in TOT}
        pred0 = {k: oneread.predict(TOT0[k], s, p) for k in TOT0}
        chosen, why = oneread.choose(pred["1read"])
        prev = d["auto"][str(s)]
        d["auto"][str(s)] = {"kind": chosen, "why": why, "in_the_run_without_heavy_rows":
                             prev.get("in_the_run_without_heavy_rows", prev)}
        for name in bs.DISTS[:-1]:
            c, k = ("uniform", "1read") if name == "uniform" else name.split("@")
            pr = pred[k][c]
            med = r[name]["median"]
            r[name].setdefault("predicted_without_heavy_rows", r[name]["predicted"])
            r[name].update(predicted_without_ball=pred0[k][c]["predicted"],
                           predicted=pr["predicted"], trusted=pr["trusted"], d_n=pr["d_n"],
                           ess=pr["ess"], ess_ok=pr["ess_ok"],
                           ratio_pred_over_median=pr["predicted"] / med if med > 0 else None)
        src = "uniform" if chosen == "uniform" else f"{chosen}@1read"
        r["auto@1read"] = {**r[src], "chosen": chosen}
        print(f"s={s}: auto -> {chosen} ({why})")
    d["repredicted"] = ("predictions, ESS and auto's choice recomputed with the heavy rows "
                        "(bench_sampling_fashion.py --repredict); the run's own values under "
                        "*_without_heavy_rows")
    path.write_text(json.dumps(d, indent=1, default=float) + "\n")
    print(f"rewrote {path}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _g(x: float) -> str:
    return f"{x:.2g}" if abs(x) < 0.01 else f"{x:.3f}" if abs(x) < 10 else f"{x:.1f}"


def table(path: Path = OUT) -> str:
    """Markdown: one row per distribution, one column per s: median [IQR] (predicted)."""
    d = json.loads(path.read_text())
    p, ss = d["p"], d["s"]
    out = ["| distribution | " + " | ".join(f"s = {s:,} ({s / p:.0f}p)" for s in ss) + " |",
           "|---|" + "---|" * len(ss)]
    for dist in bs.DISTS:
        cells = []
        for s in ss:
            r = d["results"][str(s)][dist]
            cells.append(f"{_g(r['median'])} [{_g(r['q25'])}–{_g(r['q75'])}] "
                         f"(pred. {_g(r['predicted'])}{'' if r['trusted'] else ', untrusted'})")
        label = "auto (one read)" if dist == "auto@1read" else dist
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append("| `oneread.choose` | " + " | ".join(d["auto"][str(s)]["kind"] for s in ss)
               + " |")
    med = {s: (d["results"][str(s)]["uniform"]["median"],
               d["results"][str(s)]["auto@1read"]["median"]) for s in ss}
    out.append("| uniform ÷ auto (medians) | " + " | ".join(
        f"{med[s][0] / med[s][1]:.2g}" for s in ss) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--s-mult", type=int, nargs="+", default=[2, 4, 10])
    ap.add_argument("--chunk", type=int, default=10_000)
    ap.add_argument("--no-cache", action="store_true", help="refit theta* (no /tmp cache)")
    ap.add_argument("--table", action="store_true", help="print the markdown table")
    ap.add_argument("--repredict", action="store_true",
                    help="recompute predictions/ESS/auto of the JSON with the heavy rows")
    a = ap.parse_args()
    if a.table:
        print(table())
        return
    start_load = os.getloadavg()
    t0 = time.perf_counter()
    t = fashion_table()
    bs.train_on_sample = _cached_train(t.n, not a.no_cache)
    b = FashionBench(t, a.chunk)
    b.check_factors = ["1read", "exact"]
    b.at_star = False
    b.pilot_theta = PILOT_S
    b.partial_path = PARTIAL
    b.timings["load"] = round(time.perf_counter() - t0, 3)
    if a.repredict:
        repredict(b)
        return
    res = b.run(a.draws, a.s_mult, False)
    head = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "HEAD"],
                          capture_output=True, text=True).stdout.strip()
    res = {"command": "python bench/bench_sampling_fashion.py " + " ".join(sys.argv[1:]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "loadavg_start": start_load, "loadavg_end": os.getloadavg(),
                       "note": "2 cores shared with other sessions' jobs; OMP/OpenBLAS 1 "
                               "thread, nice 10: timings noisy"},
           "table": "fashion", "head": head, "kernel": bs.kernel_version(),
           "bench_sampling_py_sha256": _sha(Path(bs.__file__)),
           "exact_R": "QR of the (n, p+1) dual matrix, 10,000 rows a chunk, merged by QR",
           "pilot_theta0_rows": PILOT_S, "pilot_factor_rows": bs.PILOT_FACTOR,
           **res, "wall_s": round(time.perf_counter() - t0, 1)}
    OUT.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
