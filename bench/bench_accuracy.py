"""The sampling-grade adjoint against the exact one: final quality and scoring time.

For a job whose model has no closed-form adjoint (default: jobs/california-torch-mlp.yaml,
a tanh MLP with biases, p = 433), runs ``nldist select --compare-full`` with
``adjoint.accuracy`` exact and sampling for several seeds (one output directory per
accuracy, so θ* is fitted once per accuracy and reused), and reports the relative error of
θ_S (median, IQR) and the seconds of the score stage (pass 1 + fused pass 2) per accuracy.

Usage::

    .venv/bin/python bench/bench_accuracy.py [--job jobs/california-torch-mlp.yaml] [--seeds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import numpy as np

from nldist.cluster import connect
from nldist.jobs import load_job
from nldist.pipeline import RunContext, select

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--job", default=str(HERE.parent / "jobs" / "california-torch-mlp.yaml"))
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--out", default=str(HERE / "accuracy.json"))
    a = ap.parse_args()
    res: dict[str, dict] = {}
    base = load_job(a.job)
    with tempfile.TemporaryDirectory() as tmp, connect(base.cluster, name="acc"):
        for seed in range(a.seeds):
            for acc in ("exact", "sampling"):
                job = load_job(a.job, [f"seed={seed}", f"adjoint.accuracy={acc}"])
                m = select(RunContext(job, Path(tmp) / acc), compare_full=True)
                r = res.setdefault(acc, {"rel_error": [], "score_s": []})
                r["rel_error"].append(m["kinds"][m["kind"]]["rel_error"])
                r["score_s"].append(m["timings"].get(f"score:{m['kind']}", 0.0))  # 0: reused
                print(f"seed {seed} {acc:8s} rel err {r['rel_error'][-1]:.4f}  "
                      f"score {r['score_s'][-1]:.1f} s", flush=True)
    for acc, r in res.items():
        v = np.asarray(r["rel_error"])
        r["summary"] = {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),
                        "q75": float(np.quantile(v, 0.75)),
                        "score_s_median": float(np.median(r["score_s"]))}
        print(acc, r["summary"])
    out = {"command": f"python bench/bench_accuracy.py --job {a.job} --seeds {a.seeds}",
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
           "results": res}
    Path(a.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
