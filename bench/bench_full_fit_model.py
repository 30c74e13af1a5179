"""How well select's model of the full-data fit's cost predicts the measured fit (issue 28,
item 2): ``nldist select --compare-full`` on small packaged tables, one process, dask's
synchronous scheduler; per case the model's passes (the pilot fit's Gauss-Newton
iterations) and seconds (x one timed Gauss-Newton pass at theta_0) next to the measured fit
of theta*, and the old rule's figure (the one-read pass x the sample fit's iterations).

    .venv/bin/python bench/bench_full_fit_model.py --out bench/full_fit_model.json
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import dask

from nldist.jobs import validate_job
from nldist.pipeline import RunContext, select

CASES = [("california", "glm:swish"), ("california", "glm:sigmoid"), ("california", "linear"),
         ("diabetes", "glm:swish"), ("diabetes", "glm:sigmoid"), ("diabetes", "linear")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--s", type=int, default=300)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    rows = []
    with dask.config.set(scheduler="synchronous"), tempfile.TemporaryDirectory() as tmp:
        for source, model in CASES:
            job = validate_job({"name": "m", "dataset": {"source": source, "standardize": True,
                                                         "standardize_target": True},
                                "model": model, "s": args.s, "radius": 10.0,
                                "cluster": {"address": "synchronous"}})
            ctx = RunContext(job, os.path.join(tmp, f"{source}-{model.replace(':', '_')}"))
            m = select(ctx, compare_full=True)
            f = m["full_fit"]
            est, meas = f["estimated"], f["measured"]
            r = {"source": source, "model": model, "n": m["n_rows"],
                 "pilot_rows": m["pilot"]["rows"], "path_wall_s": m["cost"]["wall_s"],
                 "passes_model": est["passes_over_x"], "passes_measured": meas["iterations"],
                 "seconds_model": est["seconds"], "seconds_measured": meas["seconds"],
                 "seconds_per_pass_model": est["seconds_per_pass"],
                 "old_rule_seconds": round(ctx.pass1_s
                                           * m["kinds"][m["kind"]]["fit"]["iterations"], 3),
                 "sample_fit_iterations": m["kinds"][m["kind"]]["fit"]["iterations"]}
            rows.append(r)
            print(f"{source:10s} {model:11s} passes {r['passes_model']:3d} model / "
                  f"{r['passes_measured']:3d} measured; seconds {r['seconds_model']:.3f} model / "
                  f"{r['seconds_measured']:.3f} measured (old rule {r['old_rule_seconds']:.3f}, "
                  f"{r['sample_fit_iterations']} sample-fit iterations)", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"s": args.s, "cpus": os.cpu_count(),
                                        "load_avg": os.getloadavg(), "cases": rows},
                                       indent=1) + "\n")


if __name__ == "__main__":
    main()
