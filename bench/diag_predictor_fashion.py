"""Why does the one-read predictor over-predict the sample's error on Fashion-MNIST softmax:10?

Diagnostic, no part of the benchmark (reads bench/sampling_fashion.json, writes only /tmp).

Reproduces bench_sampling_fashion's pilot, theta_0, theta* (the /tmp cache), both factors and the
per-row candidate values q (Bench.values: the same code path as the run; their totals are
checked against the JSON), then evaluates at theta* the first-order error

    E = 1/2 sum_i (1/pi_i - 1) g_i^T M g_i / L*,   pi_i = min(1, q_i/tau), sum_i pi_i = s

(pi water-filled, as the exact-size priority draw; the JSON's "predicted_capped" uses the same)
for several M:

* K*   : the kernel's own formula at theta* (gamma_i = r_i^2 tau_i, exact dual-row leverage at
         theta*, L*): the kernel with theta_0 -> theta* and the exact factor;
* c0   : true g_i = grad l_i(theta*), surrogate H_s = 2 sum a_i a_i^T (dual rows at theta*),
         no lambda, no projection;
* a    : true g_i, true CE Hessian H (pseudo-inverse on the contrast space), no lambda, no P_T;
* aP   : true H, tangent-projected, no lambda;
* b    : (P_T (H + lambda I) P_T)^+;
* c    : (P_T (H_s + lambda I) P_T)^+;
* d    : what a one-read pass could compute instead (no theta*): g_i at theta_0, the true CE
         Hessian at theta_0 from the 10,000-row pilot (times n/m), lambda_0 from the 2,000-row
         pilot fit's KKT, tangent projection at theta_0, divided by L(theta_0);
         d_fullH: the same with the full-data Hessian at theta_0; d_nolam: pilot H, no lambda;
         d_lam10k: pilot H, lambda = -theta_0' grad L_10k(theta_0) / |theta_0|^2 from the
         10,000-row pilot's gradient (times n/m) instead of the pilot fit's multiplier.

Then refits seed-0 draws (bench's own draws) and compares the actual excess loss with the
quadratic model 1/2 d^T (H + lambda I) d, the first-order term grad L^T d, and the linearised
step d_lin = -M_b eps (eps = the HT gradient noise at theta*), and reports convergence and
||theta_S||.

    cd /work/main && OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 nice -n 5 \\
        .venv/bin/python bench/diag_predictor_fashion.py [--fits 1]

Writes /tmp/diag_predictor_fashion.json and prints the tables.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).parent))
import bench_sampling as bs  # noqa: E402
import bench_sampling_fashion as bf  # noqa: E402

from nldist.models.losses import get_loss  # noqa: E402
from nldist.scores import oneread  # noqa: E402
from nldist.scores.linalg import kron_gram  # noqa: E402
from nldist.scores.rows import DualRows, contrast_basis  # noqa: E402

OUT = Path("/tmp/diag_predictor_fashion.json")
T0 = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {msg}", flush=True)


def sym_pinv_on(B: np.ndarray, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """M = B (B^T S B)^-1 B^T for an orthonormal basis B (p, k), and the eigenvalues of
    B^T S B."""
    K = B.T @ S @ B
    K = 0.5 * (K + K.T)
    ev, V = np.linalg.eigh(K)
    W = B @ V
    return (W / ev) @ W.T, ev


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--fits", type=int, default=1, help="seeds refitted per (dist, s)")
    ap.add_argument("--chunk", type=int, default=10_000)
    a = ap.parse_args()
    d = json.loads(bf.OUT.read_text())
    t = bf.fashion_table()
    bs.train_on_sample = bf._cached_train(t.n, True)
    b = bf.FashionBench(t, a.chunk)
    b.pilot_theta = bf.PILOT_S
    n, p, C = t.n, b.p, 10
    q1 = t.d + 1
    m = b.m
    lo = get_loss("cross_entropy")

    # ---- the bench's pilot, theta_0, theta*, factors, q (Bench.run's code path) ----------
    rng = np.random.default_rng(0)
    pilot = np.sort(rng.choice(n, size=min(bs.PILOT_FACTOR, n), replace=False))
    p1 = pilot[rng.choice(pilot.size, size=min(b.pilot_theta, pilot.size), replace=False)]
    theta0 = bs.train_on_sample(m, t.rows(p1), t.y[p1], np.full(p1.size, n / p1.size),
                                t.radius, tol=bs.TOL, max_iter=bs.MAX_ITER, loss=t.loss).theta
    b.theta0 = theta0
    b.rows = DualRows(m, theta0, use_y=True, loss=t.loss)
    fs = bs.train_on_sample(m, t.rows(slice(None)), t.y, np.ones(n), t.radius, theta0=theta0,
                            tol=bs.TOL, max_iter=bs.MAX_ITER, loss=t.loss)
    th = np.asarray(fs.theta, dtype=np.float64)
    b.theta_star = th
    b.L_star = L_star = b.full_loss(th)
    L0 = b.full_loss(theta0)
    log(f"L* {L_star:.10g} (json {d['star']['loss']:.10g}); |theta*| {np.linalg.norm(th):.6g};"
        f" L(theta0)/L* - 1 = {(L0 - L_star) / L_star:.6g} (json "
        f"{d['star']['rel_error_theta0']:.6g})")
    assert abs(L_star - d["star"]["loss"]) < 1e-8 * L_star
    Dp = b.rows.matrix(t.rows(pilot), t.y[pilot])
    fac1 = oneread.factor(Dp, n)
    fac1 = dataclasses.replace(fac1, z_hat=oneread.estimate_totals(Dp, theta0, fac1))
    facx = oneread.factor_from_r(b.exact_R(theta0), n)
    facx = dataclasses.replace(facx, z_hat=oneread.estimate_totals(Dp, theta0, facx))
    b.s_max = max(d["s"])
    b.facs = {"1read": fac1, "exact": facx}
    b.Q, b.TOT = {}, {}
    for k, fac in b.facs.items():
        b.Q[k], b.TOT[k] = b.values(fac, k)
        zr = np.max(np.abs(b.TOT[k]["Z"] - np.array([d["totals"][k][c] for c in
                                                     oneread.CANDIDATES])) / b.TOT[k]["Z"])
        assert zr < 1e-9, f"factor {k}: totals differ ({zr:.2g})"
    log("theta0, factors and q reproduced (totals equal the JSON's to 1e-9)")

    # ---- theta*: gradients, lambda, the true Hessian ------------------------------------
    Xd = m.kron_design(t.num)                       # (n, q1)
    Z = m.predict(th, t.num)
    P = np.exp(Z - Z.max(1, keepdims=True))
    P /= P.sum(1, keepdims=True)
    yi = t.y.astype(np.int64)
    G = P.copy()
    G[np.arange(n), yi] -= 1.0                        # dl_i/dz (n, C)
    ell = lo.row_loss(Z, yi)
    grad = (G.T @ Xd).ravel()                         # grad L(theta*)
    lam = -float(th @ grad) / float(th @ th)
    kkt = float(np.linalg.norm(grad + lam * th) / np.linalg.norm(grad))
    Wst = th.reshape(C, q1)
    shift = float(np.linalg.norm(Wst.sum(0)) / np.linalg.norm(Wst))
    log(f"lambda {lam:.6g}; |grad L| {np.linalg.norm(grad):.6g}; KKT residual "
        f"|grad+lam theta|/|grad| {kkt:.2e}; shift part of theta* {shift:.2e}")
    K = P[:, :, None] * np.eye(C)[None] - P[:, :, None] * P[:, None, :]
    H = kron_gram(K, Xd)
    H = 0.5 * (H + H.T)
    del K
    log("true CE Hessian formed")
    # contrast space (orthogonal to every all-classes shift 1_C (x) v) and its tangent part
    U = np.kron(contrast_basis(C), np.eye(q1))       # (p, (C-1) q1), orthonormal
    tU = U.T @ th
    tU /= np.linalg.norm(tU)
    N = scipy.linalg.null_space(tU[None, :])          # ((C-1)q1, (C-1)q1 - 1)
    B = U @ N                                          # tangent ∩ contrast
    M_a, ev_H = sym_pinv_on(U, H)
    M_aP, _ = sym_pinv_on(B, H)
    M_b, ev_Hl = sym_pinv_on(B, H + lam * np.eye(p))
    M_bnoP, _ = sym_pinv_on(U, H + lam * np.eye(p))
    # surrogate: 2 sum a_i a_i^T of nldist's dual rows at theta*, and the kernel's gamma there
    rows_s = DualRows(m, th, use_y=True, loss=t.loss)
    A_list, c_list = [], []
    AtA = np.zeros((p, p))
    for lo_, hi_ in bs.chunks(n, a.chunk):
        D = rows_s.matrix(t.rows(slice(lo_, hi_)), t.y[lo_:hi_])
        A_list.append(D[:, :-1].copy())
        c_list.append(D[:, -1].copy())
        AtA += D[:, :-1].T @ D[:, :-1]
    A = np.vstack(A_list)
    del A_list
    r = A @ th + np.concatenate(c_list)
    id_err = float(np.max(np.abs(r * r - ell) / np.maximum(ell, 1e-300)))
    Hs = 2.0 * AtA
    Hs = 0.5 * (Hs + Hs.T)
    M_c0, ev_Hs = sym_pinv_on(U, Hs)
    M_c, _ = sym_pinv_on(B, Hs + lam * np.eye(p))
    Pinv_AtA, _ = sym_pinv_on(U, AtA)
    log(f"surrogate formed; max |r_i^2 - l_i|/l_i = {id_err:.2e}; "
        f"a_i in the contrast space: {np.linalg.norm(A - A @ U @ U.T) / np.linalg.norm(A):.1e}")

    # what a one-read pass could compute: theta_0, the 10,000-row pilot, the pilot fit's
    # multiplier. g_i at theta_0; H0 the true CE Hessian at theta_0 (pilot: n/m times the
    # pilot's, or the full data's), lambda_0 from the 2,000-row pilot fit's KKT
    # (grad L_pilot(theta_0) = -lambda_0 theta_0), tangent projection at theta_0
    Z0 = m.predict(theta0, t.num)
    P0 = np.exp(Z0 - Z0.max(1, keepdims=True))
    P0 /= P0.sum(1, keepdims=True)
    G0 = P0.copy()
    G0[np.arange(n), yi] -= 1.0
    gp = (n / p1.size) * (G0[p1].T @ Xd[p1]).ravel()
    lam0 = -float(theta0 @ gp) / float(theta0 @ theta0)
    kkt0 = float(np.linalg.norm(gp + lam0 * theta0) / np.linalg.norm(gp))
    g10 = (n / pilot.size) * (G0[pilot].T @ Xd[pilot]).ravel()  # the 10,000-row pilot
    lam10 = -float(theta0 @ g10) / float(theta0 @ theta0)
    gfull0 = (G0.T @ Xd).ravel()
    lamfull0 = -float(theta0 @ gfull0) / float(theta0 @ theta0)
    K0 = P0[:, :, None] * np.eye(C)[None] - P0[:, :, None] * P0[:, None, :]
    H0_pilot = (n / pilot.size) * kron_gram(K0[pilot], Xd[pilot])
    H0_full = kron_gram(K0, Xd)
    del K0
    tU0 = U.T @ theta0
    tU0 /= np.linalg.norm(tU0)
    B0 = U @ scipy.linalg.null_space(tU0[None, :])
    M_d, _ = sym_pinv_on(B0, 0.5 * (H0_pilot + H0_pilot.T) + lam0 * np.eye(p))
    M_dfull, _ = sym_pinv_on(B0, 0.5 * (H0_full + H0_full.T) + lam0 * np.eye(p))
    M_dnolam, _ = sym_pinv_on(U, 0.5 * (H0_pilot + H0_pilot.T))
    M_d10, _ = sym_pinv_on(B0, 0.5 * (H0_pilot + H0_pilot.T) + lam10 * np.eye(p))
    log(f"theta_0: |theta0| {np.linalg.norm(theta0):.6g}, pilot-fit lambda_0 {lam0:.6g} "
        f"(KKT residual {kkt0:.1e}); -theta0'grad/|theta0|^2 on the 10,000-row pilot {lam10:.6g}, "
        f"on all rows {lamfull0:.6g}; L(theta0) {L0:.6g}")

    # per-row quadratic forms u_i = g_i^T M g_i (and the kernel's gamma at theta*)
    Ms = {"a": M_a, "aP": M_aP, "b": M_b, "b_noP": M_bnoP, "c0": M_c0, "c": M_c}
    Ms0 = {"d": M_d, "d_fullH": M_dfull, "d_nolam": M_dnolam, "d_lam10k": M_d10}
    u = {k: np.empty(n) for k in (*Ms, *Ms0)}
    gam_star = np.empty(n)
    cos_sec = np.empty(n)
    for lo_, hi_ in bs.chunks(n, a.chunk):
        g = (G[lo_:hi_, :, None] * Xd[lo_:hi_, None, :]).reshape(hi_ - lo_, p)
        for k, M in Ms.items():
            u[k][lo_:hi_] = np.einsum("ij,ij->i", g @ M, g)
        g0 = (G0[lo_:hi_, :, None] * Xd[lo_:hi_, None, :]).reshape(hi_ - lo_, p)
        for k, M in Ms0.items():
            u[k][lo_:hi_] = np.einsum("ij,ij->i", g0 @ M, g0)
        Ab = A[lo_:hi_]
        gam_star[lo_:hi_] = r[lo_:hi_] ** 2 * np.einsum("ij,ij->i", Ab @ Pinv_AtA, Ab)
        gs = 2.0 * r[lo_:hi_, None] * Ab                      # the kernel's gradient 2 r a
        cos_sec[lo_:hi_] = np.einsum("ij,ij->i", g, gs) / np.maximum(
            np.linalg.norm(g, axis=1) * np.linalg.norm(gs, axis=1), 1e-300)
    log("per-row forms done")

    # ---- spectra --------------------------------------------------------------------------
    evH = np.sort(ev_H)
    evS = np.sort(ev_Hs)
    spec = {
        "lambda": lam, "L_star": L_star, "norm_theta_star": float(np.linalg.norm(th)),
        "L_theta0": L0, "norm_theta0": float(np.linalg.norm(theta0)), "lambda0_pilot_fit": lam0,
        "lambda0_10k_pilot": lam10, "lambda0_all_rows": lamfull0,
        "kkt0_rel_residual": kkt0, "kkt_rel_residual": kkt, "shift_part_theta_star": shift,
        "H_contrast_eigs_quantiles": {str(qq): float(np.quantile(evH, qq))
                                      for qq in (0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1)},
        "H_eigs_below_lambda": int(np.sum(evH < lam)),
        "H_eigs_below_10lambda": int(np.sum(evH < 10 * lam)),
        "H_eigs_below_lambda_over_10": int(np.sum(evH < lam / 10)),
        "H_dim_contrast": int(evH.size),
        "H_eff_dim_tr_H_over_H_plus_lam": float(np.sum(evH / (evH + lam))),
        "Hs_contrast_eigs_quantiles": {str(qq): float(np.quantile(evS, qq))
                                       for qq in (0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 1)},
        "Hs_eigs_below_lambda": int(np.sum(evS < lam)),
        "tr_Hinv_Hs_over_dim": float(np.trace(M_a @ Hs) / evH.size),
        "tr_Hsinv_H_over_dim": float(np.trace(M_c0 @ H) / evH.size),
        "secant_vs_true_grad_cos_median": float(np.median(cos_sec)),
        "secant_vs_true_grad_cos_q10": float(np.quantile(cos_sec, 0.1)),
        "sum_u_over_2Lstar": {k: float(0.5 * u[k].sum() / L_star) for k in u},
        "sum_gamma_star_over_Lstar": float(gam_star.sum() / L_star),
    }
    log(json.dumps(spec, indent=1))

    # ---- the table ------------------------------------------------------------------------
    dists = ["uniform"] + [f"{c}@{k}" for k in ("exact", "1read") for c in oneread.CANDIDATES[1:]]
    table = {}
    for s in d["s"]:
        R = d["results"][str(s)]
        for name in dists:
            c, k = ("uniform", "1read") if name == "uniform" else name.split("@")
            j = oneread.CANDIDATES.index(c)
            pi = bs.waterfill(b.Q[k][j], s, iters=100)
            f = np.where(pi < 1, 1.0 / pi - 1.0, 0.0)
            row = {"measured": R[name]["median"], "q25": R[name]["q25"], "q75": R[name]["q75"],
                   "kernel": R[name]["predicted"], "kernel_capped": R[name]["predicted_capped"],
                   "kernel_capped_rerun": b.capped_prediction(k, j, s),
                   "K*": float(np.sum(f * gam_star) / L_star)}
            for key in ("c0", "a", "aP", "b_noP", "b", "c"):
                row[key] = float(0.5 * np.sum(f * u[key]) / L_star)
            for key in ("d", "d_fullH", "d_nolam", "d_lam10k"):  # one-read quantities: L(theta_0)
                row[key] = float(0.5 * np.sum(f * u[key]) / L0)
            row["ess"] = float(n * n / np.sum(1.0 / pi))
            table[f"{s}|{name}"] = row
    hdr = ("s      dist                         meas    kernel  K*      c0      a       aP      "
           "b_noP   b       c       d       d_fullH d_nolam d_lam10k| ker/m  a/m   b/m   c/m   "
           "d/m  d10/m")
    print(hdr)
    for key, row in table.items():
        s, name = key.split("|")
        me = row["measured"]
        print(f"{s:6s} {name:28s} " + " ".join(f"{row[x]:7.4f}" for x in (
            "measured", "kernel", "K*", "c0", "a", "aP", "b_noP", "b", "c", "d", "d_fullH",
            "d_nolam", "d_lam10k"))
              + f" | {row['kernel'] / me:5.2f} {row['a'] / me:5.2f} {row['b'] / me:5.2f} "
              f"{row['c'] / me:5.2f} {row['d'] / me:5.2f} {row['d_lam10k'] / me:5.2f}")

    # ---- refits: convergence, the sphere, the quadratic model, the linearised step -------
    fits = []
    us = {seed: bs.hash_uniform(np.arange(n), seed + oneread.DRAW_SALT)
          for seed in range(a.fits)}
    Hl = H + lam * np.eye(p)
    for s in d["s"]:
        for name in ("uniform", "influence-mix@exact", "nonlinear-leverage@exact",
                     "influence@exact"):
            c, k = ("uniform", "1read") if name == "uniform" else name.split("@")
            for seed in range(a.fits):
                sel, w = b.draw(k, c, s, us[seed], seed)
                t1 = time.perf_counter()
                fr = bf._train(m, t.rows(sel), t.y[sel], w, t.radius, theta0=theta0,
                               tol=bs.TOL, max_iter=bs.MAX_ITER, loss=t.loss)
                ft = time.perf_counter() - t1
                thS = np.asarray(fr.theta, dtype=np.float64)
                rel = (b.full_loss(thS) - L_star) / L_star
                dl = thS - th
                # HT gradient noise at theta* and the linearised step
                wfull = np.zeros(n)
                wfull[sel] = w
                eps = ((G * (wfull - 1.0)[:, None]).T @ Xd).ravel()
                d_lin = -M_b @ eps
                fits.append({
                    "s": s, "dist": name, "seed": seed, "converged": bool(fr.converged),
                    "iterations": int(fr.iterations), "fit_s": ft,
                    "norm_theta_S": float(np.linalg.norm(thS)),
                    "rel_error": rel, "json_per_draw": d["results"][str(s)][name]["per_draw"][seed],
                    "gradT_d_over_L": float(grad @ dl / L_star),
                    "half_dHd_over_L": float(0.5 * dl @ H @ dl / L_star),
                    "half_d(H+lam)d_over_L": float(0.5 * dl @ Hl @ dl / L_star),
                    "half_dlin(H+lam)dlin_over_L": float(0.5 * d_lin @ Hl @ d_lin / L_star),
                    "norm_d": float(np.linalg.norm(dl)), "norm_d_lin": float(np.linalg.norm(d_lin)),
                    "cos_d_dlin": float(dl @ d_lin / (np.linalg.norm(dl) * np.linalg.norm(d_lin))),
                    "shift_part_theta_S": float(np.linalg.norm(thS.reshape(C, q1).sum(0))
                                                / np.linalg.norm(thS)),
                })
                f_ = fits[-1]
                log(f"fit s={s} {name} seed {seed}: conv {f_['converged']} it "
                    f"{f_['iterations']} |thS| {f_['norm_theta_S']:.6f} rel {rel:.5f} (json "
                    f"{f_['json_per_draw']:.5f}); g'd {f_['gradT_d_over_L']:.4f} "
                    f"1/2dHd {f_['half_dHd_over_L']:.4f} 1/2d(H+l)d "
                    f"{f_['half_d(H+lam)d_over_L']:.4f} lin {f_['half_dlin(H+lam)dlin_over_L']:.4f}"
                    f" |d| {f_['norm_d']:.3f} |dlin| {f_['norm_d_lin']:.3f} cos "
                    f"{f_['cos_d_dlin']:.3f}")
    OUT.write_text(json.dumps({"spec": spec, "table": table, "fits": fits,
                               "wall_s": time.perf_counter() - T0}, indent=1) + "\n")
    log(f"wrote {OUT}")


if __name__ == "__main__":
    main()
