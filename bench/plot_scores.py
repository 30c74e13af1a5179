"""Plot the exact-scores benchmark figures recorded in bench/RESULTS.md.

Reads the JSON files written by ``bench_scores.py --json`` (and, optionally, by
``bench_load.py --json``) and draws one PNG with three panels:

1. time of each operation as a multiple of the plain read pass of the same Zarr, per
   dataset size, with the targets (ours <= 2.5x read; dask tsqr >= 3x ours);
2. weak scaling 1 -> 2 workers (time per worker-share of the rows; flat = 100 %);
3. peak resident memory per worker vs n (flat = bounded), with the load test's peak.

Usage::

    .venv/bin/python bench/plot_scores.py bench/scores_2m.json bench/scores_27m.json \
        --load bench/load_27m.json --out bench/scores.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

OPS = ("read", "ours-lin", "ours-nl", "ours-mem", "tsqr")
COLORS = {"read": "#888888", "ours-lin": "#1f77b4", "ours-nl": "#2ca02c",
          "ours-mem": "#17becf", "tsqr": "#d62728"}


def _rows(n: int) -> str:
    return f"{n / 1e6:.0f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def plot(runs: list[dict], load: dict | None, out: Path) -> None:
    """Draw the three panels from bench_scores (``runs``) and bench_load (``load``) JSON."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2), gridspec_kw={"width_ratios": [2, 1, 1.2]})
    # 1: ratios to the read pass
    ax = axes[0]
    ops = [op for op in OPS if any(op in run["times"] for run in runs)]
    width = 0.8 / len(ops)
    for j, run in enumerate(runs):
        t = {k: v["median"] for k, v in run["times"].items()}
        for i, op in enumerate(ops):
            if op not in t or "read" not in t:
                continue
            r = t[op] / t["read"]
            x = j + (i - (len(ops) - 1) / 2) * width
            ax.bar(x, r, width, color=COLORS[op], label=op if j == 0 else None)
            ax.text(x, r, f"{r:.1f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(2.5, ls="--", color="#1f77b4", lw=1, label="target: ours-lin <= 2.5x read")
    ax.axhline(1.5, ls=":", color="#17becf", lw=1, label="target: in memory <= 1.5x read")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([f"{_rows(r['n'])} x {r['d']}, {r.get('label', '')}\n"
                        f"{r['n_chunks']} chunks, {r['workers']} x {r['memory_limit']}"
                        for r in runs], fontsize=8)
    top = max(v["median"] / r["times"]["read"]["median"] for r in runs
              for v in r["times"].values())
    ax.set_ylim(0, top * 1.45)
    ax.set_ylabel("wall time / read pass (median)")
    ax.set_title("Exact leverage scores vs a read pass and dask tsqr")
    ax.legend(fontsize=8, loc="upper left", ncol=4)
    # 2: weak scaling
    ax = axes[1]
    for run in runs:
        ws = run.get("weak_scaling")
        if not ws:
            continue
        for op, color in (("read", COLORS["read"]), ("ours-lin", COLORS["ours-lin"])):
            ys = [ws["1"][op], ws["2"][op]]
            ax.plot([1, 2], ys, "o-", color=color,
                    label=f"{op} ({_rows(ws['1']['rows'])} rows/worker): efficiency "
                          f"{ys[0] / ys[1]:.0%}")
    ax.set_xticks([1, 2])
    ax.set_xlabel("workers (rows grow with workers)")
    ax.set_ylabel("wall time (s)")
    ax.set_ylim(bottom=0)
    ax.set_title("Weak scaling (target >= 80 %)")
    ax.legend(fontsize=8, loc="lower right")
    # 3: memory vs n
    ax = axes[2]
    ax.set_xscale("log")
    for run in runs:
        mem = run.get("memory_vs_n")
        if not mem:
            continue
        for op, pts in mem.items():
            xs = [p["rows"] for p in pts]
            ax.plot(xs, [max(p["peak_rss_mib"]) for p in pts], "o-", color=COLORS[op],
                    label=f"{op}, scores only")
        ax.plot(xs, [max(p["idle_rss_mib"]) for p in pts], ":", color="#888888",
                label="idle worker")
    tq = [(r["n"], max(r["times"]["tsqr"]["peak_rss_mib"]), r["times"]["tsqr"]["spilled_mib_max"])
          for r in runs if "tsqr" in r["times"] and r["memory_limit"] == "1GiB"]
    if tq:
        ax.plot([a for a, _, _ in tq], [b for _, b, _ in tq], "s", color=COLORS["tsqr"],
                label="dask tsqr, scores only (27M: spilled "
                      f"{max(c for _, _, c in tq) / 1024:.1f} GiB)")
    if load:
        peak = max(load["peak_rss_mib_per_worker"])
        ax.plot([load["n"]], [peak], "*", ms=14, color="#9467bd",
                label=f"whole job (fit, scores, sample, train, evaluate), {_rows(load['n'])}")
    ax.axhline(1024, ls="--", color="#d62728", lw=1)
    ax.text(0.02, 1024, "worker memory limit 1 GiB", va="bottom", fontsize=8,
            color="#d62728", transform=ax.get_yaxis_transform())
    ax.set_ylim(0, 1600)
    ax.set_xlabel("rows n (log)")
    ax.set_ylabel("peak RSS per worker (MiB)")
    ax.set_title("Worker memory vs n (flat = bounded)")
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench_scores.py --json outputs")
    ap.add_argument("--load", type=Path, default=None, help="bench_load.py --json output")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("scores.png"))
    args = ap.parse_args(argv)
    runs = []
    for p in args.runs:
        run = json.loads(p.read_text())
        run["label"] = "X in memory" if "ours-mem" in run["times"] else "Zarr (zstd)"
        if "lz4" in run["path"]:
            run["label"] = "Zarr (lz4)"
        runs.append(run)
    runs.sort(key=lambda r: (r["n"], r["label"]))
    load = json.loads(args.load.read_text()) if args.load else None
    plot(runs, load, args.out)


if __name__ == "__main__":
    main()
