"""Reports of finished runs: a self-contained ``report.html`` and ``report.md`` with plots.

``write_report(OUT)`` reads what a run left in its output directory — ``metrics.json``
(``nldist run``), ``experiment.json`` (the paper's Fig. 1 protocol), ``diagnostics.json``
(``nldist diagnose``), ``scores.zarr`` and the Zarr dataset — and writes:

* ``experiment.png``: median relative error vs s per score kind, interquartile bands over
  the repeats, log–log (the paper's Fig. 1);
* ``scores.png``: the distribution of n·score per kind (``dask.array.histogram``);
* ``top_<kind>.png`` / ``bottom_<kind>.png`` for image data (the paper's Fig. 2), tables of
  feature values for tabular data: the highest- and lowest-scored rows, found by a
  distributed top-k (``dask.array.argtopk``) — the (n,) scores never reach the driver;
  only the k rows are gathered;
* ``diagnostics.png``: precision@k at finding flipped labels per ranking;
* ``weights.png``: the importance weights of each stored sample (``samples/*.npz``), Kish's
  effective sample size (Σw)²/Σw² in each title and in a table;
* the sampled rows (``sample.parquet``): the heaviest-weighted ones in a table (row, n·score,
  weight, multiplicity, features, target) and ``score_residual.png``, n·score against
  |residual| (at θ₀ for ``select``, at θ* for ``run``);
* ``select``: one read (store-counted chunk reads), the distribution used and why, each
  candidate's predicted error with the guard, the loss "exact" when every row is evaluated;
* ``timings.png``: seconds per stage;
* ``report.md`` (links the PNGs) and ``report.html`` (the same content, PNGs inlined as
  base64, inline CSS: one file that opens anywhere, no network).

Equations are cited by section of ``docs/MATH.md`` in the repository; "–" marks a value that
does not apply.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist.errors import NldistError
from nldist.events import Event, Listener
from nldist.models import get_model
from nldist.models.coded import Codes
from nldist.store.dataset import is_dataset, open_arrays, open_member, read_attrs
from nldist.store.records import atomic_write
from nldist.store.remote import as_path, write_bytes_atomic
from nldist.store.sample_table import read_sample_table
from nldist.store.scores import path_name

KIND_ORDER = ("nonlinear-leverage", "nonlinear-norm", "linear-leverage", "linear-norm",
              "linear-leverage+y", "ridge-leverage", "pilot", "uniform")
_COLORS = {"nonlinear-leverage": "#1f77b4", "nonlinear-norm": "#ff7f0e",
           "linear-leverage": "#2ca02c", "linear-norm": "#d62728", "uniform": "#9467bd",
           "ridge-leverage": "#8c564b", "pilot": "#e377c2", "loss": "#7f7f7f",
           "linear-leverage+y": "#bcbd22", "random": "#17becf", "influence": "#008b8b",
           "influence-mix": "#6a3d9a"}
_EXTRA = ("#17becf", "#bcbd22", "#7f7f7f", "#e377c2", "#8c564b")
MAX_TABLE_FEATURES = 12


def _savefig(fig: Any, path: Path) -> None:
    """Save a figure through a temporary file and a rename (never a truncated PNG)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png")
    write_bytes_atomic(path, buf.getvalue())


def kind_color(kind: str) -> str:
    """A fixed colour per score kind, the same in every plot."""
    if kind in _COLORS:
        return _COLORS[kind]
    return _EXTRA[sum(map(ord, kind)) % len(_EXTRA)]


def ordered_kinds(kinds: list[str] | tuple[str, ...]) -> list[str]:
    """Kinds in the canonical order (nonlinear first, uniform last), unknown ones after."""
    known = [k for k in KIND_ORDER if k in kinds]
    return known + [k for k in kinds if k not in KIND_ORDER]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


# --------------------------------------------------------------------------------------
# A tiny document model rendered to Markdown and to self-contained HTML
# --------------------------------------------------------------------------------------


@dataclass
class Doc:
    """Blocks of a report: headings, paragraphs, tables, figures, code."""

    title: str
    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        """A paragraph; ``**bold**`` and ```code``` are rendered in both formats."""
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]], bold: set | None = None) -> None:
        """A table of strings; ``bold`` holds (row, column) cells to emphasise."""
        self.blocks.append(("table", (header, rows, bold or set())))

    def figure(self, path: Path, caption: str) -> None:
        self.blocks.append(("fig", (as_path(path), caption)))

    def code(self, text: str) -> None:
        self.blocks.append(("code", text))

    # -- Markdown --------------------------------------------------------------------
    def markdown(self, base: Path) -> str:
        out = [f"# {self.title}", ""]
        for kind, val in self.blocks:
            if kind == "h":
                out += [f"{'#' * val[0]} {val[1]}", ""]
            elif kind == "p":
                out += [val, ""]
            elif kind == "table":
                header, rows, bold = val
                out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
                out.append("|" + "---|" * len(header))
                for i, row in enumerate(rows):
                    cells = [f"**{_md_cell(c)}**" if (i, j) in bold else _md_cell(c)
                             for j, c in enumerate(row)]
                    out.append("| " + " | ".join(cells) + " |")
                out.append("")
            elif kind == "fig":
                path, caption = val
                rel = path.relative_to(base) if path.is_relative_to(base) else path
                out += [f"![{caption}]({rel.as_posix()})", "", f"*{caption}*", ""]
            elif kind == "code":
                out += ["```", val, "```", ""]
        return "\n".join(out).rstrip() + "\n"

    # -- HTML --------------------------------------------------------------------------
    def html(self) -> str:
        body = []
        for kind, val in self.blocks:
            if kind == "h":
                level, text = val
                anchor = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
                body.append(f'<h{level} id="{anchor}">{_inline(text)}</h{level}>')
            elif kind == "p":
                body.append(f"<p>{_inline(val)}</p>")
            elif kind == "table":
                header, rows, bold = val
                head = "".join(f"<th>{_inline(h)}</th>" for h in header)
                trs = []
                for i, row in enumerate(rows):
                    tds = "".join(
                        f'<td class="{"best" if (i, j) in bold else ""}">{_inline(c)}</td>'
                        for j, c in enumerate(row))
                    trs.append(f"<tr>{tds}</tr>")
                body.append(f'<div class="scroll"><table><thead><tr>{head}</tr></thead>'
                            f'<tbody>{"".join(trs)}</tbody></table></div>')
            elif kind == "fig":
                path, caption = val
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                body.append(f'<figure><img alt="{html.escape(caption)}" '
                            f'src="data:image/png;base64,{data}"/>'
                            f"<figcaption>{_inline(caption)}</figcaption></figure>")
            elif kind == "code":
                body.append(f"<pre>{html.escape(val)}</pre>")
        return _HTML.format(title=html.escape(self.title), body="\n".join(body))


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _inline(text: str) -> str:
    out = html.escape(str(text))
    out = re.sub(r"`([^`]+)`", r"<code>\1</code>", out)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", out)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"/>
<meta name="viewport" content="width=device-width, initial-scale=1"/>
<title>{title}</title>
<style>
body {{ font-family: -apple-system, "Segoe UI", "DejaVu Sans", Helvetica, Arial, sans-serif;
  margin: 0 auto; max-width: 1120px; padding: 1.5em 2em 4em; color: #1d2330;
  background: #fbfbfd; line-height: 1.45; }}
h1 {{ border-bottom: 3px solid #1f77b4; padding-bottom: .3em; }}
h2 {{ margin-top: 1.8em; border-bottom: 1px solid #d5d9e2; padding-bottom: .2em; }}
table {{ border-collapse: collapse; font-size: 0.86em; margin: .6em 0 1.2em; }}
th, td {{ border: 1px solid #d5d9e2; padding: .25em .6em; text-align: right;
  white-space: nowrap; }}
th {{ background: #e9eef7; }}
td:first-child, th:first-child {{ text-align: left; }}
tr:nth-child(even) td {{ background: #f3f5f9; }}
td.best {{ background: #d9f2d9 !important; font-weight: bold; }}
.scroll {{ overflow-x: auto; }}
figure {{ margin: 1em 0 1.6em; }}
figure img {{ max-width: 100%; border: 1px solid #d5d9e2; background: white; }}
figcaption {{ color: #555; font-size: .9em; }}
code, pre {{ background: #eef1f6; border-radius: 3px; padding: 0 .25em; }}
pre {{ padding: .6em; overflow-x: auto; }}
</style></head>
<body>
<h1>{title}</h1>
{body}
</body></html>
"""


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
    plt = _plt()
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
    _savefig(fig, path)
    plt.close(fig)
    return path


def _experiment_section(doc: Doc, e: dict, out: Path) -> None:
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


def _open_scores(store: Path) -> dict[str, Any]:
    """{kind: zarr array} of the complete score arrays in OUT/scores.zarr."""
    arrays = {a.attrs.get("kind", name): a for name, a in open_arrays(store).items()}
    return {k: arrays[k] for k in ordered_kinds(list(arrays))
            if arrays[k].attrs.get("complete", True)}


def plot_scores(scores_store: Path, path: Path, bins: int = 50) -> Path | None:
    """One histogram of n·score per kind (log axes), computed by Dask over the chunks.

    Zero scores (rows a score gives no mass) cannot sit on a log axis: they are counted in
    the panel title. Min and max come from one distributed pass, the histograms from another;
    nothing of length n reaches the driver.
    """
    arrays = _open_scores(scores_store)
    if not arrays:
        return None
    plt = _plt()
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
    _savefig(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# Highest- and lowest-scored rows (distributed top-k), tables and image grids
# --------------------------------------------------------------------------------------


@dataclass
class Extremes:
    """The k highest- and lowest-scored rows of one score kind, with their data."""

    kind: str
    top_idx: np.ndarray
    top_scores: np.ndarray
    bottom_idx: np.ndarray
    bottom_scores: np.ndarray
    X_top: np.ndarray
    y_top: np.ndarray | None
    X_bottom: np.ndarray
    y_bottom: np.ndarray | None
    flipped_top: np.ndarray | None = None
    flipped_bottom: np.ndarray | None = None


def extreme_rows(dataset: Path, scores: Any, kind: str, k: int) -> Extremes:
    """Top/bottom-k rows of ``scores`` with their X, y (and ``flipped`` labels if stored)."""
    ti, tv, bi, bv = graph.reports.top_bottom(scores, k)
    X, y = graph.inputs.open_zarr_xy(dataset)
    Xt, yt = graph.draws.gather_rows(X, y, ti)
    Xb, yb = graph.draws.gather_rows(X, y, bi)
    ext = Extremes(kind, ti, tv, bi, bv, Xt, yt, Xb, yb)
    flipped = open_member(dataset, "flipped")
    if flipped is not None:
        ext.flipped_top = graph.reports.take(flipped, ti)
        ext.flipped_bottom = graph.reports.take(flipped, bi)
    return ext


def original_units(X: np.ndarray, y: np.ndarray | None, attrs: dict
                   ) -> tuple[np.ndarray, np.ndarray | None]:
    """Undo the standardization recorded at ingest (features and target)."""
    X = np.asarray(X, dtype=np.float64)
    st = attrs.get("standardize")
    if st:
        X = X * np.asarray(st["scale"]) + np.asarray(st["mean"])
    if y is not None and attrs.get("standardize_target"):
        t = attrs["standardize_target"]
        y = np.asarray(y, dtype=np.float64) * t["scale"] + t["mean"]
    return X, y


def decode_columns(X: np.ndarray, attrs: dict) -> tuple[list[str], list[list[str]]]:
    """Feature columns for display: one-hot groups folded back into their categories, and
    integer codes (``attrs["codes"]``) shown as their levels.

    Returns the column names and, per column, the formatted values of each row.
    """
    names = list(attrs.get("features") or [f"x{i}" for i in range(X.shape[1])])
    cats: dict[str, list[str]] = attrs.get("categories") or {}
    used: set[int] = set()
    cols: list[tuple[str, list[str]]] = []
    dummy_of: dict[str, tuple[str, dict[int, str]]] = {}
    for col, values in cats.items():
        where = {names.index(f"{col}_{v}"): v for v in values if f"{col}_{v}" in names}
        if where:
            base = [v for v in values if f"{col}_{v}" not in names]
            dummy_of[col] = (base[0] if base else "?", where)
    first_pos = {col: min(where) for col, (_, where) in dummy_of.items()}
    for j, name in enumerate(names):
        hit = [c for c, pos in first_pos.items() if pos == j]
        if hit:
            col = hit[0]
            base, where = dummy_of[col]
            vals = []
            for row in X:
                on = [where[i] for i in where if row[i] > 0.5]
                vals.append(on[0] if on else base)
            cols.append((col, vals))
            used.update(where)
            continue
        if j in used or any(j in w for _, w in dummy_of.values()):
            continue
        levels = (attrs.get("codes") or {}).get(name)
        if levels is not None:  # a categorical stored as integer codes: its level
            cols.append((name, [str(levels[int(v)]) if 0 <= v < len(levels) else _fmt(v)
                                for v in X[:, j]]))
            continue
        cols.append((name, [_fmt(v) for v in X[:, j]]))
    return [c[0] for c in cols], [c[1] for c in cols]


def _fmt(v: float) -> str:
    v = float(v)
    if v == 0:
        return "0"
    if abs(v - round(v)) < 1e-9 and abs(v) < 1e7:
        return f"{int(round(v))}"
    return f"{v:.4g}"


def _label(y: float | None, attrs: dict) -> str:
    """Class name of a target value (classes and label names from the dataset attrs)."""
    if y is None:
        return ""
    if np.ndim(y) == 1:  # the targets of a multi-output regression
        return ", ".join(_fmt(v) for v in np.asarray(y))
    classes = attrs.get("classes")
    names = attrs.get("label_names")
    if classes and float(y) in (0.0, 1.0):
        c = classes[int(y)]
        if names:
            try:
                return str(names[int(float(c))])
            except (ValueError, IndexError):
                return str(c)
        return str(c)
    return _fmt(y)


def extremes_table(ext: Extremes, attrs: dict, which: str, n_rows: int
                   ) -> tuple[list[str], list[list[str]], set]:
    """Header and rows of a top/bottom table in the dataset's original units."""
    X = ext.X_top if which == "top" else ext.X_bottom
    y = ext.y_top if which == "top" else ext.y_bottom
    idx = ext.top_idx if which == "top" else ext.bottom_idx
    sc = ext.top_scores if which == "top" else ext.bottom_scores
    flipped = ext.flipped_top if which == "top" else ext.flipped_bottom
    Xo, yo = original_units(X, y, attrs)
    names, cols = decode_columns(Xo, attrs)
    more = len(names) > MAX_TABLE_FEATURES
    names, cols = names[:MAX_TABLE_FEATURES], cols[:MAX_TABLE_FEATURES]
    target = attrs.get("target", "y")
    header = ["#", "row", "n·score", target, *(["flipped"] if flipped is not None else []),
              *names]
    if more:
        header.append("…")
    rows, bold = [], set()
    for r in range(len(idx)):
        lab = _label(None if yo is None else yo[r], attrs) if yo is not None else ""
        row = [str(r + 1), f"{int(idx[r]):,}", f"{sc[r] * n_rows:.3g}", lab]
        if flipped is not None:
            row.append("yes" if flipped[r] else "")
            if flipped[r]:
                bold.add((r, 4))
        row += [c[r] for c in cols]
        if more:
            row.append("")
        rows.append(row)
    return header, rows, bold


def plot_image_grid(images: np.ndarray, titles: list[str], path: Path, title: str,
                    highlight: np.ndarray | None = None, ncols: int = 10) -> Path:
    """A grid of grayscale images (k, h, w) with a caption each; highlighted ones framed red.

    The images are tiled into one mosaic (one axes, one ``imshow``): fast for 50 images.
    """
    from matplotlib.patches import Rectangle

    plt = _plt()
    images = np.asarray(images, dtype=np.float64)
    k, h, w = images.shape
    ncols = min(ncols, max(k, 1))
    nrows = max(1, math.ceil(k / ncols))
    pad_x, pad_y = max(1, w // 6), max(3, h // 2)  # room for the caption above each image
    vmin, vmax = float(np.min(images)), float(np.max(images))
    mosaic = np.full((nrows * (h + pad_y) + 1, ncols * (w + pad_x) + 1), np.nan)
    for i in range(k):
        r, c = divmod(i, ncols)
        y0, x0 = r * (h + pad_y) + pad_y, c * (w + pad_x) + pad_x // 2 + 1
        mosaic[y0: y0 + h, x0: x0 + w] = images[i]
    width = 1.05 * ncols + 0.4
    fig, ax = plt.subplots(figsize=(width, width * mosaic.shape[0] / mosaic.shape[1] + 0.45),
                           dpi=110)
    cmap = plt.get_cmap("gray").with_extremes(bad="white")
    ax.imshow(mosaic, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    for i in range(k):
        r, c = divmod(i, ncols)
        y0, x0 = r * (h + pad_y) + pad_y, c * (w + pad_x) + pad_x // 2 + 1
        ax.text(x0 + w / 2 - 0.5, y0 - 0.9, titles[i], ha="center", va="bottom", fontsize=6.5)
        red = highlight is not None and bool(highlight[i])
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), w, h, fill=False,
                               edgecolor="red" if red else "#999999", lw=2.0 if red else 0.4))
    ax.set_axis_off()
    ax.set_title(title, fontsize=10)
    fig.tight_layout(pad=0.3)
    _savefig(fig, path)
    plt.close(fig)
    return path


def _extremes_section(doc: Doc, out: Path, dataset: Path, attrs: dict, kinds: list[str],
                      k: int | None) -> None:
    arrays = _open_scores(out / "scores.zarr")
    chosen = [kk for kk in kinds if kk in arrays and kk != "uniform"]
    if not chosen:
        return
    shape = attrs.get("image_shape")
    n = int(attrs.get("n_rows") or next(iter(arrays.values())).shape[0])
    k = int(k or (50 if shape else 10))
    doc.heading("Highest- and lowest-scored rows")
    doc.para(f"The {k} rows with the highest and the lowest scores of each kind (a distributed "
             "top-k over the score chunks; only these rows are read back), in the dataset's "
             "original units. High nonlinear leverage marks the unusual, hard or mislabeled "
             f"rows; low marks the easy, redundant ones ({math_ref(7)})."
             + (" Images: the paper's Fig. 2 layout; captions give the label and n·score."
                if shape else ""))
    for kind in chosen:
        ext = extreme_rows(dataset, arrays[kind], kind, k)
        doc.heading(kind, level=3)
        if shape:
            h, w = int(shape[0]), int(shape[1])
            for which in ("top", "bottom"):
                X = ext.X_top if which == "top" else ext.X_bottom
                y = ext.y_top if which == "top" else ext.y_bottom
                sc = ext.top_scores if which == "top" else ext.bottom_scores
                fl = ext.flipped_top if which == "top" else ext.flipped_bottom
                Xo, yo = original_units(X, y, attrs)
                titles = [f"{_label(None if yo is None else yo[i], attrs).split('/')[0][:8]} "
                          f"{sc[i] * n:.2g}"
                          for i in range(len(sc))]
                word = "highest" if which == "top" else "lowest"
                path = plot_image_grid(
                    Xo.reshape(-1, h, w), titles, out / f"{which}_{path_name(kind)}.png",
                    f"{kind}: the {len(sc)} {word}-scored images"
                    + (" (red frame: flipped label)" if fl is not None else ""), highlight=fl)
                doc.figure(path, f"{kind}: {word}-scored images (label, n·score)")
        else:
            for which in ("top", "bottom"):
                header, rows, bold = extremes_table(ext, attrs, which, n)
                doc.para(f"**{'Highest' if which == 'top' else 'Lowest'}** {len(rows)} by "
                         f"{kind}:")
                doc.table(header, rows, bold)


# --------------------------------------------------------------------------------------
# Diagnostics (flipped labels) and timings
# --------------------------------------------------------------------------------------


def plot_diagnostics(d: dict, path: Path) -> Path:
    """Precision@k vs k for each ranking; the dashed line is the flip rate (random ranking)."""
    plt = _plt()
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
    _savefig(fig, path)
    plt.close(fig)
    return path


def _diagnostics_section(doc: Doc, d: dict, out: Path) -> None:
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
    plt = _plt()
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
    _savefig(fig, path)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------
# The sample itself: weights (Kish ESS), the sampled rows, score vs |residual|
# --------------------------------------------------------------------------------------

#: rows of the sampled-rows table (the heaviest weights) and feature columns shown in it
SAMPLE_TABLE_ROWS = 20
SAMPLE_TABLE_FEATURES = 8
#: where the report's equations are written down (in the nldist repository)
MATH_REF = "docs/MATH.md"


def math_ref(*sections: int) -> str:
    """A citation of the mathematics page in the repository (``docs/MATH.md``)."""
    return f"`{MATH_REF}` " + " and ".join(f"§{s}" for s in sections)


def kish_ess(weights: np.ndarray) -> float:
    """Kish's effective sample size (Σw)² / Σw² of a weighted sample (one weight per draw).

    Equal weights give the number of draws; a few heavy weights drive it towards 1.
    """
    w = np.asarray(weights, dtype=np.float64).ravel()
    if w.size == 0 or not np.any(w):
        return 0.0
    return float(w.sum() ** 2 / np.sum(w * w))


@dataclass
class Draws:
    """One kind's sample as stored in ``OUT/samples/<kind>.npz`` (one entry per draw)."""

    kind: str
    indices: np.ndarray
    weights: np.ndarray
    n: int | None
    #: select only: the candidates' names, their values (4, s) and |r_i(θ₀)| (s,)
    candidates: list[str] | None = None
    values: np.ndarray | None = None
    residual: np.ndarray | None = None

    @property
    def ess(self) -> float:
        return kish_ess(self.weights)


def load_draws(out: Path) -> list[Draws]:
    """Every stored sample of a run (``samples/*.npz``), in the canonical kind order."""
    found = {}
    for path in sorted((as_path(out) / "samples").glob("*.npz")):
        with np.load(io.BytesIO(path.read_bytes()), allow_pickle=False) as z:  # local or URL
            if "indices" not in z.files or "weights" not in z.files:
                continue
            kind = str(z["kind"]) if "kind" in z.files else path.stem
            found[kind] = Draws(
                kind, np.asarray(z["indices"], dtype=np.int64),
                np.asarray(z["weights"], dtype=np.float64),
                int(z["n"]) if "n" in z.files else None,
                [str(c) for c in z["candidates"]] if "candidates" in z.files else None,
                np.asarray(z["values"], dtype=np.float64) if "values" in z.files else None,
                np.asarray(z["residual"], dtype=np.float64) if "residual" in z.files else None)
    return [found[k] for k in ordered_kinds(list(found))]


def _log_bins(v: np.ndarray, bins: int) -> tuple[np.ndarray, bool]:
    """Bin edges for positive values: geometric when they span more than 20×."""
    lo, hi = float(v.min()), float(v.max())
    if lo > 0 and hi / lo > 20:
        return np.geomspace(lo, hi * (1 + 1e-9), bins + 1), True
    if hi <= lo:
        return np.array([lo - 0.5, lo + 0.5]) if lo == 0 else np.array([lo * 0.9, lo * 1.1]), False
    return np.linspace(lo, hi * (1 + 1e-9), bins + 1), False


def plot_weights(draws: list[Draws], path: Path, bins: int = 40) -> Path | None:
    """One histogram of the importance weights w = 1/π per kind, Kish's ESS in each title.

    The dashed line is n/s, the weight every draw of a uniform sample would have.
    """
    draws = [d for d in draws if d.weights.size]
    if not draws:
        return None
    plt = _plt()

    nk = len(draws)
    ncols = 2 if nk > 1 else 1
    nrows = math.ceil(nk / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.6 * ncols + 0.6, 2.9 * nrows + 0.3),
                             dpi=110, squeeze=False)
    for ax, d in zip(axes.ravel(), draws, strict=False):
        w = d.weights
        edges, logx = _log_bins(w, bins)
        counts, _ = np.histogram(w, edges)
        ax.stairs(counts, edges, fill=True, color=kind_color(d.kind), alpha=0.75)
        if logx:
            _log_axis(ax, "x", float(edges[0]), float(edges[-1]))
        if d.n:
            ax.axvline(d.n / w.size, color="k", lw=0.8, ls="--")
        ax.set_title(f"{d.kind}: Kish ESS = {d.ess:,.1f} of s = {w.size:,} draws",
                     fontsize=9)
        ax.set_xlabel("weight w = 1/π per draw" + ("   (n/s = uniform, dashed)" if d.n else ""),
                      fontsize=8)
        ax.set_ylabel("draws")
        ax.tick_params(labelsize=8)
        ax.grid(True, which="both", alpha=0.25)
    for ax in axes.ravel()[nk:]:
        ax.set_visible(False)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


def _weights_section(doc: Doc, out: Path, draws: list[Draws]) -> None:
    if plot_weights(draws, out / "weights.png") is None:
        return
    doc.heading("Sample weights and effective sample size")
    doc.para("Each draw stands for w = 1/π of the full data's rows (Horvitz–Thompson; "
             f"{math_ref(4, 9)}): Σw estimates n. Kish's effective sample size "
             "ESS = (Σw)² / Σw² is the number of equally weighted draws that would give the "
             "same variance of a weighted mean: s when every weight is equal, far less when a "
             "few rows carry heavy weights.")
    doc.figure(out / "weights.png", "distribution of the importance weights per kind, "
               "Kish ESS in each title")
    rows = []
    for d in draws:
        w = d.weights
        rows.append([d.kind, f"{w.size:,}", f"{np.unique(d.indices).size:,}",
                     f"{w.sum():,.6g}" + (f" (n = {d.n:,})" if d.n else ""),
                     f"{w.min():.4g}", f"{np.median(w):.4g}", f"{w.max():.4g}",
                     f"{d.ess:,.1f}", f"{d.ess / w.size:.3f}"])
    doc.table(["kind", "draws s", "distinct rows", "Σw", "min w", "median w", "max w",
               "Kish ESS", "ESS / s"], rows)


def _score_of(d: Draws, m: dict, out: Path) -> tuple[np.ndarray | None, str]:
    """n·score of each draw of ``d`` under its own distribution (1 = uniform) and its name.

    select: the chosen candidate's stored value over the read's total; run: scores.zarr.
    """
    n = d.n or int(m.get("n_rows") or 0)
    if d.values is not None and d.candidates and d.kind in d.candidates:
        q = d.values[d.candidates.index(d.kind)]
        total = ((m.get("sampling") or {}).get("totals") or {}).get(d.kind)
        if total:
            return q * n / float(total), f"n·score ({d.kind})"
        return q, f"{d.kind} value (unnormalised)"
    arrays = _open_scores(out / "scores.zarr") if (out / "scores.zarr").exists() else {}
    if d.kind in arrays:
        return graph.reports.take(arrays[d.kind], d.indices) * n, f"n·score ({d.kind})"
    return None, ""


def _residuals(m: dict, out: Path, X: np.ndarray, y: np.ndarray | None, attrs: dict
               ) -> tuple[np.ndarray | None, str]:
    """|y − f(x; θ*)| of the sampled rows of a ``run`` (squared loss, θ* stored)."""
    star = out / "theta_star.npz"
    if y is None or not star.exists() or (m.get("loss") or "squared") != "squared":
        return None, ""
    try:
        with np.load(star, allow_pickle=False) as z:
            theta = np.asarray(z["theta"], dtype=np.float64)
        f = np.asarray(get_model(m["model"], X.shape[1], Codes.from_attrs(attrs)).predict(
            theta, X), dtype=np.float64)
    except Exception:  # noqa: BLE001 - a model without predict: no panel, not a failed report
        return None, ""
    r = f.reshape(len(X), -1) - np.asarray(y, dtype=np.float64).reshape(len(X), -1)
    return np.linalg.norm(r, axis=1), "|residual| at θ* (fitted on all rows)"


def _log_axis(ax: Any, which: str, lo: float, hi: float) -> None:
    """A log axis whose labels never overlap: 1-2-5 ticks in plain numbers over less than
    two decades, powers of ten (no minor labels) over more."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    axis.set_minor_formatter(NullFormatter())
    if hi / lo < 100:
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


def plot_score_residual(score: np.ndarray, resid: np.ndarray, weights: np.ndarray,
                        path: Path, xlabel: str, ylabel: str, title: str) -> Path:
    """The sampled rows: n·score against |residual|, coloured by weight (log axes where the
    values are positive); zeros sit at the axis floor, counted in the title."""
    plt = _plt()
    from matplotlib.colors import LogNorm, Normalize

    score = np.asarray(score, dtype=np.float64)
    resid = np.abs(np.asarray(resid, dtype=np.float64))
    w = np.asarray(weights, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.6, 4.6), dpi=110)
    notes = []
    xs, ys = score.copy(), resid.copy()
    for v, axis, name in ((xs, "x", "score"), (ys, "y", "|residual|")):
        pos = v[v > 0]
        if pos.size and pos.max() / pos.min() > 10:
            zero = v <= 0
            if zero.any():
                v[zero] = pos.min() / 2
                notes.append(f"{int(zero.sum())} at {name} 0 drawn at the floor")
            _log_axis(ax, axis, float(v.min()), float(v.max()))
    norm = (LogNorm(w.min(), w.max()) if w.min() > 0 and w.max() / w.min() > 10
            else Normalize(w.min(), w.max()))
    sc = ax.scatter(xs, ys, c=w, cmap="viridis", norm=norm, s=14, alpha=0.8, linewidths=0)
    fig.colorbar(sc, ax=ax, label="weight w = 1/π")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title + (f" ({'; '.join(notes)})" if notes else ""), fontsize=9)
    ax.grid(True, which="both", alpha=0.25)
    fig.tight_layout()
    _savefig(fig, path)
    plt.close(fig)
    return path


def sampled_rows_table(frame: Any, meta: dict, attrs: dict, score: dict[int, float] | None,
                       k: int = SAMPLE_TABLE_ROWS) -> tuple[list[str], list[list[str]], np.ndarray]:
    """Header, rows and dataset row indices of the k heaviest-weighted distinct sampled rows
    of a sample table (``sample.parquet``), in the dataset's original units."""
    col = {name: name for name in ("row", "multiplicity", "weight", "sample_weight", "y")}
    col |= meta.get("columns", {})
    features = list(meta.get("features") or [])
    rows_idx = frame[col["row"]].to_numpy(np.int64)
    w = frame[col["weight"]].to_numpy(np.float64)
    mult = frame[col["multiplicity"]].to_numpy(np.int64)
    order = np.lexsort((rows_idx, -w))[:k]  # heaviest first, ties by row index
    X = frame[features].to_numpy(np.float64)[order]
    ycol = col["y"]
    y = frame[ycol].to_numpy(np.float64)[order] if isinstance(ycol, (str, list)) else None
    Xo, yo = original_units(X, y, attrs)
    names, cols = decode_columns(Xo, {**attrs, "features": features})
    more = len(names) > SAMPLE_TABLE_FEATURES
    names, cols = names[:SAMPLE_TABLE_FEATURES], cols[:SAMPLE_TABLE_FEATURES]
    show_mult = bool(np.any(mult > 1))
    target = attrs.get("target", "y")
    if isinstance(target, list):
        target = ", ".join(target)
    header = ["#", "row", "n·score", "weight w", *(["multiplicity"] if show_mult else []),
              str(target), *names, *(["…"] if more else [])]
    out = []
    for r, i in enumerate(order):
        sc = "–" if score is None or int(rows_idx[i]) not in score else \
            f"{score[int(rows_idx[i])]:.3g}"
        row = [str(r + 1), f"{int(rows_idx[i]):,}", sc, f"{w[i]:.4g}",
               *([str(int(mult[i]))] if show_mult else []),
               _label(None if yo is None else yo[r], attrs) if yo is not None else "–",
               *[c[r] for c in cols], *([""] if more else [])]
        out.append(row)
    return header, out, rows_idx[order]


def _sample_section(doc: Doc, out: Path, m: dict, attrs: dict, draws: list[Draws]) -> None:
    """The handed-over sample (``sample.parquet``): its heaviest rows, score vs |residual|."""
    if not (out / "sample.parquet").exists():
        return
    frame, meta = read_sample_table(out / "sample.parquet")
    # select writes the job's kind (auto) in the table, the distribution used in the npz
    wanted = [(m.get("sampling") or {}).get("kind"), meta.get("kind")]
    d = next((x for k in wanted for x in draws if k and x.kind == k), None)
    if d is None:
        return
    score, score_name = _score_of(d, m, out)
    by_row = None if score is None else dict(zip(d.indices.tolist(), score.tolist(),
                                                 strict=True))
    header, rows, _ = sampled_rows_table(frame, meta, attrs, by_row)
    doc.heading("The sampled rows")
    doc.para(f"The {len(rows)} sampled rows of `{d.kind}` with the heaviest weights, of "
             f"{len(frame):,} distinct rows (`sample.parquet`; `nldist.load_sample(OUT)` reads "
             "all of them), in the dataset's original units. n·score is the row's sampling "
             "probability times n (1 = uniform); w = 1/π the number of full-data rows it "
             "stands for" + ("; multiplicity: how many draws picked it" if "multiplicity" in
                             header else "") + ".")
    doc.table(header, rows)
    resid, rname = None, ""
    if d.residual is not None:
        resid, rname = d.residual, "|residual| at θ₀ (the pilot's fit)"
    elif score is not None:
        col = {"y": "y", "row": "row"} | meta.get("columns", {})
        feats = list(meta.get("features") or [])
        pos = {r: i for i, r in enumerate(frame[col["row"]].to_numpy(np.int64).tolist())}
        at = np.array([pos[int(i)] for i in d.indices])
        X = frame[feats].to_numpy(np.float64)[at]
        resid, rname = _residuals(m, out, X, frame[col["y"]].to_numpy(np.float64)[at],
                                  attrs)
    if score is None or resid is None:
        return
    x, xlabel = score, score_name + "   (1 = uniform)"
    if np.ptp(score) == 0 and d.values is not None and "nonlinear-leverage" in d.candidates:
        lev = d.values[d.candidates.index("nonlinear-leverage")]
        tot = ((m.get("sampling") or {}).get("totals") or {}).get("nonlinear-leverage")
        if tot:  # uniform: every score is 1; show the rows' leverage instead
            x, xlabel = lev * (d.n or m["n_rows"]) / tot, "n·score (nonlinear-leverage at θ₀)"
    plot_score_residual(x, resid, d.weights, out / "score_residual.png", xlabel, rname,
                        f"{d.kind}: the {d.weights.size:,} sampled draws")
    doc.para("Score against |residual| of every sampled row (colour: its weight). Leverage "
             "alone ignores the residual; the influence distributions grow with |r_i|·√τ_i "
             f"({math_ref(9)}): rows high on both axes are the ones that move the fit.")
    doc.figure(out / "score_residual.png", "sampled rows: n·score vs |residual| (log axes)")


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def _load_json(path: Path) -> dict | None:
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise NldistError(f"{path} is not valid JSON ({exc}); re-run the stage that wrote it"
                          ) from None


def _num(v: Any, fmt: str = ".6g") -> str:
    """A number, or "–" where the value does not apply (None, NaN)."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return format(v, fmt)


def _reads_text(c: dict) -> str:
    """The reads of X counted by the store (chunk files opened by the run's tasks)."""
    counted = c.get("store_reads_counted") or {}
    if counted.get("chunk_reads") is None:
        return f"{c['passes_over_x']:.2f} (planned passes)"
    unit = "partitions" if "Parquet" in counted.get("note", "") else "chunks"
    return (f"{counted['passes']:.2f} ({_count(counted['chunk_reads'], 'read')} of the "
            f"{_count(counted['x_chunks'], unit[:-1])} of X, counted by the store)")


def full_fit_text(full: dict | None) -> tuple[str, str, str]:
    """The full-data fit's cost in words, labelled measured, reused or estimated: (wall
    time, passes over X, a sentence on where the figures come from) — '–' and '' where
    select recorded none. Shared by the report and ``nldist select``'s table."""
    full = full or {}
    est, meas = full.get("estimated") or {}, full.get("measured")
    model = (f"the model's estimate: {full['note']}" if est and full.get("note") else "")
    if meas and meas.get("reused"):
        sec = meas.get("seconds")
        seconds = (f"{sec:.3g} s (measured when θ* was computed; reused, 0 s now)"
                   if sec is not None else "θ* reused (its cost was not recorded)")
        passes = (f"{meas['passes_over_x']:g} (when computed; reused: 0 now)"
                  if meas.get("passes_over_x") is not None else "0 now (reused)")
        return seconds, passes, f"Full-data fit: θ* of an earlier run, reused; {model}"
    if meas:
        why = full.get("why") or "measured"
        return (f"{meas['seconds']:.3g} s (measured)", f"{meas['passes_over_x']:g} (measured)",
                f"Full-data fit measured ({why}); {model}" if model else
                f"Full-data fit measured ({why})")
    if est:
        return (f"≈ {est['seconds']:.3g} s (estimated)",
                f"≈ {est['passes_over_x']} (estimated)", f"Full-data fit estimated: "
                f"{full['note']}; run with --compare-full to measure it")
    return "–", "–", ""


def _count(k: int, noun: str) -> str:
    """``1 chunk``, ``3 chunks``."""
    return f"{k:,} {noun}{'' if k == 1 else 's'}"


def _select_section(doc: Doc, m: dict) -> None:
    """The practical path: one read, the distribution used and why, the candidates'
    predicted errors, the sample's model, its loss (exact or estimated) and what it cost."""
    doc.heading("Selection (the practical path)")
    r = m["kinds"][m["kind"]]
    pil = m.get("pilot") or {}
    ev = m["evaluation"]
    c = m["cost"]
    smp = m.get("sampling")
    exact_eval = ev.get("rate", 0) >= 1
    fit = r.get("fit") or {}
    counted = c.get("store_reads_counted") or {}
    theta0 = (f"θ₀ from a pilot of {_num(pil.get('rows'), ',')} rows "
              f"({pil.get('from', m['theta_source'])}"
              f"{': ' + pil['note'] if pil.get('note') else ''})")
    if smp:
        fac = smp.get("factor") or {}
        how = ("the exact R of pass 1 (one more read)" if fac.get("factor", "").startswith("exact")
               else f"a uniform pilot of {_num(fac.get('rows'), ',')} rows "
                    f"({fac.get('from', 'pilot')}, no read of X)")
        doc.para(f"**One read of X.** {theta0}. Then X was read once: "
                 + (f"the store counted {_count(counted['chunk_reads'], 'chunk read')} of "
                    f"its {_count(counted['x_chunks'], 'chunk')} ({counted['passes']:.2f} "
                    "passes). "
                    if counted.get("chunk_reads") is not None else "")
                 + "In that read every chunk scored its rows for each candidate distribution "
                 f"against a factor of the dual rows at θ₀ (from {how}, rank "
                 f"{_num(fac.get('rank'))}), drew its sample rows and took its evaluation rows "
                 f"({math_ref(9)}).")
        doc.para(f"**Distribution used: `{smp['kind']}`** (requested `{smp.get('requested')}`: "
                 f"{smp.get('why')}). Sample of s = {smp['size']:,} rows (seed {m['seed']}) by "
                 f"{smp.get('method', 'Poisson sampling')}"
                 + (f", from {smp['drawn_rows']:,} rows drawn in the read"
                    if smp.get("drawn_rows") is not None else "")
                 + (f"; {smp['certain']:,} rows taken with certainty (weight 1)"
                    if smp.get("certain") else "")
                 + (f"; sized for a target relative error {smp['target_error']:g}"
                    if smp.get("target_error") else "") + "."
                 + (f" Note: {smp['short']}." if smp.get("short") else ""))
        guard = re.search(r">=\s*([0-9.]+)", smp.get("guard", ""))
        g = float(guard.group(1)) if guard else 10.0
        p = int(m.get("n_params") or 0)
        rows, bold = [], set()
        for i, (name, v) in enumerate(smp.get("predicted", {}).items()):
            d_n = v.get("d_n")
            need = g * p * d_n if d_n is not None and p else None
            rows.append([name + (" (used)" if name == smp["kind"] else ""),
                         _num(v.get("total"), ".4g"), _num(v.get("predicted"), ".3g"),
                         _num(d_n, ".3g"), f"s ≥ {need:,.0f}" if need is not None else "–",
                         "yes" if v.get("trusted") else "no"])
            if name == smp["kind"]:
                bold.update((i, j) for j in range(6))
        doc.table(["candidate", "total Z", "predicted relative error",
                   "d_n (heavy weights)", f"guard: s ≥ {g:g}·p·d_n", "trusted"], rows, bold)
        doc.para(f"Predicted relative error: the first-order formula (P) of {math_ref(9)} at "
                 f"θ₀ and s = {smp['size']:,}, from the read's per-chunk sums. The guard: "
                 f"{smp.get('guard', 'a prediction is trusted when s ≥ 10·p·d_n')} (p = {p}; "
                 "d_n = 1 for leverage sampling, large when a few rows would carry heavy "
                 "weights); below it (P) can under-predict by orders of magnitude.")
    else:
        doc.para(f"{theta0}; `{m['kind']}` scores at θ₀; one weighted sample of s = {m['s']} "
                 f"rows (seed {m['seed']}) drawn in the same read of X as pass 2 "
                 f"({math_ref(4)}, {math_ref(5)}). Reads of X: {_reads_text(c)}.")
    pool = (m.get("sampling") or {}).get("pooling") or {}
    lam = pool.get("lambda")
    trained = ("The sample was trained on alone" if lam is None or lam >= 1 else
               f"The sample was trained on pooled with the pilot's {pool['pilot_rows']:,} "
               f"uniform rows (weights λ·w and (1 − λ)·n/m, λ = {lam:.3g} from the two "
               "predicted errors: the pilot used twice)")
    doc.para(f"{trained} over ‖θ‖ ≤ {m['radius']} from θ₀"
             + (f" ({fit['iterations']} iterations)" if fit.get("iterations") else "") + ". "
             + (f"Its full-data loss is **exact**: the evaluation covers every row "
                f"({ev['rows']:,} of {m['n_rows']:,}, rate 1), so no interval is shown."
                if exact_eval else
                f"Its full-data loss is estimated from {ev['rows']:,} evaluation rows "
                f"(rate {ev['rate']:.3g}; {ev['method']})."))
    full = m.get("full_fit") or {}
    meas = full.get("measured")
    full_seconds, full_passes, full_note = full_fit_text(full)
    lo, hi = r["loss_ci95"]
    if exact_eval:
        loss_s = f"{r['loss_estimate']:.6g} (exact: every row evaluated)"
        loss_0 = f"{r['loss_estimate_theta0']:.6g} (exact)"
    else:
        loss_s = (f"{r['loss_estimate']:.6g} (95% CI {lo:.6g} … {hi:.6g})"
                  + (f"; exact {r['loss_full']:.6g}" if r.get("loss_full") is not None else ""))
        lo0, hi0 = r.get("loss_ci95_theta0") or (None, None)
        loss_0 = (f"{r['loss_estimate_theta0']:.6g}"
                  + (f" (95% CI {lo0:.6g} … {hi0:.6g})" if lo0 is not None else ""))
    rel = r.get("rel_error")
    rows = [["full-data loss", loss_s, _num(m.get("loss_opt")) if meas else "–"],
            ["L(θ₀) of the pilot", loss_0, "–"],
            ["relative error (L − L*) / L*",
             (f"{rel:.3e} (θ₀: {_num(r.get('rel_error_theta0'), '.3e')})" if rel is not None
              else "– (needs L*: run with --compare-full)"),
             "0 (the reference)" if rel is not None else "–"],
            ["wall time (after ingest)", f"{c['wall_s']:.1f} s", full_seconds],
            ["reads of X", _reads_text(c), full_passes],
            ["bytes read", f"{c['bytes_read'] / 2**20:,.1f} MiB of "
             f"{c['x_bytes'] / 2**20:,.1f} MiB" if c.get("bytes_read") is not None else "–",
             "–"]]
    doc.table(["", "sampling path (θ_S)", "full-data fit (θ*)"], rows)
    if r["loss_estimate"] > r["loss_estimate_theta0"]:
        untrusted = smp is not None and not (smp.get("predicted", {}).get(smp["kind"]) or {}
                                             ).get("trusted", True)
        doc.para("**Note:** the sample's fit θ_S has a higher full-data loss than the pilot's "
                 "θ₀" + (" (an estimate: compare the intervals)" if not exact_eval else "")
                 + (f"; s = {smp['size']:,} is below the guard of the distribution used, "
                    "so its predicted error is not to be trusted either" if untrusted else "")
                 + ": raise s, or keep θ₀.")
    if full_note:
        doc.para(full_note + ".")


def _metrics_section(doc: Doc, m: dict) -> None:
    if m.get("mode") == "select":
        _select_section(doc, m)
        return
    doc.heading("Run")
    doc.para(f"One weighted sample of s = {m['s']} rows per kind (seed {m['seed']}), trained on "
             f"alone over ‖θ‖ ≤ {m['radius']}; scores at θ = `{m['theta_source']}`. "
             f"Full-data optimum L(θ*) = {m['loss_opt']:.6g} (sum of squared residuals; "
             f"{math_ref(4)}). Rank: the numerical rank of each score's matrix (– where a "
             "kind has none: uniform).")
    kinds = ordered_kinds(list(m["kinds"]))
    rows, bold = [], set()
    errs = [m["kinds"][k].get("rel_error") for k in kinds]
    finite = [e for e in errs if e is not None]
    best = min(finite) if finite else None
    for i, kind in enumerate(kinds):
        r = m["kinds"][kind]
        if r.get("rel_error") is not None and r["rel_error"] == best:
            bold.add((i, 3))
        rows.append([kind, _num(r.get("rank")), _num(r.get("loss_full")),
                     _num(r.get("rel_error"), ".3e"), _num(r.get("unique_rows"), ","),
                     _num(r.get("max_weight"), ".3g")])
    doc.table(["kind", "rank", "L(θ_S)", "relative error", "unique rows", "max weight"],
              rows, bold)


#: the steps of :func:`write_report`, in order (what its ``listener`` is told)
REPORT_STEPS = ("summary", "sample weights and rows", "experiment", "diagnostics",
                "score histograms",
                "highest and lowest scored rows", "timings", "writing")


def write_report(out_dir: str | Path, top_k: int | None = None,
                 listener: Callable[[str | None, int, int], None] | None = None,
                 on_event: Listener | None = None) -> Path:
    """Write OUT/report.md and OUT/report.html (with PNG plots) from a finished run.

    Parameters
    ----------
    out_dir : str or Path
        A run's output directory: metrics.json and/or experiment.json and/or
        diagnostics.json, scores.zarr, and the dataset they name.
    top_k : int, optional
        Rows shown per kind among the highest/lowest scored (default 10 for tables, 50 for
        images, as in the paper's Fig. 2).
    on_event : callable (Event), optional
        Told each step of :data:`REPORT_STEPS` as it starts, as an
        :class:`nldist.events.Event` ``("report", "steps", done=<steps finished>,
        total=<steps>, detail=<step>)``, and with ``done == total`` and no step at the end:
        a progress bar.
    listener : callable (step, done, total), optional
        The same as ``listener(event.detail, event.done, event.total)`` (the older shape).

    Returns
    -------
    Path of report.md; report.html is written next to it.
    """
    out = as_path(out_dir)
    m = _load_json(out / "metrics.json")
    e = _load_json(out / "experiment.json")
    d = _load_json(out / "diagnostics.json")
    if m is None and e is None and d is None:
        raise NldistError(f"{out} has no metrics.json or experiment.json; run `nldist run` first")
    total = len(REPORT_STEPS)

    tell = [] if on_event is None else [on_event]
    if listener is not None:  # the older shape
        tell.append(lambda ev: listener(ev.detail, ev.done, ev.total))

    def step(i: int) -> None:
        event = Event("report", "steps", total=total, done=i,
                      detail=REPORT_STEPS[i] if i < total else None)
        for f in tell:
            f(event)

    step(0)
    first = m or e or d or {}
    name = first.get("name", out.name)
    doc = Doc(f"nldist report: {name}")
    dataset = as_path(first.get("dataset", out / "dataset.zarr"))
    attrs: dict = {}
    view = None if is_dataset(dataset) else _load_json(out / "table.json")
    if is_dataset(dataset):
        attrs = read_attrs(dataset)
    elif view is not None:  # a Parquet table scored in place: its statistics
        attrs = view.get("attrs", {})
    n = first.get("n_rows", attrs.get("n_rows"))
    p = first.get("n_params")
    doc.para(f"Job **{name}**: model `{first.get('model')}`"
             + (f" (p = {p})" if p else "") + f" on n = {n:,} rows"
             + (f" × d = {attrs['n_features']} features" if "n_features" in attrs else "")
             + f". Output directory `{out.resolve()}`.")
    if attrs:
        facts = [("source", attrs.get("source")), ("source format", attrs.get("format")),
                 ("license", attrs.get("license")),
                 ("fetched by", attrs.get("provenance")), ("task", attrs.get("task")),
                 ("target", attrs.get("target")),
                 ("classes (0, 1)", ", ".join(_label(v, attrs) for v in (0.0, 1.0))
                  if attrs.get("classes") else None),
                 ("standardized", ("features" if attrs.get("standardize") else "")
                  + (" and target" if attrs.get("standardize_target") else "") or "no"),
                 ("dropped rows (missing values)", attrs.get("dropped_rows")),
                 ("image shape", "×".join(map(str, attrs["image_shape"]))
                  if attrs.get("image_shape") else None),
                 ("note", attrs.get("note")), ("chunk rows", attrs.get("chunk_rows"))]
        doc.heading("Dataset")
        doc.table(["field", "value"], [[k, str(v)] for k, v in facts if v not in (None, "")])
    if m is not None:
        _metrics_section(doc, m)
    step(1)
    if m is not None:
        draws = load_draws(out)
        _weights_section(doc, out, draws)
        _sample_section(doc, out, m, attrs, draws)
    step(2)
    if e is not None:
        _experiment_section(doc, e, out)
    step(3)
    if d is not None:
        _diagnostics_section(doc, d, out)
    step(4)
    if plot_scores(out / "scores.zarr", out / "scores.png"):
        doc.heading("Score distributions")
        doc.para("Per kind, the histogram of n·score over all rows (1 = the uniform weight). "
                 "A long right tail means a few rows carry much of the sampling mass.")
        doc.figure(out / "scores.png", "distribution of n·score per kind (log axes)")
    step(5)
    if view is not None:
        doc.heading("Highest and lowest scored rows")
        doc.para("Not shown: the Parquet table was scored in place, with no store to read "
                 "rows from; `nldist.load_sample(OUT)` has the sampled rows, and "
                 "scores.zarr the score of every row.")
    elif is_dataset(dataset):
        main = (m or {}).get("kind", "nonlinear-leverage")
        _extremes_section(doc, out, dataset, attrs,
                          list(dict.fromkeys([main, "nonlinear-leverage", "linear-leverage"])),
                          top_k)
    step(6)
    timings = {"run": (m or {}).get("timings", {}), "experiment": (e or {}).get("timings", {}),
               "diagnostics": (d or {}).get("timings", {})}
    if plot_timings(timings, out / "timings.png"):
        doc.heading("Timings")
        doc.para("Wall-clock seconds per stage (stages reused from an earlier run are absent). "
                 + "; ".join(f"{g} total {t['total']:.1f} s" for g, t in timings.items()
                             if t and "total" in t) + ".")
        doc.figure(out / "timings.png", "seconds per stage")
    version = first.get("nldist_version", "?")
    doc.para(f"Generated by nldist {version} on "
             f"{datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.")
    step(7)
    md = out / "report.md"
    atomic_write(md, doc.markdown(out))
    atomic_write(out / "report.html", doc.html())
    step(total)
    return md
