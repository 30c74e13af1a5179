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
* ``timings.png``: seconds per stage;
* ``report.md`` (links the PNGs) and ``report.html`` (the same content, PNGs inlined as
  base64, inline CSS: one file that opens anywhere, no network).
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
from nldist.store.dataset import is_dataset, open_arrays, open_member, read_attrs
from nldist.store.records import atomic_write
from nldist.store.remote import as_path, write_bytes_atomic
from nldist.store.scores import path_name

KIND_ORDER = ("nonlinear-leverage", "nonlinear-norm", "linear-leverage", "linear-norm",
              "linear-leverage+y", "ridge-leverage", "pilot", "uniform")
_COLORS = {"nonlinear-leverage": "#1f77b4", "nonlinear-norm": "#ff7f0e",
           "linear-leverage": "#2ca02c", "linear-norm": "#d62728", "uniform": "#9467bd",
           "ridge-leverage": "#8c564b", "pilot": "#e377c2", "loss": "#7f7f7f",
           "linear-leverage+y": "#bcbd22", "random": "#17becf"}
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

    stats, edges, counts = graph.score_histograms(arrays, bins)
    nk = len(arrays)
    ncols = 2 if nk > 1 else 1
    nrows = math.ceil(nk / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols / 1.4 + 1.0, 2.6 * nrows + 0.4),
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
        extra = f", rank {rank}" if rank is not None else ""
        extra += f", {zeros:,} rows at 0" if zeros else ""
        ax.set_title(f"{kind}{extra}; max n·score {float(stats[kind][1]):.3g}", fontsize=9)
        ax.grid(True, which="both", alpha=0.25)
        ax.set_ylabel("rows")
    for ax in axes.ravel()[nk:]:
        ax.set_visible(False)
    for ax in axes[-1]:
        ax.set_xlabel("n · score   (1 = uniform, dashed)")
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
    ti, tv, bi, bv = graph.top_bottom(scores, k)
    X, y = graph.open_zarr_xy(dataset)
    Xt, yt = graph.gather_rows(X, y, ti)
    Xb, yb = graph.gather_rows(X, y, bi)
    ext = Extremes(kind, ti, tv, bi, bv, Xt, yt, Xb, yb)
    flipped = open_member(dataset, "flipped")
    if flipped is not None:
        ext.flipped_top = graph.take(flipped, ti)
        ext.flipped_bottom = graph.take(flipped, bi)
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
    """Feature columns for display: one-hot groups folded back into their categories.

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
             "rows; low marks the easy, redundant ones (MATH.md §7)."
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


def _select_section(doc: Doc, m: dict) -> None:
    """The practical path: the sample's model, its estimated loss and what it cost."""
    doc.heading("Selection (the practical path)")
    r = m["kinds"][m["kind"]]
    pil = m.get("pilot") or {}
    ev = m["evaluation"]
    c = m["cost"]
    lo, hi = r["loss_ci95"]
    doc.para(f"θ₀ from a pilot of {pil.get('rows', '–')} rows ({pil.get('from', m['theta_source'])}"
             f"{': ' + pil['note'] if pil.get('note') else ''}); `{m['kind']}` scores at θ₀; "
             f"one weighted sample of s = {m['s']} rows (seed {m['seed']}) drawn in the same "
             f"read of X as pass 2; trained on alone over ‖θ‖ ≤ {m['radius']} from θ₀. "
             f"Its full-data loss is estimated from {ev['rows']:,} evaluation rows "
             f"({ev['method']}).")
    full = m.get("full_fit") or {}
    est, meas = full.get("estimated") or {}, full.get("measured")
    rows = [["full-data loss L(θ_S)", f"{r['loss_estimate']:.6g} (95% CI {lo:.6g} … {hi:.6g})",
             f"{r['loss_full']:.6g} (exact)" if r.get("loss_full") is not None else "–"],
            ["L(θ₀) of the pilot", f"{r['loss_estimate_theta0']:.6g}",
             f"{r['loss_full_theta0']:.6g}" if r.get("loss_full_theta0") is not None else "–"],
            ["relative error", "–", f"{r['rel_error']:.3e}" if r.get("rel_error") is not None
             else "–"],
            ["wall time", f"{c['wall_s']:.1f} s", f"{meas['seconds']:.1f} s (θ* measured)" if meas
             else (f"≈ {est['seconds']:.1f} s (θ* estimated)" if est else "–")],
            ["passes over X", f"{c['passes_over_x']:.2f}",
             f"{meas['passes_over_x']:.0f}" if meas else
             (f"≈ {est['passes_over_x']}" if est else "–")]]
    doc.table(["", "sampling path", "full data"], rows)


def _metrics_section(doc: Doc, m: dict) -> None:
    if m.get("mode") == "select":
        _select_section(doc, m)
        return
    doc.heading("Run")
    doc.para(f"One weighted sample of s = {m['s']} rows per kind (seed {m['seed']}), trained on "
             f"alone over ‖θ‖ ≤ {m['radius']}; scores at θ = `{m['theta_source']}`. "
             f"Full-data optimum L(θ*) = {m['loss_opt']:.6g} (sum of squared residuals).")
    kinds = ordered_kinds(list(m["kinds"]))
    rows, bold = [], set()
    errs = [m["kinds"][k].get("rel_error") for k in kinds]
    finite = [e for e in errs if e is not None]
    best = min(finite) if finite else None
    for i, kind in enumerate(kinds):
        r = m["kinds"][kind]
        if r.get("rel_error") is not None and r["rel_error"] == best:
            bold.add((i, 3))
        rows.append([kind, str(r.get("rank")), f"{r['loss_full']:.6g}",
                     f"{r['rel_error']:.3e}" if r.get("rel_error") is not None else "–",
                     str(r.get("unique_rows", "")), f"{r.get('max_weight', float('nan')):.3g}"])
    doc.table(["kind", "rank", "L(θ_S)", "relative error", "unique rows", "max weight"],
              rows, bold)


#: the steps of :func:`write_report`, in order (what its ``listener`` is told)
REPORT_STEPS = ("summary", "experiment", "diagnostics", "score histograms",
                "highest and lowest scored rows", "timings", "writing")


def write_report(out_dir: str | Path, top_k: int | None = None,
                 listener: Callable[[str | None, int, int], None] | None = None) -> Path:
    """Write OUT/report.md and OUT/report.html (with PNG plots) from a finished run.

    Parameters
    ----------
    out_dir : str or Path
        A run's output directory: metrics.json and/or experiment.json and/or
        diagnostics.json, scores.zarr, and the dataset they name.
    top_k : int, optional
        Rows shown per kind among the highest/lowest scored (default 10 for tables, 50 for
        images, as in the paper's Fig. 2).
    listener : callable (step, done, total), optional
        Told each step of :data:`REPORT_STEPS` as it starts (``done`` steps finished of
        ``total``), and ``(None, total, total)`` at the end: a progress bar.

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

    def step(i: int) -> None:
        if listener is not None:
            listener(REPORT_STEPS[i] if i < total else None, i, total)

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
    if e is not None:
        _experiment_section(doc, e, out)
    step(2)
    if d is not None:
        _diagnostics_section(doc, d, out)
    step(3)
    if plot_scores(out / "scores.zarr", out / "scores.png"):
        doc.heading("Score distributions")
        doc.para("Per kind, the histogram of n·score over all rows (1 = the uniform weight). "
                 "A long right tail means a few rows carry much of the sampling mass.")
        doc.figure(out / "scores.png", "distribution of n·score per kind (log axes)")
    step(4)
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
    step(5)
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
    step(6)
    md = out / "report.md"
    atomic_write(md, doc.markdown(out))
    atomic_write(out / "report.html", doc.html())
    step(total)
    return md
