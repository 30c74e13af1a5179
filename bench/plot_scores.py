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

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    # 1: ratios to the read pass
    ax = axes[0]
    width = 0.8 / len(OPS)
    for j, run in enumerate(runs):
        t = {k: v["median"] for k, v in run["times"].items()}
        for i, op in enumerate(OPS):
            if op not in t or "read" not in t:
                continue
            r = t[op] / t["read"]
            x = j + (i - (len(OPS) - 1) / 2) * width
            ax.bar(x, r, width, color=COLORS[op], label=op if j == 0 else None)
            ax.text(x, r, f"{r:.1f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(2.5, ls="--", color="#1f77b4", lw=1)
    ax.text(len(runs) - 0.5, 2.5, "target ours <= 2.5x read", ha="right", va="bottom",
            fontsize=8, color="#1f77b4")
    ax.set_xticks(range(len(runs)))
    ax.set_xticklabels([f"{_rows(r['n'])} x {r['d']}\n{r['n_chunks']} chunks, "
                        f"{r['workers']} x {r['memory_limit']}" for r in runs])
    ax.set_ylabel("wall time / read pass (median)")
    ax.set_title("Exact leverage scores vs a read pass and dask tsqr")
    ax.legend(fontsize=8, loc="upper left")
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
    if load:
        peak = max(load["peak_rss_mib_per_worker"])
        ax.plot([load["n"]], [peak], "*", ms=14, color="#9467bd",
                label=f"whole job (fit, scores, sample, train, evaluate), {_rows(load['n'])}")
    ax.axhline(1024, ls="--", color="#d62728", lw=1)
    ax.text(ax.get_xlim()[0], 1024, " worker memory limit 1 GiB", va="bottom", fontsize=8,
            color="#d62728")
    ax.set_xscale("log")
    ax.set_ylim(0, 1150)
    ax.set_xlabel("rows n (log)")
    ax.set_ylabel("peak RSS per worker (MiB)")
    ax.set_title("Worker memory vs n (flat = bounded)")
    ax.legend(fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path, help="bench_scores.py --json outputs")
    ap.add_argument("--load", type=Path, default=None, help="bench_load.py --json output")
    ap.add_argument("--out", type=Path, default=Path(__file__).with_name("scores.png"))
    args = ap.parse_args(argv)
    runs = sorted((json.loads(p.read_text()) for p in args.runs), key=lambda r: r["n"])
    load = json.loads(args.load.read_text()) if args.load else None
    plot(runs, load, args.out)


if __name__ == "__main__":
    main()
