"""How much the practical path's quality depends on where its pilot's rows come from.

For each pilot source (``reservoir``: the ingest-time uniform sample, no read of X;
``chunks``: uniform within a seeded set of 4 whole chunks; ``gather``: uniform over all
rows) and each seed, ``nldist select --compare-full`` on a real packaged dataset; reports
the relative error of the pilot θ₀ and of the final θ_S (median and IQR over seeds), and
the fraction of X the pilot read. California Housing is stored in its published row order
(block groups, roughly geographic), so whole chunks are *not* a uniform sample of rows —
the case where the chunk pilot can hurt.

Usage::

    .venv/bin/python bench/bench_pilot.py [--dataset california] [--model glm:swish]
        [--seeds 10] [--chunk-rows 1000] [--s 500] [--pilot-s 1000]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path

import dask
import numpy as np

from nldist.jobs import validate_job
from nldist.pipeline import RunContext, select

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="california")
    ap.add_argument("--model", default="glm:swish")
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--chunk-rows", type=int, default=1000)
    ap.add_argument("--s", type=int, default=500)
    ap.add_argument("--pilot-s", type=int, default=1000)
    ap.add_argument("--out", default=str(HERE / "pilot_quality.json"))
    a = ap.parse_args()
    rows: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, dask.config.set(scheduler="synchronous"):
        for src in ("reservoir", "chunks", "gather"):
            rel, rel0, frac = [], [], []
            for seed in range(a.seeds):
                job = validate_job({
                    "name": f"pilot-{src}-{seed}",
                    "dataset": {"source": a.dataset, "standardize": True,
                                "standardize_target": True, "chunk_rows": a.chunk_rows},
                    "model": a.model, "s": a.s, "pilot_s": a.pilot_s, "pilot_from": src,
                    "seed": seed, "cluster": {"address": "synchronous"}})
                m = select(RunContext(job, Path(tmp) / f"{src}-{seed}"), compare_full=True)
                r = m["kinds"][m["kind"]]
                rel.append(r["rel_error"])
                rel0.append(r["rel_error_theta0"])
                frac.append(m["pilot"]["fraction_read"])
            q = lambda v: {"median": float(np.median(v)), "q25": float(np.quantile(v, 0.25)),  # noqa: E731
                           "q75": float(np.quantile(v, 0.75))}
            rows[src] = {"rel_error": q(rel), "rel_error_theta0": q(rel0),
                         "pilot_fraction_read": float(np.mean(frac)), "per_seed": rel}
            print(f"{src:9s}  theta_S rel err median {rows[src]['rel_error']['median']:.4f} "
                  f"[{rows[src]['rel_error']['q25']:.4f}, {rows[src]['rel_error']['q75']:.4f}]"
                  f"  theta_0 {rows[src]['rel_error_theta0']['median']:.4f}  "
                  f"pilot read {rows[src]['pilot_fraction_read']:.3f} of X")
    res = {"command": "python bench/bench_pilot.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in vars(a).items() if k != "out"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "args": vars(a), "results": rows}
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
