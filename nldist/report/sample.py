"""The sample itself: the importance weights of each stored draw with Kish's effective
sample size, the heaviest-weighted sampled rows (``sample.parquet``) in a table, and
n·score against |residual| of the sampled rows.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist.models import get_model
from nldist.models.coded import Codes
from nldist.report.doc import Doc, kind_color, math_ref, open_scores, ordered_kinds, pyplot, savefig
from nldist.report.units import class_label, decode_columns, original_units
from nldist.store.remote import as_path
from nldist.store.sample_table import read_sample_table

# --------------------------------------------------------------------------------------
# The sample itself: weights (Kish ESS), the sampled rows, score vs |residual|
# --------------------------------------------------------------------------------------

#: rows of the sampled-rows table (the heaviest weights) and feature columns shown in it
SAMPLE_TABLE_ROWS = 20
SAMPLE_TABLE_FEATURES = 8


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
    plt = pyplot()

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
    savefig(fig, path)
    return path


def weights_section(doc: Doc, out: Path, draws: list[Draws]) -> None:
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
    arrays = open_scores(out / "scores.zarr") if (out / "scores.zarr").exists() else {}
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
    plt = pyplot()
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
    savefig(fig, path)
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
               class_label(None if yo is None else yo[r], attrs) if yo is not None else "–",
               *[c[r] for c in cols], *([""] if more else [])]
        out.append(row)
    return header, out, rows_idx[order]


def sample_section(doc: Doc, out: Path, m: dict, attrs: dict, draws: list[Draws]) -> None:
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
