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

The package, one module per part of the page:

* :mod:`~nldist.report.doc`: the document model (Markdown and self-contained HTML), the
  kinds' colours and order, figure saving, citations of MATH.md, the scores store;
* :mod:`~nldist.report.units`: rows back in the dataset's own units (de-standardised
  features, decoded categorical columns, class labels);
* :mod:`~nldist.report.plots`: relative error vs s, score distributions, diagnostics, timings;
* :mod:`~nldist.report.extremes`: the highest- and lowest-scored rows (tables, image grids);
* :mod:`~nldist.report.sample`: the sample itself (weights, Kish ESS, sampled rows, n·score
  against |residual|);
* this ``__init__``: the summary sections (metrics, ``select``) and :func:`write_report`,
  which assembles the page.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nldist.errors import NldistError
from nldist.events import Event, Listener
from nldist.report.doc import Doc, math_ref, ordered_kinds
from nldist.report.extremes import extremes_section
from nldist.report.plots import (
    diagnostics_section,
    experiment_section,
    experiment_table,
    plot_experiment,
    plot_scores,
    plot_timings,
)
from nldist.report.sample import (
    SAMPLE_TABLE_ROWS,
    kish_ess,
    load_draws,
    sample_section,
    weights_section,
)
from nldist.report.units import class_label, decode_columns, original_units
from nldist.store.dataset import is_dataset, read_attrs
from nldist.store.records import atomic_write
from nldist.store.remote import as_path

#: the report's public names (the pieces live in the modules listed above)
__all__ = ["REPORT_STEPS", "SAMPLE_TABLE_ROWS", "Doc", "decode_columns", "experiment_table",
           "full_fit_text", "kish_ess", "original_units", "plot_experiment", "plot_scores",
           "write_report"]

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
                 ("classes (0, 1)", ", ".join(class_label(v, attrs) for v in (0.0, 1.0))
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
        weights_section(doc, out, draws)
        sample_section(doc, out, m, attrs, draws)
    step(2)
    if e is not None:
        experiment_section(doc, e, out)
    step(3)
    if d is not None:
        diagnostics_section(doc, d, out)
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
        extremes_section(doc, out, dataset, attrs,
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
