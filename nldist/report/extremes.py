"""The highest- and lowest-scored rows of each kind, found by a distributed top-k (only the
k rows reach the driver): tables of feature values for tabular data, image grids for
images (the paper's Fig. 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist.report.doc import MAX_TABLE_FEATURES, Doc, math_ref, open_scores, pyplot, savefig
from nldist.report.units import class_label, decode_columns, original_units
from nldist.store.dataset import open_member
from nldist.store.scores import path_name

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
        lab = class_label(None if yo is None else yo[r], attrs) if yo is not None else ""
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

    plt = pyplot()
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
    savefig(fig, path)
    return path


def extremes_section(doc: Doc, out: Path, dataset: Path, attrs: dict, kinds: list[str],
                      k: int | None) -> None:
    arrays = open_scores(out / "scores.zarr")
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
                titles = [f"{class_label(None if yo is None else yo[i], attrs).split('/')[0][:8]} "
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
