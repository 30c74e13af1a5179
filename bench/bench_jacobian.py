"""Influence from the nonlinear adjoint against influence from the Jacobian (issue 26 item
2: "the nonlinear adjoint stands in for the Jacobian as in the paper; say whether the
Jacobian version differs and by how much").

The optimal-subsampling distribution is ``p_i ∝ √(g_iᵀH⁻¹g_i) = |r_i|·√τ_i`` with τ_i the
leverage of the rows of the Jacobian J(θ) of the residuals (Wang, Zhu & Ma 2018). nldist's
``influence`` takes τ_i from the rows of the nonlinear adjoint F*(θ) = ∫₀¹ J(tθ) dt (the
dual rows it already builds, MATH.md §2/§6). For linear models the two coincide; for GLMs
they differ by a per-row factor (the divided difference (φ(z)−φ(0))/z against φ'(z)).

For each REAL table of :mod:`bench_sampling` (same loaders, same θ₀: a 1,000-row uniform pilot
fit, same fits and relative error of the full-data loss), at θ₀ with the EXACT factors (R of
the full adjoint rows, and R of the full Jacobian rows ``[J, r − Jθ₀]``):

* ``tv``: total-variation distance between the two influence distributions, and between the
  two ``influence-mix`` distributions (½ influence + ½ leverage of the same rows);
* the median [IQR] relative error over ``--draws`` seeded draws at s = 20p of
  ``influence``/``influence-mix`` from each (the kernel's Poisson draw and finalize,
  :meth:`bench_sampling.Bench.draw`).

Usage::

    .venv/bin/python bench/bench_jacobian.py military bio california diamonds --draws 20
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from nldist.models.losses import get_loss
from nldist.scores import oneread
from nldist.scores.rows import DualRows
from nldist.scores.sampling import hash_uniform
from nldist.train import train_on_sample

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_sampling", HERE / "bench_sampling.py")
bs = importlib.util.module_from_spec(_spec)
sys.modules["bench_sampling"] = bs
_spec.loader.exec_module(bs)  # type: ignore[union-attr]


@dataclasses.dataclass(frozen=True)
class JacobianRows:
    """Rows ``[J_r(θ), r − J_r(θ)θ]``: the Jacobian of the residuals and the column that
    makes ``row · [θ, 1] = r`` (so the kernel's residual and influence read them as they
    read the dual rows)."""

    model: object
    theta: np.ndarray
    loss: str
    group = 1

    def matrix(self, X: np.ndarray, y: np.ndarray, offset: int = 0) -> np.ndarray:
        m = self.model
        f = m.predict(self.theta, X)
        J = m.jacobian(self.theta, X)
        if self.loss == "squared":
            r = f - y
        else:
            lo = get_loss(self.loss)
            r = lo.residual(f, y)
            J = J * lo.dresidual(f, y)[:, None]
        return np.column_stack([J, r - J @ self.theta])


def exact_r(b, rows) -> np.ndarray:
    Rs = []
    for a, e in bs.chunks(b.t.n, b.chunk):
        Rs.append(np.linalg.qr(rows.matrix(b.t.rows(slice(a, e)), b.t.y[a:e]), mode="r"))
        if len(Rs) > 8:
            Rs = [np.linalg.qr(np.vstack(Rs), mode="r")]
    return np.linalg.qr(np.vstack(Rs), mode="r")


def tv(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum())


def one_table(name: str, draws: int, s_mult: int, chunk: int) -> dict:
    t = bs.load_table(name)
    b = bs.Bench(t, chunk)
    n, p = t.n, b.p
    rng = np.random.default_rng(0)
    pilot = np.sort(rng.choice(n, size=min(bs.PILOT_FACTOR, n), replace=False))
    p1 = pilot[rng.choice(pilot.size, size=min(bs.PILOT_THETA, pilot.size), replace=False)]
    t0 = time.perf_counter()
    fit0 = train_on_sample(b.m, t.rows(p1), t.y[p1], np.full(p1.size, n / p1.size), t.radius,
                           tol=bs.TOL, max_iter=bs.MAX_ITER, loss=t.loss)
    b.theta0 = fit0.theta
    fs = train_on_sample(b.m, t.rows(slice(None)), t.y, np.ones(n), t.radius,
                         theta0=b.theta0, tol=bs.TOL, max_iter=bs.MAX_ITER, loss=t.loss)
    b.theta_star, b.L_star = fs.theta, None
    b.L_star = b.full_loss(b.theta_star)
    rows = {"adjoint": DualRows(b.m, b.theta0, use_y=True, loss=t.loss),
            "jacobian": JacobianRows(b.m, b.theta0, t.loss)}
    b.facs, b.Q, b.TOT = {}, {}, {}
    for k, r in rows.items():
        Dp = r.matrix(t.rows(pilot), t.y[pilot])
        fac = oneread.factor_from_r(exact_r(b, r), n)
        b.facs[k] = dataclasses.replace(fac, z_hat=oneread.estimate_totals(Dp, b.theta0, fac))
        b.Q[k], b.TOT[k] = b.values(b.facs[k], k, rows=r, theta=b.theta0)
    setup_s = time.perf_counter() - t0
    j_inf, j_mix = oneread.CANDIDATES.index("influence"), oneread.CANDIDATES.index(
        "influence-mix")
    out = {"n": n, "p": p, "spec": t.spec, "loss": t.loss, "note": t.note,
           "tv_influence": tv(b.Q["adjoint"][j_inf], b.Q["jacobian"][j_inf]),
           "tv_mix": tv(b.Q["adjoint"][j_mix], b.Q["jacobian"][j_mix]),
           "tv_leverage": tv(b.Q["adjoint"][1], b.Q["jacobian"][1]),
           "setup_s": round(setup_s, 1)}
    s = int(min(n, s_mult * p))
    errs: dict = {}
    for seed in range(draws):
        u = hash_uniform(np.arange(n), seed + oneread.DRAW_SALT)
        for k in rows:
            for c in ("influence", "influence-mix"):
                sel, w = b.draw(k, c, s, u, seed)
                th = b.fit(t.rows(sel), t.y[sel], w, b.theta0)
                errs.setdefault(f"{c}@{k}", []).append(b.rel_error(th))
    out["s"] = s
    out["results"] = {k: {**bs.q3(v), "per_draw": v} for k, v in errs.items()}
    line = "  ".join(f"{k} {v['median']:.4g} [{v['q25']:.3g}, {v['q75']:.3g}]"
                     for k, v in out["results"].items())
    print(f"[{name}] n={n} p={p} s={s}: TV(influence) {out['tv_influence']:.3f}, TV(mix) "
          f"{out['tv_mix']:.3f}; {line}", flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+")
    ap.add_argument("--draws", type=int, default=20)
    ap.add_argument("--s-mult", type=int, default=20)
    ap.add_argument("--chunk", type=int, default=100_000)
    ap.add_argument("--out", type=Path, default=HERE / "jacobian_influence.json")
    a = ap.parse_args()
    res = {"command": "python bench/bench_jacobian.py " + " ".join(sys.argv[1:]),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                       "note": "2 cores shared with other work"},
           "tables": {name: one_table(name, a.draws, a.s_mult, a.chunk) for name in a.tables}}
    a.out.write_text(json.dumps(res, indent=1, default=float) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
