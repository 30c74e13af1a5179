"""The report's whole-run plots and their sections: median relative error vs s per kind
(the paper's Fig. 1), the distribution of n·score per kind (by Dask over the chunks),
precision@k at finding flipped labels, seconds per stage.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from nldist import graph
from nldist.report.doc import Doc, kind_color, open_scores, ordered_kinds, pyplot, savefig

# --------------------------------------------------------------------------------------
# Relative error vs s (paper Fig. 1)
# --------------------------------------------------------------------------------------


def experiment_table(result: dict) -> str:
    """Markdown table: median relative error per s (rows) and score kind (columns)."""
    kinds = ordered_kinds(list(result["summary"]))
    lines = ["| s | " + " | ".join(kinds) + " |", "|---|" + "---|" * len(kinds)]
    for s in result["s"]:
        cells = [f"{result['summary'][k][str(s)]['median']:.3e}" for k in kinds]
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_experiment(result: dict, path: Path, title: str | None = None) -> Path:
    """Median relative error vs s (log-log), interquartile bands over repeats, one line per kind.

    Values below 1e-12 (a sample that recovers θ* to rounding) are drawn at 1e-12.
    """
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.6, 4.5), dpi=110)
    s = np.asarray(result["s"], dtype=float)
    every = np.array([[d[q] for d in summ.values() for q in ("median", "q25", "q75")]
                      for summ in result["summary"].values()]).ravel()
    negative = bool(np.any(every < 0))  # a sample beat θ* (nonconvex model, or θ* unconverged)
    floor = -np.inf if negative else 1e-12
    for kind in ordered_kinds(list(result["summary"])):
        summ = result["summary"][kind]
        med = np.array([summ[str(v)]["median"] for v in result["s"]])
        lo = np.array([summ[str(v)]["q25"] for v in result["s"]])
        hi = np.array([summ[str(v)]["q75"] for v in result["s"]])
        c = kind_color(kind)
        ax.plot(s, np.maximum(med, floor), marker="o", ms=4, color=c, label=kind,
                lw=2.2 if kind == "nonlinear-leverage" else 1.5)
        ax.fill_between(s, np.maximum(lo, floor), np.maximum(hi, floor), color=c, alpha=0.13)
    ax.set_xscale("log")
    ax.set_xticks(s, [f"{v:,.0f}" for v in s])  # the s values, not overlapping minor labels
    ax.xaxis.set_minor_formatter(plt.NullFormatter())
    if negative:
        tiny = np.abs(every[every != 0])
        ax.set_yscale("symlog", linthresh=float(10 ** np.floor(np.log10(tiny.min())))
                      if tiny.size else 1e-6)
        ax.axhline(0.0, color="k", lw=0.8)
    else:
        ax.set_yscale("log")
    ax.set_xlabel("sample size s")
    ax.set_ylabel("relative error (L(θ_S) − L(θ*)) / L(θ*)"
                  + (" (symlog: some < 0)" if negative else ""))
    ax.set_title(title or f"{result['name']}: {result['model']}, n={result['n_rows']:,}, "
                 f"p={result.get('n_params', '?')}; median of {result['repeats']} draws",
                 fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig(fig, path)
    return path


def experiment_section(doc: Doc, e: dict, out: Path) -> None:
    kinds = ordered_kinds(list(e["summary"]))
    plot_experiment(e, out / "experiment.png")
    doc.heading("Relative error vs sample size")
    doc.para(f"The paper's protocol (Fig. 1): for each s, {e['repeats']} independent weighted "
             f"samples per score kind, each trained on alone over the ball ‖θ‖ ≤ "
             f"{e['radius']}; the relative error of the full-data loss "
             "(L(θ_S) − L(θ*)) / L(θ*). Lines: medians; bands: interquartile ranges. "
             f"L(θ*) = {e['loss_opt']:.6g}.")
    doc.figure(out / "experiment.png", "median relative error vs s, per score kind (log-log)")
    rows, bold = [], set()
    wins = dict.fromkeys(kinds, 0)
    for i, s in enumerate(e["s"]):
        meds = [e["summary"][k][str(s)]["median"] for k in kinds]
        best = int(np.argmin(meds))
        wins[kinds[best]] += 1
        bold.add((i, best + 1))
        rows.append([str(s), *[f"{m:.3e}" for m in meds]])
    doc.table(["s", *kinds], rows, bold)
    ranks = e.get("ranks", {})
    doc.para("Lowest median per s in bold. Lowest median at "
             + ", ".join(f"{k}: {w}/{len(e['s'])} sizes" for k, w in wins.items())
             + ". Ranks of the score matrices: "
             + ", ".join(f"{k} {ranks.get(k)}" for k in kinds if ranks.get(k) is not None)
             + ".")


# --------------------------------------------------------------------------------------
# Score distributions
# --------------------------------------------------------------------------------------




def plot_scores(scores_store: Path, path: Path, bins: int = 50) -> Path | None:
    """One histogram of n·score per kind (log axes), computed by Dask over the chunks.

    Zero scores (rows a score gives no mass) cannot sit on a log axis: they are counted in
    the panel title. Min and max come from one distributed pass, the histograms from another;
    nothing of length n reaches the driver.
    """
    arrays = open_scores(scores_store)
    if not arrays:
        return None
    plt = pyplot()
    from matplotlib.ticker import NullFormatter

    stats, edges, counts = graph.reports.score_histograms(arrays, bins)
    nk = len(arrays)
    ncols = 2 if nk > 1 else 1
    nrows = math.ceil(nk / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols / 1.4 + 1.0, 2.9 * nrows + 0.4),
                             dpi=110, sharex=True, squeeze=False)
    for ax, (kind, arr) in zip(axes.ravel(), arrays.items(), strict=False):
        c = counts[kind]
        ax.stairs(c, edges, fill=True, color=kind_color(kind), alpha=0.75)
        ax.axvline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        rank = arr.attrs.get("rank")
        zeros = int(stats[kind][2])
        extra = f", rank {rank}" if rank is not None else ", rank –"
        extra += f", {zeros:,} rows at 0" if zeros else ""
        ax.set_title(f"{kind}{extra}; max n·score {float(stats[kind][1]):.3g}", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.set_ylabel("rows")
        ax.xaxis.set_tick_params(labelbottom=True)  # every panel its own x axis
        ax.set_xlabel("n · score   (1 = uniform, dashed)", fontsize=8)
    for ax in axes.ravel()[nk:]:
        ax.set_visible(False)
    fig.tight_layout()
    savefig(fig, path)
    return path



# --------------------------------------------------------------------------------------
# Diagnostics (flipped labels) and timings
# --------------------------------------------------------------------------------------


def plot_diagnostics(d: dict, path: Path) -> Path:
    """Precision@k vs k for each ranking; the dashed line is the flip rate (random ranking)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    ks = np.asarray(d["ks"], dtype=float)
    for name, prec in d["precision"].items():
        ax.plot(ks, prec, marker="o", ms=4, label=name, color=kind_color(name),
                lw=2.2 if name == "nonlinear-leverage" else 1.5)
    ax.axhline(d["base_rate"], color="k", ls="--", lw=1, label="random (flip rate)")
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("k (rows inspected, highest score first)")
    ax.set_ylabel("precision@k (fraction flipped)")
    ax.set_title(f"{d['name']}: {d['flip_fraction']:.0%} of labels flipped "
                 f"({d['n_flipped']:,} of {d['n_rows']:,}), {d['model']}, "
                 f"loss {d.get('loss', 'squared')}", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    savefig(fig, path)
    return path


def diagnostics_section(doc: Doc, d: dict, out: Path) -> None:
    doc.heading("Diagnostics: finding flipped labels")
    doc.para(f"{d['n_flipped']:,} of {d['n_rows']:,} labels ({d['flip_fraction']:.0%} asked, "
             f"seed {d['seed']}) were flipped at random; θ* was fitted on the noisy labels "
             f"(‖θ*‖ = {d['theta_norm']:.3g}, ball radius {d['radius']}) and every ranking "
             "scores the rows at θ*. Precision@k is the fraction of flipped rows among the k "
             f"highest-ranked; a random ranking gets the flip rate {d['base_rate']:.3f}.")
    doc.figure(plot_diagnostics(d, out / "diagnostics.png"), "precision@k per ranking")
    names = list(d["precision"])
    rows, bold = [], set()
    for i, k in enumerate(d["ks"]):
        vals = [d["precision"][nm][i] for nm in names]
        best = int(np.argmax(vals))
        bold.update((i, j + 1) for j, v in enumerate(vals) if v == vals[best])
        rows.append([str(k), *[f"{v:.3f}" for v in vals]])
    doc.table(["k", *names], rows, bold)
    if d.get("descriptions"):
        doc.para("Rankings: " + "; ".join(f"**{k}**: {v}" for k, v in d["descriptions"].items())
                 + ".")


def plot_timings(groups: dict[str, dict[str, float]], path: Path) -> Path | None:
    """Horizontal bars: seconds per stage, one panel per source (run, experiment, ...)."""
    groups = {g: {k: v for k, v in t.items() if k != "total"} for g, t in groups.items() if t}
    groups = {g: t for g, t in groups.items() if t}
    if not groups:
        return None
    plt = pyplot()
    heights = [max(1.4, 0.28 * len(t) + 0.8) for t in groups.values()]
    fig, axes = plt.subplots(len(groups), 1, figsize=(6.4, sum(heights)), dpi=110,
                             squeeze=False, gridspec_kw={"height_ratios": heights})
    for ax, (name, t) in zip(axes[:, 0], groups.items(), strict=True):
        stages = list(t)
        vals = [t[s] for s in stages]
        colors = [kind_color(s.split(":", 1)[1]) if ":" in s else "#4c72b0" for s in stages]
        ax.barh(stages[::-1], vals[::-1], color=colors[::-1])
        for yy, v in enumerate(vals[::-1]):
            ax.text(v, yy, f" {v:.2f}s", va="center", fontsize=7)
        ax.set_title(f"{name}: {sum(vals):.1f} s in stages", fontsize=9)
        ax.set_xlim(0, max(vals) * 1.25 if max(vals) > 0 else 1)
        ax.tick_params(labelsize=8)
        ax.grid(True, axis="x", alpha=0.3)
    axes[-1, 0].set_xlabel("seconds")
    fig.tight_layout()
    savefig(fig, path)
    return path
