"""Time to quality (issue 12): the sampling path (``nldist select``) vs full-data training.

Everything runs in one process on one ``LocalCluster`` (2 worker processes x 1 thread,
``--memory-limit`` each), X streamed from the Zarr store (``cache_x: never``), the compared
paths interleaved per seed so that load from other jobs on the machine hits them alike.

``glm`` (part A), per model:

1. theta* on all rows by distributed Gauss-Newton (``train.fit_ball`` over
   ``graph.oracles.gn_pass``, tol 1e-12), not a competitor: every oracle call is one pass over X
   and is timed; L* = its final loss. The full-data GN's quality after k passes is the best
   loss it has evaluated in its first k passes (optimistic for GN: a rejected trial's loss
   counts), its time k x (median seconds per GN pass, measured in this process, including
   GN passes at theta* re-run interleaved with the sampling runs).
2. the sampling path ``nldist.pipeline.select`` (kind nonlinear-leverage, theta: pilot,
   pilot_s, cache_x: never, evaluate: estimate) for each s, seed and ``pilot_from``
   (auto = whole chunks, the store has no ingest reservoir; and gather): wall time
   (``metrics["cost"]["wall_s"]``: pilot + scores + sample + train + estimate), passes over X,
   bytes read; its exact relative error (L(theta_S) - L*) / L* by one ``graph.oracles.losses_pass``
   for all runs afterwards (not timed).
3. full-data GN at equal quality: the first pass count whose relative error <= the
   sampling path's median; ratio = that time / the sampling path's median wall time.
4. uniform sampling (kind uniform, same path: no pass 1) over a grid of s; the s whose
   median wall time is closest to the leverage path's is its equal-cost competitor.

``nn`` (part B): ``relu2:<h>`` with the squared loss: the sampling path vs torch Adam over
mini-batches streamed from the store (chunk by chunk, shuffled within the chunk), lr tuned
on a subset, until its exact full-data loss <= the sampling path's median.

``sweep`` (part C): ``--radii`` radii for one GLM: one sample (pilot + scores + sample once),
``train_on_sample`` per radius, vs a full-data GN fit per radius (measured, passes counted).

Usage::

    .venv/bin/python bench/make_data.py --n 20000000 --d 20
    .venv/bin/python bench/bench_time_to_quality.py glm \
        --store bench/data/bio_20000000_20_209715.zarr --models glm:sigmoid \
        --s 5000,20000 --seeds 5 --json bench/ttq_glm_20m.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RUNS = HERE / "data" / "ttq_runs"


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def machine() -> dict:
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    import dask
    import numpy
    import zarr

    return {"nproc": os.cpu_count(), "ram_bytes": mem, "cpu": cpu,
            "python": platform.python_version(), "numpy": numpy.__version__,
            "dask": dask.__version__, "zarr": zarr.__version__,
            "loadavg_start": list(os.getloadavg())}


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def spread(v: list[float]) -> dict:
    a = np.asarray([x for x in v if x is not None], dtype=np.float64)
    if a.size == 0:
        return {"median": None, "q25": None, "q75": None, "n": 0}
    return {"median": float(np.median(a)), "q25": float(np.quantile(a, 0.25)),
            "q75": float(np.quantile(a, 0.75)), "min": float(a.min()), "max": float(a.max()),
            "n": int(a.size)}


def log(*a) -> None:
    print(time.strftime("%H:%M:%S"), *a, flush=True)


class GNRecorder:
    """A full-data GN oracle that times every pass and records its loss."""

    def __init__(self, X, y, m, loss="squared") -> None:
        self.X, self.y, self.m, self.loss = X, y, m, loss
        self.losses: list[float] = []
        self.seconds: list[float] = []

    def __call__(self, theta: np.ndarray) -> dict:
        from nldist import graph

        t0 = time.perf_counter()
        out = graph.oracles.gn_pass(self.X, self.y, self.m, theta, loss=self.loss)
        self.seconds.append(time.perf_counter() - t0)
        self.losses.append(float(out["loss"]))
        return out


def full_gn(X, y, m, radius, max_iter, loss="squared", theta0=None):
    from nldist.train import fit_ball

    rec = GNRecorder(X, y, m, loss)
    t0 = time.perf_counter()
    fit = fit_ball(rec, m.initial_theta() if theta0 is None else theta0, radius, tol=1e-12,
                   max_iter=max_iter)
    return fit, rec, time.perf_counter() - t0


class _Reached(Exception):
    """Raised by :func:`warm_gn`'s oracle once its loss reaches the target."""


def warm_gn(X, y, m, radius, theta0, stop_loss, max_passes, loss="squared"):
    """Full-data GN warm-started at the sampling path's own pilot theta_0, stopped at the
    first pass whose loss is <= ``stop_loss`` (or after ``max_passes``); every pass timed."""
    from nldist.train import fit_ball

    rec = GNRecorder(X, y, m, loss)

    def oracle(theta):
        out = rec(theta)
        if out["loss"] <= stop_loss:
            raise _Reached
        return out

    try:
        fit_ball(oracle, theta0, radius, tol=1e-12, max_iter=max_passes)
    except _Reached:
        pass
    return rec


def passes_to(rec_losses: list[float], lstar: float, target: float) -> int | None:
    """First k such that the best loss among GN's first k passes has rel. error <= target."""
    best = np.minimum.accumulate(np.asarray(rec_losses))
    rel = (best - lstar) / lstar
    hit = np.nonzero(rel <= target)[0]
    return int(hit[0] + 1) if hit.size else None


def job_dict(store, model, kind, s, seed, pilot_from, pilot_s, radius, out, loss="squared",
             max_iter=200):
    return {"name": "ttq", "dataset": {"source": str(store)}, "model": model, "kind": kind,
            "s": int(s), "seed": int(seed), "theta": "pilot", "pilot_s": int(pilot_s),
            "pilot_from": pilot_from, "cache_x": "never", "evaluate": "estimate",
            "radius": float(radius), "loss": loss, "max_iter": int(max_iter),
            "out": str(out)}


def run_select(store, model, kind, s, seed, pilot_from, pilot_s, radius, loss="squared"):
    from nldist.jobs import validate_job
    from nldist.pipeline import RunContext, select

    out = RUNS / f"{kind}_{s}_{seed}_{pilot_from}"
    shutil.rmtree(out, ignore_errors=True)
    job = validate_job(job_dict(store, model, kind, s, seed, pilot_from, pilot_s, radius, out,
                                loss))
    ctx = RunContext(job, out)
    t0 = time.perf_counter()
    met = select(ctx, force=True)
    total = time.perf_counter() - t0
    theta = np.load(out / "theta.npy")
    from nldist.pipeline import stages

    theta0 = stages.theta.pilot(ctx)
    shutil.rmtree(out, ignore_errors=True)
    c = met["cost"]
    return {"kind": kind, "s": int(s), "seed": int(seed), "pilot_from": pilot_from,
            "wall_s": c["wall_s"], "total_s": round(total, 4),
            "passes_over_x": c["passes_over_x"], "bytes_read": c["bytes_read"],
            "by": c["by"], "timings": met["timings"], "train": met["kinds"][kind]["fit"],
            "loss_estimate": met["loss_estimate"], "loss_ci95": met["loss_ci95"],
            "pilot": {k: v for k, v in (met.get("pilot") or {}).items() if k != "chunks"},
            "full_fit_estimate": met.get("full_fit")}, theta, theta0


# --------------------------------------------------------------------------------------
# part A: GLM
# --------------------------------------------------------------------------------------


def part_glm(args, X, y, d, client) -> dict:
    from nldist import get_model, graph

    res = {}
    for spec in args.models.split(","):
        m = get_model(spec, n_features=d)
        log(f"[{spec}] theta* by full-data GN (max_iter {args.max_iter})")
        fit, rec, fit_s = full_gn(X, y, m, args.radius, args.max_iter)
        lstar = float(graph.oracles.losses_pass(X, y, m, fit.theta[None])[0])
        log(f"[{spec}] theta*: {len(rec.losses)} passes, {fit_s:.1f} s, L*={lstar:.10g}, "
            f"converged {fit.converged}, |theta|={np.linalg.norm(fit.theta):.3f}")
        gn_extra: list[float] = []
        runs, thetas, theta0s = [], [], []
        ss = [int(v) for v in args.s.split(",")]
        su = [int(v) for v in args.s_uniform.split(",")] if args.s_uniform else []
        pfs = args.pilot_from.split(",")
        for seed in range(args.seeds):
            t0 = time.perf_counter()
            graph.oracles.gn_pass(X, y, m, fit.theta)  # a GN pass, interleaved: seconds per pass
            gn_extra.append(time.perf_counter() - t0)
            gs = {int(v) for v in args.gather_s.split(",")} if args.gather_s else set(ss)
            plan = [("nonlinear-leverage", s, pf) for s in ss for pf in pfs
                    if pf != "gather" or s in gs]
            plan += [("uniform", s, "auto") for s in su]
            for kind, s, pf in plan:
                r, th, th0 = run_select(args.store, spec, kind, s, seed, pf, args.pilot_s,
                                        args.radius)
                runs.append(r)
                thetas.append(th)
                theta0s.append(th0)
                log(f"[{spec}] seed {seed} {kind} s={s} pilot {pf}: wall {r['wall_s']:.2f} s, "
                    f"passes {r['passes_over_x']}")
        log(f"[{spec}] exact losses of {len(thetas)} theta_S and theta_0 (one pass)")
        L = graph.oracles.losses_pass(X, y, m, np.vstack(thetas + theta0s))
        k = len(thetas)
        for j, r in enumerate(runs):
            r["loss_full"] = float(L[j])
            r["rel_error"] = float((L[j] - lstar) / lstar)
            r["rel_error_theta0"] = float((L[k + j] - lstar) / lstar)
        # full-data GN warm-started at each seed's own pilot theta_0 (the pilot is cheap:
        # whole chunks), stopped once it reaches the best leverage path's median error
        lev_meds = {}
        for r in runs:
            if r["kind"] != "uniform":
                lev_meds.setdefault((r["s"], r["pilot_from"]), []).append(r["rel_error"])
        best_med = min(float(np.median(v)) for v in lev_meds.values()) if lev_meds else None
        warm = []
        for seed in range(min(args.warm_seeds, args.seeds)):
            j = next((j for j, r in enumerate(runs) if r["seed"] == seed
                      and r["kind"] != "uniform" and r["pilot_from"] == pfs[0]), None)
            if j is None or best_med is None:
                break
            wrec = warm_gn(X, y, m, args.radius, theta0s[j], lstar * (1 + best_med),
                           args.warm_max_passes)
            warm.append({"seed": seed, "pilot_s": runs[j]["timings"].get("pilot", 0.0),
                         "pilot_passes": runs[j]["by"].get("pilot"),
                         "losses": wrec.losses, "seconds": wrec.seconds})
            log(f"[{spec}] warm GN seed {seed}: {len(wrec.losses)} passes, "
                f"{sum(wrec.seconds):.1f} s, rel err "
                f"{(min(wrec.losses) - lstar) / lstar:.3e} (target {best_med:.3e})")
        sec_pass = float(np.median(rec.seconds + gn_extra
                                   + [x for w in warm for x in w["seconds"]]))
        best = np.minimum.accumulate(np.asarray(rec.losses))
        gn_curve = [{"passes": i + 1, "rel_error": float((b - lstar) / lstar),
                     "seconds": round((i + 1) * sec_pass, 3)} for i, b in enumerate(best)]
        groups = {}
        for r in runs:
            key = f"{r['kind']} s={r['s']} pilot={r['pilot_from']}"
            groups.setdefault(key, []).append(r)
        summary = {}
        for key, rs in groups.items():
            summary[key] = {
                "kind": rs[0]["kind"], "s": rs[0]["s"], "pilot_from": rs[0]["pilot_from"],
                "wall_s": spread([r["wall_s"] for r in rs]),
                "passes_over_x": spread([r["passes_over_x"] for r in rs]),
                "bytes_read": spread([r["bytes_read"] for r in rs]),
                "rel_error": spread([r["rel_error"] for r in rs]),
                "rel_error_theta0": spread([r["rel_error_theta0"] for r in rs]),
                "train_s": spread([r["timings"].get("train", 0.0) for r in rs]),
            }
        lev = {k2: v for k2, v in summary.items() if v["kind"] != "uniform"}
        uni = {k2: v for k2, v in summary.items() if v["kind"] == "uniform"}
        for _key, v in lev.items():
            med = v["rel_error"]["median"]
            kp = passes_to(rec.losses, lstar, med)
            v["full_gn_equal_quality"] = {
                "passes": kp, "seconds": None if kp is None else round(kp * sec_pass, 3),
                "ratio_vs_sampling_wall": None if kp is None else
                round(kp * sec_pass / v["wall_s"]["median"], 3)}
            if warm:
                ks = [passes_to(w["losses"], lstar, med) for w in warm]
                secs = [None if kk is None else w["pilot_s"] + kk * sec_pass
                        for kk, w in zip(ks, warm, strict=True)]
                ok = [x for x in secs if x is not None]
                v["warm_gn_equal_quality"] = {
                    "passes": ks, "seconds": secs,
                    "ratio_vs_sampling_wall": round(float(np.median(ok)) / v["wall_s"]["median"],
                                                    3) if len(ok) == len(secs) else None}
            if uni:
                near = min(uni.values(), key=lambda u: abs(np.log(u["wall_s"]["median"]
                                                                  / v["wall_s"]["median"])))
                v["uniform_equal_cost"] = {
                    "s": near["s"], "wall_s": near["wall_s"], "rel_error": near["rel_error"],
                    "error_ratio_uniform_over_leverage":
                        round(near["rel_error"]["median"] / med, 3) if med else None}
        res[spec] = {"lstar": lstar, "theta_star_norm": float(np.linalg.norm(fit.theta)),
                     "theta_star": {"passes": len(rec.losses), "iterations": fit.iterations,
                                    "converged": bool(fit.converged),
                                    "seconds": round(fit_s, 3)},
                     "seconds_per_gn_pass": {"median": sec_pass,
                                             "fit": spread(rec.seconds),
                                             "interleaved": spread(gn_extra)},
                     "gn_curve": gn_curve, "warm_gn": warm, "summary": summary, "runs": runs}
        for key, v in summary.items():
            log(f"[{spec}] {key}: wall {v['wall_s']['median']:.2f} s, rel err "
                f"{v['rel_error']['median']:.3e} [{v['rel_error']['q25']:.2e}, "
                f"{v['rel_error']['q75']:.2e}] -> {v.get('full_gn_equal_quality')} warm "
                f"{v.get('warm_gn_equal_quality')}")
    return res


# --------------------------------------------------------------------------------------
# part B: neural network, sampling path vs streamed Adam
# --------------------------------------------------------------------------------------


def adam_stream(store, m, theta0, lr, max_epochs, batch, seed, budget_s, eval_fn, target,
                rows=None, radius=np.inf):
    """Adam over mini-batches streamed chunk by chunk from the store; returns the curve.

    After each epoch (and not timed) the exact full-data loss is computed by ``eval_fn``.
    """
    import torch
    import zarr

    g = zarr.open_group(str(store), mode="r")
    Xz, yz = g["X"], g["y"]
    n = Xz.shape[0] if rows is None else rows
    cr = Xz.chunks[0]
    starts = list(range(0, n, cr))
    th = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([th], lr=lr)
    rng = np.random.default_rng(seed)
    curve, train_s = [], 0.0
    for ep in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        for c in rng.permutation(len(starts)):
            a = starts[c]
            b = min(a + cr, n)
            Xb = torch.from_numpy(np.asarray(Xz[a:b]))
            yb = torch.from_numpy(np.asarray(yz[a:b]))
            perm = torch.from_numpy(rng.permutation(b - a))
            for k in range(0, b - a, batch):
                sel = perm[k:k + batch]
                opt.zero_grad()
                lo = ((m.torch_forward(th, Xb[sel]) - yb[sel]) ** 2).mean()
                lo.backward()
                opt.step()
                with torch.no_grad():  # the same problem as the sampling path: ||theta|| <= R
                    nrm = float(th.norm())
                    if nrm > radius:
                        th.mul_(radius / nrm)
        train_s += time.perf_counter() - t0
        L = eval_fn(th.detach().numpy().copy())
        curve.append({"epoch": ep, "seconds": round(train_s, 3), "loss": float(L)})
        log(f"  adam lr={lr} epoch {ep}: {train_s:.1f} s, loss {L:.8g} (target {target})")
        if target is not None and L <= target:
            break
        if train_s > budget_s:
            break
    return curve, th.detach().numpy().copy()


def part_nn(args, X, y, d, client) -> dict:
    import torch

    from nldist import get_model, graph

    torch.set_num_threads(1)
    spec = args.nn_model
    m = get_model(spec, n_features=d)
    def L_full(th):
        return float(graph.oracles.losses_pass(X, y, m, np.atleast_2d(th))[0])
    runs, thetas = [], []
    for seed in range(args.nn_seeds):
        r, th, th0 = run_select(args.store, spec, "nonlinear-leverage", args.nn_s, seed,
                                "auto", args.pilot_s, args.radius)
        runs.append(r)
        thetas.append(th)
        log(f"[nn] seed {seed}: wall {r['wall_s']:.1f} s passes {r['passes_over_x']} "
            f"train {r['timings'].get('train', 0):.1f} s")
    uni, uthetas = [], []
    for su in [int(v) for v in args.nn_s_uniform.split(",") if v]:
        r, th, _ = run_select(args.store, spec, "uniform", su, 0, "auto", args.pilot_s,
                              args.radius)
        uni.append(r)
        uthetas.append(th)
        log(f"[nn] uniform s={su}: wall {r['wall_s']:.1f} s train "
            f"{r['timings'].get('train', 0):.1f} s")
    L = graph.oracles.losses_pass(X, y, m, np.vstack(thetas + uthetas))
    for r, v in zip(runs + uni, L, strict=True):
        r["loss_full"] = float(v)
    if not runs:  # uniform only (the leverage path and Adam measured in another run)
        return {"model": spec, "uniform": uni}
    samp_loss = spread([r["loss_full"] for r in runs])
    samp_wall = spread([r["wall_s"] for r in runs])
    log(f"[nn] sampling path: loss {samp_loss}, wall {samp_wall}")
    # lr grid on a subset (first chunks of the store: ~args.tune_rows rows), same start
    theta_init = m.initial_theta()
    g_rows = args.tune_rows
    Xs = np.asarray(X[:g_rows].compute())
    ys = np.asarray(y[:g_rows].compute())
    def L_sub(th):
        return float(((m.predict(th, Xs) - ys) ** 2).sum())
    tune = {}
    for lr in [float(v) for v in args.lrs.split(",")]:
        curve, th = adam_stream(args.store, m, theta_init, lr, args.tune_epochs, args.batch, 0,
                                1e9, L_sub, None, rows=g_rows,
                                radius=args.radius)
        tune[lr] = curve
    best_lr = min(tune, key=lambda k: tune[k][-1]["loss"])
    log(f"[nn] lr grid on {g_rows} rows: best {best_lr}")
    target = samp_loss["median"]
    curve, _ = adam_stream(args.store, m, theta_init, best_lr, args.max_epochs, args.batch, 0,
                           args.adam_budget_s, L_full, target, radius=args.radius)
    hit = next((c for c in curve if c["loss"] <= target), None)
    return {"model": spec, "s": args.nn_s, "uniform": uni, "sampling": {"wall_s": samp_wall,
            "loss_full": samp_loss,
            "passes_over_x": spread([r["passes_over_x"] for r in runs]),
            "train_s": spread([r["timings"].get("train", 0.0) for r in runs]), "runs": runs},
            "adam": {"lr_grid": {str(k): v for k, v in tune.items()}, "lr": best_lr,
                     "batch": args.batch, "curve": curve,
                     "reached_target": hit is not None,
                     "seconds_to_target": None if hit is None else hit["seconds"],
                     "ratio_vs_sampling_wall": None if hit is None else
                     round(hit["seconds"] / samp_wall["median"], 3),
                     "ratio_lower_bound": None if hit is not None else
                     round(curve[-1]["seconds"] / samp_wall["median"], 3)}}


# --------------------------------------------------------------------------------------
# part C: model-selection sweep over radii
# --------------------------------------------------------------------------------------


def part_sweep(args, X, y, d, client) -> dict:
    from nldist import get_model, graph
    from nldist.jobs import validate_job
    from nldist.pipeline import RunContext, stages
    from nldist.train import train_on_sample

    spec = args.sweep_model
    m = get_model(spec, n_features=d)
    radii = [float(r) for r in np.logspace(np.log10(args.rmin), np.log10(args.rmax),
                                           args.radii)]
    out = RUNS / "sweep"
    shutil.rmtree(out, ignore_errors=True)
    job = validate_job(job_dict(args.store, spec, "nonlinear-leverage", args.sweep_s, 0,
                                "auto", args.pilot_s, args.rmax, out))
    ctx = RunContext(job, out)
    ctx.adjoint_accuracy = "sampling"
    t0 = time.perf_counter()
    stages.data.ingest(ctx)
    theta0, _ = stages.theta.select_theta(ctx)
    _, _, got, _ = stages.scoring.scores_and_sample(ctx, job.kind, theta0,
                                            [(job.s, stages.fitting.rng(ctx))])
    t_sample = time.perf_counter() - t0
    idx, w, Xs, ys = got[0]
    fits, t_train = [], []
    for R in radii:
        t1 = time.perf_counter()
        f = train_on_sample(m, Xs, ys, w, R, theta0=theta0)
        t_train.append(time.perf_counter() - t1)
        fits.append(f.theta)
    samp_total = t_sample + sum(t_train)
    cost = ctx.cost(stages.data.x_bytes(ctx))
    shutil.rmtree(out, ignore_errors=True)
    log(f"[sweep] one sample: {t_sample:.1f} s + {sum(t_train):.2f} s training x{len(radii)}")
    full = []
    for R in radii:
        fit, rec, fs = full_gn(X, y, m, R, args.max_iter)
        full.append({"radius": R, "passes": len(rec.losses), "seconds": round(fs, 3),
                     "converged": bool(fit.converged), "losses": rec.losses,
                     "sec_per_pass": float(np.median(rec.seconds)), "theta": fit.theta})
        log(f"[sweep] full GN R={R:.3g}: {len(rec.losses)} passes, {fs:.1f} s")
    L = graph.oracles.losses_pass(X, y, m, np.vstack(fits + [f["theta"] for f in full]))
    k = len(radii)
    rows = []
    for j, R in enumerate(radii):
        lstar = float(L[k + j])
        rel = float((L[j] - lstar) / lstar)
        kp = passes_to(full[j]["losses"], lstar, rel)
        rows.append({"radius": R, "rel_error_sample": rel, "full_passes_converged":
                     full[j]["passes"], "full_seconds_converged": full[j]["seconds"],
                     "full_passes_equal_quality": kp,
                     "full_seconds_equal_quality": None if kp is None else
                     round(kp * full[j]["sec_per_pass"], 3),
                     "train_on_sample_s": round(t_train[j], 4)})
    full_conv = sum(f["seconds"] for f in full)
    full_eq = sum(r["full_seconds_equal_quality"] or 0 for r in rows)
    return {"model": spec, "s": args.sweep_s, "radii": radii, "rows": rows,
            "sample_s": round(t_sample, 3), "train_total_s": round(sum(t_train), 3),
            "sampling_total_s": round(samp_total, 3), "sampling_cost": cost,
            "full_total_s_converged": round(full_conv, 3),
            "full_total_s_equal_quality": round(full_eq, 3),
            "full_passes_converged": int(sum(f["passes"] for f in full)),
            "ratio_converged": round(full_conv / samp_total, 3),
            "ratio_equal_quality": round(full_eq / samp_total, 3)}


# --------------------------------------------------------------------------------------


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("part", choices=["glm", "nn", "sweep"])
    ap.add_argument("--store", type=Path, required=True)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--memory-limit", default="3GiB")
    ap.add_argument("--radius", type=float, default=10.0)
    ap.add_argument("--max-iter", type=int, default=100)
    ap.add_argument("--pilot-s", type=int, default=2000)
    # glm
    ap.add_argument("--models", default="glm:sigmoid")
    ap.add_argument("--s", default="5000,20000")
    ap.add_argument("--s-uniform", default="20000,200000,1000000")
    ap.add_argument("--pilot-from", default="auto,gather")
    ap.add_argument("--gather-s", default="",
                    help="the s that also run pilot_from gather (default: all)")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--warm-seeds", type=int, default=3,
                    help="seeds whose pilot theta_0 warm-starts a full-data GN competitor")
    ap.add_argument("--warm-max-passes", type=int, default=15)
    # nn
    ap.add_argument("--nn-model", default="relu2:16")
    ap.add_argument("--nn-s", type=int, default=20000)
    ap.add_argument("--nn-seeds", type=int, default=3)
    ap.add_argument("--nn-s-uniform", default="",
                    help="s of uniform sampling runs (seed 0) on the same path: equal cost")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--tune-rows", type=int, default=200000)
    ap.add_argument("--tune-epochs", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--adam-budget-s", type=float, default=900.0)
    # sweep
    ap.add_argument("--sweep-model", default="glm:sigmoid")
    ap.add_argument("--sweep-s", type=int, default=20000)
    ap.add_argument("--radii", type=int, default=10)
    ap.add_argument("--rmin", type=float, default=0.1)
    ap.add_argument("--rmax", type=float, default=10.0)
    args = ap.parse_args(argv)

    from nldist import graph
    from nldist.cluster import connect
    from nldist.jobs import ClusterConfig

    cfg = ClusterConfig(address="local", n_workers=2, threads_per_worker=1,
                        memory_limit=args.memory_limit)
    info = {"command": " ".join([".venv/bin/python", *sys.argv]), "machine": machine(),
            "store": str(args.store), "store_bytes": store_bytes(args.store),
            "cluster": {"n_workers": 2, "threads_per_worker": 1,
                        "memory_limit": args.memory_limit}, "cache_x": "never"}
    t0 = time.perf_counter()
    with connect(cfg) as client:
        X, y = graph.inputs.as_dask_xy(*graph.inputs.open_zarr_xy(args.store))
        n, d = (int(v) for v in X.shape)
        info.update(n=n, d=d, x_bytes=int(X.nbytes + y.nbytes), chunk_rows=int(X.chunks[0][0]))
        log(f"store {args.store}: n={n} d={d}, {info['store_bytes'] / 2**30:.2f} GiB on disk")
        fn = {"glm": part_glm, "nn": part_nn, "sweep": part_sweep}[args.part]
        info[args.part] = fn(args, X, y, d, client)
    info["elapsed_s"] = round(time.perf_counter() - t0, 1)
    info["machine"]["loadavg_end"] = list(os.getloadavg())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(info, indent=1, default=lambda o: o.tolist()
                                    if isinstance(o, np.ndarray) else str(o)))
    log(f"wrote {args.json} ({info['elapsed_s']} s)")


if __name__ == "__main__":
    main()
