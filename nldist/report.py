"""Reports of finished runs: report.md with tables and matplotlib plots (PNG).

Plots: relative error vs s per score kind (median over repeats with an interquartile band,
log scale, the paper's Fig. 1 protocol) and the score distributions (histograms computed
by Dask, never by loading the (n,) scores on the driver).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from nldist.errors import NldistError


def experiment_table(result: dict) -> str:
    """Markdown table: median relative error per s (rows) and score kind (columns)."""
    kinds = list(result["summary"])
    lines = ["| s | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for s in result["s"]:
        cells = [f"{result['summary'][k][str(s)]['median']:.3e}" for k in kinds]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_experiment(result: dict, path: Path) -> Path:
    """Median relative error vs s (log-log), interquartile bands, one line per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=110)
    s = np.asarray(result["s"], dtype=float)
    for kind, summ in result["summary"].items():
        med = np.array([summ[str(v)]["median"] for v in result["s"]])
        lo = np.array([summ[str(v)]["q25"] for v in result["s"]])
        hi = np.array([summ[str(v)]["q75"] for v in result["s"]])
        floor = 1e-12
        ax.plot(s, np.maximum(med, floor), marker="o", label=kind)
        ax.fill_between(s, np.maximum(lo, floor), np.maximum(hi, floor), alpha=0.15)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("sample size s")
    ax.set_ylabel("relative error (L(θ_S) − L(θ*)) / L(θ*)")
    ax.set_title(f"{result['name']}: {result['model']}, n={result['n_rows']:,}, "
                 f"median of {result['repeats']} draws")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_scores(scores_store: Path, path: Path, bins: int = 60) -> Path | None:
    """Histogram of n * score per kind (log x), computed with dask.array.histogram."""
    import dask.array as da
    import matplotlib
    import zarr

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not scores_store.exists():
        return None
    group = zarr.open_group(str(scores_store), mode="r")
    names = sorted(k for k in group.array_keys())
    if not names:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=110)
    edges = np.logspace(-4, 3, bins + 1)
    for name in names:
        arr = da.from_zarr(group[name])
        n = arr.shape[0]
        counts, _ = da.histogram(arr * n, bins=edges)
        ax.stairs(counts.compute(), edges, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("n · score (1 = uniform)")
    ax.set_ylabel("rows")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(out_dir: str | Path) -> Path:
    """Write OUT/report.md (and PNG plots) from metrics.json / experiment.json."""
    out = Path(out_dir)
    metrics_p, exp_p = out / "metrics.json", out / "experiment.json"
    if not metrics_p.exists() and not exp_p.exists():
        raise NldistError(f"{out} has no metrics.json or experiment.json; run `nldist run` first")
    lines = ["# nldist report", ""]
    if metrics_p.exists():
        m = json.loads(metrics_p.read_text())
        lines += [
            f"Job **{m['name']}** on `{m['dataset']}`: n = {m['n_rows']:,}, "
            f"d = {m['n_features']}, model `{m['model']}` (p = {m['n_params']}), "
            f"s = {m['s']}, seed = {m['seed']}, ball radius {m['radius']}, "
            f"scores at theta = {m['theta_source']}.",
            "",
            f"Full-data optimum L(θ*) = {m['loss_opt']:.6g} (sum of squared residuals).",
            "",
            "| kind | rank | L(θ_S) | relative error | unique rows | max weight |",
            "|---|---|---|---|---|---|",
        ]
        for kind, r in m["kinds"].items():
            lines.append(f"| {kind} | {r.get('rank')} | {r['loss_full']:.6g} | "
                         f"{r['rel_error']:.3e} | {r['unique_rows']} | {r['max_weight']:.3g} |")
        lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in m["timings"].items()),
                  ""]
    hist = plot_scores(out / "scores.zarr", out / "scores.png")
    if hist:
        lines += ["## Score distributions", "", "![scores](scores.png)", ""]
    if exp_p.exists():
        e = json.loads(exp_p.read_text())
        plot_experiment(e, out / "experiment.png")
        lines += [
            "## Relative error vs sample size",
            "",
            f"Median over {e['repeats']} draws per s (bands: interquartile range).",
            "",
            "![relative error](experiment.png)",
            "",
            experiment_table(e),
            "",
        ]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
