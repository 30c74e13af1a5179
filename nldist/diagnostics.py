"""Diagnostics: do high nonlinear-leverage rows point at mislabeled data?

MATH.md §7: the rows with the highest nonlinear leverage are the unusual, hard or
mislabeled ones. :func:`diagnose` measures it on a real binary classification set: it flips
a known fraction of the labels at random, fits θ* on the noisy labels, ranks the rows by
several scores and reports precision@k — the fraction of truly flipped rows among the k
highest-ranked — for

* ``nonlinear-leverage`` / ``nonlinear-norm``: of the dual matrix ``[F*(θ*), f(0) − y]``,
  which sees the labels through its last column;
* ``linear-leverage``: of ``[X, 1]``, blind to the labels (a control: ≈ the flip rate);
* ``linear-leverage+y``: of ``[X, 1, y]``, the linear scores that see the labels;
* ``loss``: the per-row loss ``r_i(θ*)²`` (the usual "largest residual" heuristic).

Everything runs as Dask passes over the Zarr chunks: the labels are flipped per chunk by a
counter-based hash of (seed, row index), so the same rows flip for any chunking; rankings
are cut to their top k by ``dask.array.argtopk``; only k indices and k flags reach the
driver.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np

from nldist import __version__, graph
from nldist.errors import NldistError

log = logging.getLogger("nldist")

DEFAULT_KS = (10, 25, 50, 100, 250, 500, 1000, 2500)
RANKINGS = {
    "nonlinear-leverage": "leverage of the dual matrix [F*(θ*), f(0) − y] (sees the labels)",
    "nonlinear-norm": "squared row norm of the same dual matrix",
    "linear-leverage": "leverage of [X, 1]: label-blind, a control (≈ the flip rate)",
    "linear-leverage+y": "leverage of [X, 1, y]: the linear scores that see the labels",
    "loss": "per-row loss r_i(θ*)² at the θ* fitted on the noisy labels",
}

_M1, _M2, _GOLD = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB), \
    np.uint64(0x9E3779B97F4A7C15)


def hash_uniform(index: np.ndarray, seed: int) -> np.ndarray:
    """Uniforms in [0, 1) from (seed, row index) by SplitMix64: chunking-invariant.

    Parameters
    ----------
    index : ndarray of int
        Global row indices.
    seed : int
        Non-negative seed.
    """
    with np.errstate(over="ignore"):
        z = np.asarray(index, dtype=np.uint64) + np.uint64(seed) * _GOLD + _GOLD
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


def _flip_block(y: np.ndarray, fraction: float, seed: int, block_info: Any = None
                ) -> np.ndarray:
    start = block_info[0]["array-location"][0][0] if block_info else 0
    idx = np.arange(start, start + y.shape[0])
    flip = hash_uniform(idx, seed) < fraction
    yy = np.asarray(y, dtype=np.float64)
    bad = ~np.isin(yy, (0.0, 1.0))
    if bad.any():
        raise NldistError(f"label diagnostics need a binary target with y in {{0, 1}}; row "
                          f"{start + int(np.flatnonzero(bad)[0])} has y = {yy[bad][0]}; set "
                          "dataset.classes: [A, B]")
    return np.stack([np.where(flip, 1.0 - yy, yy), flip.astype(np.float64)], axis=1)


def write_noisy_dataset(src: str | Path, out: str | Path, fraction: float, seed: int = 0
                        ) -> dict:
    """Copy a binary-label Zarr dataset with a random ``fraction`` of its labels flipped.

    Writes X (same chunks), the noisy y, ``flipped`` (n,) int8 and attrs (those of ``src``
    plus ``flip_fraction``, ``flip_seed``, ``n_flipped``), atomically (``OUT.partial``).

    Returns
    -------
    dict of the flip facts (``n_rows``, ``n_flipped``, ``flip_fraction``, ``flip_seed``).
    """
    import zarr

    if not 0.0 < fraction < 0.5:
        raise NldistError(f"flip fraction must be in (0, 0.5), got {fraction}; e.g. --flip 0.1")
    src, out = Path(src), Path(out)
    X, y = graph.open_zarr_xy(src)
    if y is None:
        raise NldistError(f"dataset {src} has no y; ingest it with a binary target")
    attrs = dict(zarr.open_group(str(src), mode="r").attrs)
    both = da.map_blocks(_flip_block, y, fraction, seed, dtype=np.float64,
                         chunks=(y.chunks[0], (2,)), new_axis=1)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    cr = int(X.chunks[0][0])
    ax = g.create_array("X", shape=X.shape, chunks=(cr, X.shape[1]), dtype=X.dtype)
    ay = g.create_array("y", shape=y.shape, chunks=(cr,), dtype=y.dtype)
    af = g.create_array("flipped", shape=y.shape, chunks=(cr,), dtype="int8")
    da.store([X, both[:, 0].astype(y.dtype), both[:, 1].astype("int8")], [ax, ay, af],
             lock=False)
    n_flipped = int(da.from_zarr(af).sum().compute())
    facts = {"n_rows": int(y.shape[0]), "n_flipped": n_flipped, "flip_fraction": fraction,
             "flip_seed": seed}
    g.attrs.update({**attrs, **facts, "flipped_from": str(src)})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return facts


def row_losses(X: da.Array, y: da.Array, model: Any, theta: np.ndarray, loss: str = "squared"
               ) -> da.Array:
    """Per-row loss r_i(θ)² (n,), lazy, chunked like X."""
    from nldist.models.losses import get_loss

    lo = get_loss(loss)

    def block(xb: np.ndarray, yb: np.ndarray) -> np.ndarray:
        r = lo.residual(model.predict(theta, xb), yb)
        return np.asarray(r, dtype=np.float64) ** 2

    return da.blockwise(block, "i", X, "ij", y, "i", dtype=np.float64, concatenate=True)


def precision_at_k(scores: da.Array, flipped: da.Array, ks: list[int]) -> tuple[list[float],
                                                                                list[float]]:
    """Precision@k and recall@k of ranking rows by ``scores`` (highest first).

    One distributed top-k for the largest k; then only those k flags are read.
    """
    kmax = int(min(max(ks), scores.shape[0]))
    if kmax == scores.shape[0]:
        scores = scores.rechunk(-1)  # dask's argtopk fails for k == n over several chunks
    idx = np.asarray(da.argtopk(scores, kmax).compute())
    order = np.argsort(idx)
    hits = np.empty(kmax, dtype=np.float64)
    hits[order] = np.asarray(flipped[idx[order]].compute(), dtype=np.float64)
    csum = np.cumsum(hits)
    total = float(flipped.sum().compute())
    prec = [float(csum[min(k, kmax) - 1] / min(k, kmax)) for k in ks]
    rec = [float(csum[min(k, kmax) - 1] / total) if total else 0.0 for k in ks]
    return prec, rec


def diagnose(job: Any, out: str | Path, fraction: float = 0.1, seed: int = 0,
             ks: list[int] | None = None) -> dict:
    """Flip labels, fit θ* on the noisy data, rank rows, report precision@k (diagnostics.json).

    Parameters
    ----------
    job : JobConfig
        A job on a binary classification dataset (``dataset.classes`` or a 0/1 target).
    out : str or Path
        Output directory: ``dataset.zarr`` (clean), ``noisy.zarr``, ``scores.zarr``,
        ``theta_star.npz`` and ``diagnostics.json``.
    fraction : float
        Fraction of labels flipped, in (0, 0.5).
    seed : int
        Seed of the flips (the job's seed drives nothing here).
    ks : list of int, optional
        Cut-offs k (default 10 … 2500 and the number of flipped rows, those ≤ n).

    Returns
    -------
    dict written to OUT/diagnostics.json.
    """
    from nldist.pipeline import Runner
    from nldist.store.records import write_json as _write_json

    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    clean = Runner(job, out)
    with _timed(timings, "ingest"):
        src = clean.ingest()
    noisy_path = out / "noisy.zarr"
    with _timed(timings, "flip"):
        facts = write_noisy_dataset(src, noisy_path, fraction, seed)
    noisy_job = job.model_copy(update={"dataset": job.dataset.model_copy(
        update={"source": str(noisy_path.resolve())})})
    runner = Runner(noisy_job, out)
    X, y = runner.xy()
    theta, star = runner.optimum()
    flipped = da.from_zarr(str(noisy_path), component="flipped").rechunk((X.chunks[0],))
    n = int(X.shape[0])
    ks = sorted({int(k) for k in (ks or [*DEFAULT_KS, facts["n_flipped"]]) if 0 < int(k) <= n})
    if not ks:
        raise NldistError(f"no cut-off k in 1..{n}; pass --k values up to the number of rows")
    rankings: dict[str, da.Array] = {}
    for kind in ("nonlinear-leverage", "nonlinear-norm", "linear-leverage"):
        rankings[kind], _ = runner.scores(kind, theta)
    with _timed(timings, "score:linear-leverage+y"):
        from nldist.scores.spec import make_spec

        spec = make_spec("linear-leverage", runner.model, None, X.shape[1], True, True)
        norm = graph.pass1(X, y, spec, split_every=job.split_every)
        rankings["linear-leverage+y"] = graph.pass2(X, y, spec, norm)
    rankings["loss"] = row_losses(X, y, runner.model, theta, job.loss)
    precision, recall = {}, {}
    with _timed(timings, "rank"):
        for name, sc in rankings.items():
            precision[name], recall[name] = precision_at_k(sc, flipped, ks)
    for k, v in runner.timings.items():
        timings[k] = timings.get(k, 0.0) + v
    timings["total"] = time.perf_counter() - t0
    result = {
        "name": job.name, "dataset": str(noisy_path.resolve()), "clean_dataset": str(src),
        "model": job.model, "loss": job.loss, "radius": job.radius, "n_rows": n,
        "n_params": runner.model.n_params, "flip_fraction": fraction, "seed": seed,
        "n_flipped": facts["n_flipped"], "base_rate": facts["n_flipped"] / n,
        "theta_norm": float(np.linalg.norm(theta)), "theta_star": star, "ks": ks,
        "precision": precision, "recall": recall,
        "descriptions": {k: RANKINGS[k] for k in precision},
        "timings": {k: round(v, 4) for k, v in timings.items()},
        "nldist_version": __version__,
    }
    _write_json(out / "diagnostics.json", result)
    log.info("diagnostics written to %s", out / "diagnostics.json")
    return result


class _timed:
    def __init__(self, timings: dict[str, float], stage: str) -> None:
        self.timings, self.stage = timings, stage

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timings[self.stage] = self.timings.get(self.stage, 0.0) + \
            time.perf_counter() - self.t0


__all__ = ["diagnose", "hash_uniform", "precision_at_k", "row_losses", "write_noisy_dataset"]
