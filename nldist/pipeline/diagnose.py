"""Label-noise diagnostics on the stages of a run (MATH.md §7): flip a seeded fraction of a
binary target, fit θ* on the noisy labels, rank rows by several scores, report precision@k.

Rankings (highest first): the nonlinear leverage and norm of the dual matrix at θ*, linear
leverage with and without y, and the per-row loss at θ*. The flips are chunking-invariant
(:func:`nldist.scores.sampling.hash_uniform` of the row index).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.pipeline import stages
from nldist.pipeline.context import RunContext
from nldist.scores.spec import make_spec
from nldist.store.dataset import commit_partial, create_partial, read_attrs
from nldist.store.records import write_json
from nldist.store.remote import as_path

log = logging.getLogger("nldist")

#: default cut-offs k of precision@k (those <= n are used, plus the number flipped)
DEFAULT_KS = (10, 25, 50, 100, 250, 500, 1000, 2500)
#: what each ranking is (shown in the report)
RANKINGS = {
    "nonlinear-leverage": "leverage of the dual matrix [F*(θ*), f(0) − y] (sees the labels)",
    "nonlinear-norm": "squared row norm of the same dual matrix",
    "linear-leverage": "leverage of [X, 1]: label-blind, a control (≈ the flip rate)",
    "linear-leverage+y": "leverage of [X, 1, y]: the linear scores that see the labels",
    "loss": "per-row loss r_i(θ*)² at the θ* fitted on the noisy labels",
    "block-leverage": "C outputs: leverage of the Fisher-weighted C×p adjoint block "
                      "(label-free: an 'unusual input' score)",
    "margin-leverage": "C outputs: leverage of the adjoint of the margin log(p_y/(1 − p_y)) "
                       "(sees the labels)",
}
#: what is ranked for a binary model and for a C-class one (block kinds need C outputs; the
#: linear scores with y appended need a scalar label)
BINARY_KINDS = ("nonlinear-leverage", "nonlinear-norm", "linear-leverage")
CLASS_KINDS = ("nonlinear-leverage", "block-leverage", "margin-leverage", "linear-leverage")


def write_noisy_dataset(src: str | Path, out: str | Path, fraction: float, seed: int = 0,
                        n_classes: int = 2) -> dict:
    """Copy a Zarr dataset of class labels (binary, or 0..C−1 with ``n_classes`` = C) with
    a random ``fraction`` of its labels flipped (to another class, uniformly).

    Writes X (same chunks), the noisy y, ``flipped`` (n,) int8 and attrs (those of ``src``
    plus ``flip_fraction``, ``flip_seed``, ``n_flipped``), atomically (``OUT.partial``).

    Returns
    -------
    dict of the flip facts (``n_rows``, ``n_flipped``, ``flip_fraction``, ``flip_seed``).
    """
    if not 0.0 < fraction < 0.5:
        raise NldistError(f"flip fraction must be in (0, 0.5), got {fraction}; e.g. --flip 0.1")
    src, out = as_path(src), as_path(out)
    X, y = graph.inputs.open_zarr_xy(src)
    if y is None:
        raise NldistError(f"dataset {src} has no y; ingest it with a binary target")
    attrs = read_attrs(src)
    cr = int(X.chunks[0][0])
    _, arrays = create_partial(out, {"X": (X.shape, (cr, X.shape[1]), X.dtype),
                                     "y": (y.shape, (cr,), y.dtype),
                                     "flipped": (y.shape, (cr,), "int8")})
    n_flipped = graph.reports.write_flipped(X, y, fraction, seed,
                                    (arrays["X"], arrays["y"], arrays["flipped"]), n_classes)
    facts = {"n_rows": int(y.shape[0]), "n_flipped": n_flipped, "flip_fraction": fraction,
             "flip_seed": seed}
    commit_partial(out, {**attrs, **facts, "flipped_from": str(src)})
    return facts


def diagnose(job: Any, out: str | Path, fraction: float = 0.1, seed: int = 0,
             ks: list[int] | None = None, listener: Any = None, force: bool = False) -> dict:
    """Flip labels, fit θ* on the noisy data, rank rows, report precision@k (diagnostics.json).

    Parameters
    ----------
    job : JobConfig
        A job on a binary classification dataset (``dataset.classes`` or a 0/1 target),
        or a C-class model (``softmax:C``, ``mlp:...:C``, a C-output ``torch:`` module; loss
        cross_entropy) on labels 0..C−1: flips then go to one of the other classes, and
        the C-output kinds (block-, margin-, nonlinear-leverage of √CE) are ranked.
    out : str or Path
        Output directory: ``dataset.zarr`` (clean), ``noisy.zarr``, ``scores.zarr``,
        ``theta_star.npz`` and ``diagnostics.json``.
    fraction : float
        Fraction of labels flipped, in (0, 0.5).
    seed : int
        Seed of the flips (the job's seed drives nothing here).
    ks : list of int, optional
        Cut-offs k (default 10 … 2500 and the number of flipped rows, those ≤ n).
    listener : callable, optional
        Subscribed to the progress events of both contexts (clean and noisy data).
    force : bool
        Replace the outputs of another job in ``out`` (:func:`stages.outputs.claim`).

    Returns
    -------
    dict written to OUT/diagnostics.json.
    """
    t0 = time.perf_counter()
    clean = RunContext(job, out)
    if listener is not None:
        clean.subscribe(listener)
    out = clean.out
    stages.outputs.claim(clean, "diagnose", force)
    if stages.data.in_place(clean):
        raise NldistError("diagnose writes a label-flipped copy of the dataset, which needs "
                          "an ingested Zarr store; drop dataset.format: parquet")
    src = stages.data.ingest(clean)
    noisy_path = out / "noisy.zarr"
    C = int(stages.data.model(clean).n_outputs)
    with clean.timed("flip"):
        facts = write_noisy_dataset(src, noisy_path, fraction, seed, max(2, C))
    noisy_job = job.model_copy(update={"dataset": job.dataset.model_copy(
        update={"source": str(noisy_path.resolve())})})
    ctx = RunContext(noisy_job, out)
    if listener is not None:
        ctx.subscribe(listener)
    stages.data.ingest(ctx)  # the noisy store in place: its fingerprint keys theta* and scores
    X, y = stages.data.xy(ctx)
    theta, star = stages.theta.optimum(ctx)
    flipped = graph.memory.open_array(noisy_path, "flipped", X.chunks[0])
    n = int(X.shape[0])
    ks = sorted({int(k) for k in (ks or [*DEFAULT_KS, facts["n_flipped"]]) if 0 < int(k) <= n})
    if not ks:
        raise NldistError(f"no cut-off k in 1..{n}; pass --k values up to the number of rows")
    rankings: dict[str, Any] = {}
    for kind in (CLASS_KINDS if C > 1 else BINARY_KINDS):
        rankings[kind], _ = stages.scoring.scores(ctx, kind, theta)
    m = stages.data.model(ctx)
    if C == 1:
        with ctx.timed("score", kind="linear-leverage+y", key="score:linear-leverage+y"):
            spec = make_spec("linear-leverage", m, None, X.shape[1], True, True)
            norm = graph.passes.pass1(X, y, spec, split_every=job.split_every)
            rankings["linear-leverage+y"] = graph.passes.pass2(X, y, spec, norm)
    rankings["loss"] = graph.reports.row_losses(X, y, m, theta, job.loss)
    precision, recall = {}, {}
    with ctx.timed("rank"):
        for name, sc in rankings.items():
            precision[name], recall[name] = graph.reports.precision_at_k(sc, flipped, ks)
    timings = dict(clean.timings)
    for k, v in ctx.timings.items():
        timings[k] = timings.get(k, 0.0) + v
    timings["total"] = time.perf_counter() - t0
    result = {
        "name": job.name, "dataset": str(noisy_path.resolve()), "clean_dataset": str(src),
        "model": job.model, "loss": job.loss, "radius": job.radius, "n_rows": n,
        "n_classes": max(2, C),
        "n_params": m.n_params, "flip_fraction": fraction, "seed": seed,
        "n_flipped": facts["n_flipped"], "base_rate": facts["n_flipped"] / n,
        "theta_norm": float(np.linalg.norm(theta)), "theta_star": star, "ks": ks,
        "precision": precision, "recall": recall,
        "descriptions": {k: RANKINGS[k] for k in precision},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "nldist_version": __version__,
    }
    write_json(out / "diagnostics.json", result)
    stages.outputs.complete(clean)
    log.info("diagnostics written to %s", out / "diagnostics.json")
    return result
