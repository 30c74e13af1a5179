"""Add a curve from a second experiment run to an experiment's ``experiment.json``.

    python docs/merge_pilot.py MAIN OTHER [PILOT_S] [--kind KIND] [--as NAME]

Default use, the pilot scheme: ``OTHER`` is an experiment run of the same job with
``--set theta=pilot`` and ``experiment.kinds=[nonlinear-leverage]`` (nonlinear leverage at
the pilot θ₀, training started from θ₀); its curve is copied into ``MAIN/experiment.json``
as the kind ``pilot``. With ``--kind linear-leverage --as linear-leverage+y`` it adds the
linear leverage of ``[X, 1, y]`` from a run with ``--set linear_augment_y=true``. Both runs
must share the job name, s, repeats and θ* (relative errors are against the same θ*).
Then re-run ``nldist report MAIN``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("main")
    ap.add_argument("other")
    ap.add_argument("pilot_s", nargs="?", type=int, default=None)
    ap.add_argument("--kind", default="nonlinear-leverage", help="kind to take from OTHER")
    ap.add_argument("--as", dest="name", default="pilot", help="its name in MAIN")
    a = ap.parse_args(argv)
    main_p, other_p = Path(a.main) / "experiment.json", Path(a.other) / "experiment.json"
    e, p = json.loads(main_p.read_text()), json.loads(other_p.read_text())
    if e["s"] != p["s"] or e["repeats"] != p["repeats"] or e["name"] != p["name"]:
        sys.exit("error: the two experiments differ in job name, s or repeats; re-run them")
    if abs(e["loss_opt"] - p["loss_opt"]) > 1e-9 * abs(e["loss_opt"]):
        sys.exit("error: the two experiments have different theta*; re-run them")
    e["summary"][a.name] = p["summary"][a.kind]
    e["rel_error"][a.name] = p["rel_error"][a.kind]
    e.setdefault("ranks", {})[a.name] = p.get("ranks", {}).get(a.kind)
    e.setdefault("merged", {})[a.name] = {"from": str(Path(a.other)), "kind": a.kind,
                                          "theta_source": p["theta_source"],
                                          "pilot_s": a.pilot_s, "timings": p["timings"]}
    main_p.write_text(json.dumps(e, indent=2))
    print(f"added {a.name} to {main_p}")


if __name__ == "__main__":
    main()
