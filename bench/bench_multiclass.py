"""Multi-class experiments (issue 13): relative error of the full-data cross-entropy vs s, and
label-noise detection, on Fashion-MNIST (all 10 classes, 70,000 rows, 10x10 grayscale).

Part 1 — the paper's protocol with C outputs: theta* of ``softmax:10`` over the ball on all
rows; scores at theta* by every kind (nonlinear-leverage of r = sqrt(CE), block-leverage,
block-sketch:k, margin-leverage, linear-leverage), the loss-proportional baseline
pi_i ∝ CE_i(theta*) (GraNd/EL2N-style) and uniform; for each s and each of ``--repeats``
seeds: draw s rows, train on them (weights 1/(s pi); softmax CE is convex, so each fit
starts at theta* — the sample optimum's loss does not depend on the start — to save
iterations), and record the relative error
(L(theta_S) - L*) / L* of the full-data CE. Median and quartiles per (kind, s).

Part 2 — label noise: on the first ``--noise-n`` rows, ``--flip`` of the labels moved to
another class (seeded, uniformly); the model fit on the noisy rows; each score's
precision@k (k = number of flips) and AUROC for "this row was flipped", next to the per-row
loss CE_i and cleanlab's ``find_label_issues`` / self-confidence computed from 5-fold
cross-validated predicted probabilities of the same model (as cleanlab recommends).

Usage::

    .venv/bin/python bench/bench_multiclass.py [--repeats 30] [--s 1000 3000]
        [--radius 30] [--sketch-k 4] [--noise-n 10000] [--flip 0.1] [--jobs 2]

Writes bench/multiclass.json and bench/multiclass.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import nldist  # noqa: E402
from nldist.datasets import load  # noqa: E402
from nldist.models.losses import MARGIN, get_loss, softmax  # noqa: E402
from nldist.train import train_on_sample  # noqa: E402

CE = get_loss("cross_entropy")
_STATE: dict = {}


def fashion() -> tuple[np.ndarray, np.ndarray]:
    df, info = load("fashion_mnist_10x10")
    y = df[info.target].to_numpy(np.float64)
    X = df.drop(columns=[info.target]).to_numpy(np.float64)
    return X, y


def full_loss(m, theta, X, y) -> float:
    return float(CE.row_loss(m.predict(theta, X), y).sum())


def _init(X, y, radius, spec, start):
    _STATE.update(X=X, y=y, radius=radius, m=nldist.get_model(spec, X.shape[1]), start=start)


def _one(args):
    probs, s, seed = args
    X, y, m, radius = _STATE["X"], _STATE["y"], _STATE["m"], _STATE["radius"]
    idx, w = nldist.sample(probs, s, random_state=seed)
    # softmax cross-entropy is convex: the sample problem's optimal loss does not depend on
    # the start, so every fit starts at theta* (fewer Levenberg-Marquardt iterations)
    fit = train_on_sample(m, X[idx], y[idx], w, radius, theta0=_STATE["start"],
                          loss="cross_entropy")
    return full_loss(m, fit.theta, X, y), bool(fit.converged)


def protocol(X, y, spec, radius, sizes, repeats, k, jobs, only=None) -> dict:
    m = nldist.get_model(spec, X.shape[1])
    kinds = ["nonlinear-leverage", "block-leverage", f"block-sketch:{k}", "margin-leverage",
             "linear-leverage"]
    cache = HERE / "data" / f"multiclass_{spec.replace(':', '_')}_{radius:g}.npz"
    if cache.exists():  # theta* and the scores of an earlier run (same model and radius)
        z = np.load(cache, allow_pickle=True)
        info = z["info"].item()
        theta, times = z["theta"], info["times"]
        probs = {kk: z[f"p_{i}"] for i, kk in enumerate(kinds)}
        star_info = info["star"]
    else:
        t0 = time.perf_counter()
        star = train_on_sample(m, X, y, np.ones(len(y)), radius, loss="cross_entropy")
        theta = star.theta
        star_info = {"iterations": star.iterations, "converged": bool(star.converged),
                     "norm": float(np.linalg.norm(theta)),
                     "seconds": time.perf_counter() - t0}
        probs, times = {}, {}
        for kind in kinds:
            t0 = time.perf_counter()
            probs[kind] = nldist.scores(X, y, model=m, theta=theta, kind=kind,
                                        loss="cross_entropy")
            times[kind] = time.perf_counter() - t0
            print(f"scores {kind}: {times[kind]:.1f} s", flush=True)
        cache.parent.mkdir(exist_ok=True)
        np.savez(cache, theta=theta, info=np.array({"times": times, "star": star_info}),
                 **{f"p_{i}": probs[kk] for i, kk in enumerate(kinds)})
    L_star = full_loss(m, theta, X, y)
    print(f"theta*: L* = {L_star:.2f}, {star_info}", flush=True)
    ell = CE.row_loss(m.predict(theta, X), y)
    probs["loss-proportional"] = ell / ell.sum()
    probs["uniform"] = np.full(len(y), 1.0 / len(y))
    if only:  # a subset of the kinds (the scores of all are cached)
        probs = {kk: v for kk, v in probs.items() if kk in only}
    rows = []
    start = theta if spec.startswith("softmax") else None
    if jobs == 1:  # in this process (forked workers ran ~15x slower per fit here: BLAS)
        _init(X, y, radius, spec, start)
    ex = ProcessPoolExecutor(jobs, initializer=_init, initargs=(X, y, radius, spec, start)) \
        if jobs > 1 else None
    mapper = ex.map if ex is not None else map
    try:
        for kind, p in probs.items():
            for s in sizes:
                t0 = time.perf_counter()
                got = list(mapper(_one, [(p, s, 1000 * s + r) for r in range(repeats)]))
                rel = np.array([(L - L_star) / L_star for L, _ in got])
                q1, med, q3 = np.percentile(rel, [25, 50, 75])
                rows.append({"kind": kind, "s": s, "median": med, "q1": q1, "q3": q3,
                             "converged": int(sum(c for _, c in got)), "repeats": repeats,
                             "rel": rel.tolist()})
                print(f"{kind:>20} s={s:>5}: median {med:.4f} [{q1:.4f}, {q3:.4f}] "
                      f"({time.perf_counter() - t0:.0f} s)", flush=True)
    finally:
        if ex is not None:
            ex.shutdown()
    return {"L_star": L_star, "theta_star": star_info, "score_seconds": times, "rows": rows}


def _auroc(score, flipped) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(flipped, score))


def _prec_at_k(score, flipped) -> float:
    k = int(flipped.sum())
    top = np.argsort(-score, kind="stable")[:k]
    return float(flipped[top].mean())


def label_noise(X, y, spec, radius, n, flip, k, seed=0) -> dict:
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.model_selection import StratifiedKFold

    rng = np.random.default_rng(seed)
    X, y = X[:n], y[:n].copy()
    C = int(y.max()) + 1
    flipped = rng.random(n) < flip
    y[flipped] = (y[flipped] + rng.integers(1, C, flipped.sum())) % C
    m = nldist.get_model(spec, X.shape[1])
    fit = train_on_sample(m, X, y, np.ones(n), radius, loss="cross_entropy")
    scores = {}
    for kind in ["nonlinear-leverage", "block-leverage", f"block-sketch:{k}",
                 "margin-leverage", "linear-leverage"]:
        scores[kind] = nldist.scores(X, y, model=m, theta=fit.theta, kind=kind,
                                     loss="cross_entropy")
    Z = m.predict(fit.theta, X)
    scores["per-row loss CE_i"] = CE.row_loss(Z, y)
    scores["-margin (in-sample)"] = -MARGIN.row_loss(Z, y)
    # cleanlab from out-of-sample probabilities of the same model (5-fold)
    pred = np.zeros((n, C))
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=seed).split(X, y):
        f = train_on_sample(m, X[tr], y[tr], np.ones(len(tr)), radius, loss="cross_entropy")
        pred[te] = softmax(m.predict(f.theta, X[te]))
    labels = y.astype(int)
    quality = get_label_quality_scores(labels, pred, method="self_confidence")
    scores["cleanlab self-confidence (5-fold)"] = 1.0 - quality
    issues = find_label_issues(labels, pred, return_indices_ranked_by="self_confidence")
    table = []
    for name, sc in scores.items():
        table.append({"score": name, "precision_at_k": _prec_at_k(np.asarray(sc), flipped),
                      "auroc": _auroc(np.asarray(sc), flipped)})
    mask = np.zeros(n, bool)
    mask[issues] = True
    found = {"flagged": int(mask.sum()), "precision": float(flipped[mask].mean()) if mask.any()
             else 0.0, "recall": float(mask[flipped].mean())}
    # cleanlab's ranked issues as a score: rank order of the flagged rows, the rest last
    rank_score = np.zeros(n)
    rank_score[issues] = np.arange(len(issues), 0, -1)
    table.append({"score": "cleanlab find_label_issues (ranked)",
                  "precision_at_k": _prec_at_k(rank_score, flipped),
                  "auroc": _auroc(rank_score, flipped)})
    for r in table:
        print(f"{r['score']:>38}: precision@k {r['precision_at_k']:.3f}  AUROC "
              f"{r['auroc']:.3f}", flush=True)
    return {"n": n, "flip": flip, "flipped": int(flipped.sum()), "table": table,
            "find_label_issues": found}


def plot(res: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    kinds = list(dict.fromkeys(r["kind"] for r in res["rows"]))
    for kind in kinds:
        rr = [r for r in res["rows"] if r["kind"] == kind]
        s = [r["s"] for r in rr]
        med = [r["median"] for r in rr]
        lo = [r["median"] - r["q1"] for r in rr]
        hi = [r["q3"] - r["median"] for r in rr]
        ax.errorbar(s, med, yerr=[lo, hi], marker="o", capsize=3, label=kind)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size s")
    ax.set_ylabel("relative error of the full-data CE (median, IQR)")
    ax.set_title(f"Fashion-MNIST 10 classes, 10x10, {res.get('model', 'softmax:10')} "
                 "(70,000 rows)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="softmax:10")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--s", type=int, nargs="+", default=[1000, 3000])
    ap.add_argument("--radius", type=float, default=30.0)
    ap.add_argument("--sketch-k", type=int, default=4)
    ap.add_argument("--noise-n", type=int, default=10000)
    ap.add_argument("--flip", type=float, default=0.1)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--skip-protocol", action="store_true")
    ap.add_argument("--skip-noise", action="store_true")
    ap.add_argument("--kinds", default="",
                    help="comma-separated subset of the protocol's kinds (default: all)")
    ap.add_argument("--out", default=str(HERE / "multiclass.json"))
    a = ap.parse_args()
    X, y = fashion()
    res = {"command": "bench/bench_multiclass.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "machine": f"{platform.node()} {os.cpu_count()} cores", "model": a.model,
        "radius": a.radius, "n": len(y), "d": X.shape[1]}
    t0 = time.perf_counter()
    noise_file = Path(a.out).with_name(Path(a.out).stem + "_noise.json")
    if a.skip_noise:
        pass
    elif noise_file.exists():
        res["noise"] = json.loads(noise_file.read_text())
    else:
        res["noise"] = label_noise(X, y, a.model, a.radius, a.noise_n, a.flip, a.sketch_k)
        noise_file.write_text(json.dumps(res["noise"], indent=1))
    if not a.skip_protocol:
        res["protocol"] = protocol(X, y, a.model, a.radius, a.s, a.repeats, a.sketch_k, a.jobs,
                                   [kk for kk in a.kinds.split(",") if kk])
        plot({**res["protocol"], "model": a.model}, Path(a.out).with_suffix(".png"))
    res["seconds"] = time.perf_counter() - t0
    Path(a.out).write_text(json.dumps(res, indent=1, default=lambda o: o.item() if hasattr(
        o, "item") else str(o)))
    print(f"wrote {a.out} in {res['seconds']:.0f} s")


if __name__ == "__main__":
    main()
