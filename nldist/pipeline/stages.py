"""The stages of a job, one function each, over a :class:`~nldist.pipeline.context.RunContext`.

Every stage that writes an output declares the job fields its output depends on in
:data:`KEYS`; the output is reused by a later run only when the digest of those fields
(and, for scores, the digest of theta and the chunking) matches what was recorded with it
(:mod:`nldist.store`). Stages do no numerics themselves: they call :mod:`nldist.graph`
(distributed passes), :mod:`nldist.train` (single-node training) and the stores.

=================  ==================================================  ====================
stage              output                                               reused when
=================  ==================================================  ====================
:func:`ingest`     ``OUT/dataset.zarr`` (or the source Zarr itself)     KEYS["ingest"]
:func:`optimum`    ``OUT/theta_star.npz`` (full-data theta*)            KEYS["optimum"]
:func:`pilot`      ``OUT/theta_pilot.npz`` (theta_0 of a uniform pilot)  KEYS["pilot"]
:func:`scores`     ``OUT/scores.zarr/<kind>`` chunk by chunk            provenance + chunks
:func:`draw`       the sample's indices and weights                     (recomputed: cheap)
:func:`fit_draws`  theta per draw (the shared draw -> gather -> fit loop of run and
                   experiment)
:func:`evaluate`   full-data losses of several theta in one pass
=================  ==================================================  ====================
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist import ingest as ingest_mod
from nldist._budget import cache_budget
from nldist._checks import as_rng
from nldist._version import __version__
from nldist.errors import NldistError
from nldist.models import get_model
from nldist.models.base import Model
from nldist.models.glm import swish_ratio
from nldist.pipeline.context import RunContext
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import RFactor
from nldist.scores.reductions import Normalizer
from nldist.scores.spec import ScoreSpec, make_spec
from nldist.store import dual_blocks, stage_cache
from nldist.store.dataset import fingerprint, is_dataset, read_attrs, write_dataset
from nldist.store.records import array_digest, digest, write_json
from nldist.store.scores import ChunkedScores
from nldist.train import FitResult, fit_ball, train_on_sample

log = logging.getLogger("nldist")

#: job fields each cached stage output depends on (its cache key is their digest)
KEYS: dict[str, tuple[str, ...]] = {
    "ingest": ("dataset",),
    "optimum": ("dataset", "model", "radius", "tol", "max_iter", "loss"),
    "pilot": ("dataset", "model", "radius", "tol", "max_iter", "loss", "pilot_s", "seed"),
    "dual_blocks": ("adjoint",),
}
#: the dataclasses a stored pass-1 result may hold (nothing else is ever constructed)
PASS1_CLASSES = {"Normalizer": Normalizer, "RFactor": RFactor}


def fit_info(fit: FitResult) -> dict:
    """The JSON summary of a training."""
    return {"loss": fit.loss, "iterations": fit.iterations, "converged": bool(fit.converged),
            "oracle_calls": fit.oracle_calls, "theta_norm": float(np.linalg.norm(fit.theta))}


# --------------------------------------------------------------------------------------
# dataset, data, model
# --------------------------------------------------------------------------------------


def dataset_fingerprint(path: Path) -> str:
    """The content fingerprint of a dataset store (:func:`nldist.store.dataset.fingerprint`),
    with a one-line error when it cannot be read."""
    try:
        return fingerprint(path)
    except (OSError, ValueError) as exc:
        raise NldistError(f"cannot read dataset {path} ({type(exc).__name__}: {exc}); "
                          "re-ingest it") from None


def data_key(ctx: RunContext, *fields: str) -> str:
    """:meth:`RunContext.key` with the dataset's fingerprint taken first if no stage has
    (a context that did not run :func:`ingest` keys its outputs the same way)."""
    if ctx.dataset_fp is None and "dataset" in fields:
        path = dataset_path(ctx)
        if path.exists():
            ctx.dataset_fp = dataset_fingerprint(path)
    return ctx.key(*fields)


def dataset_path(ctx: RunContext) -> Path:
    """The Zarr dataset: the source itself when it is one, else OUT/dataset.zarr."""
    src = Path(ctx.job.dataset.source)
    return src if is_dataset(src) else ctx.out / "dataset.zarr"


def ingest(ctx: RunContext) -> Path:
    """Ingest the source into OUT/dataset.zarr unless one made from the same source content
    with the same settings is there; sets the context's dataset fingerprint.

    The key is the digest of the job's ``dataset`` settings and the source's fingerprint
    (:func:`nldist.ingest.source_fingerprint`: a file's size, mtime and SHA-256, a packaged
    dataset's pinned package); a Zarr source used in place is fingerprinted by
    :func:`nldist.store.dataset.fingerprint` (its recorded content hash and a stat digest of
    its files), so an edited source invalidates every stage that depends on the data.
    """
    path = dataset_path(ctx)
    ds = ctx.job.dataset
    if path != ctx.out / "dataset.zarr":
        ctx.dataset_fp = dataset_fingerprint(path)
        return path
    key = digest({"settings": ctx.job.digest(*KEYS["ingest"]),
                  "source": ingest_mod.source_fingerprint(ds.source)}, 16)
    if path.exists():
        if read_attrs(path).get("ingest_key") == key:
            ctx.dataset_fp = dataset_fingerprint(path)
            ctx.note("ingest", True)
            return path
        shutil.rmtree(path)
        ctx.note("ingest", False, "source or settings changed")
    with ctx.timed("ingest"):
        df, meta = ingest_mod.read_source(ds.source, ds.target)
        X, y, attrs = ingest_mod.prepare(
            df, meta["target"], features=ds.features, classes=ds.classes, dropna=ds.dropna,
            standardize=ds.standardize, standardize_target=ds.standardize_target,
            dtype=ds.dtype,
        )
        attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
        attrs["ingest_key"] = key
        ctx.out.mkdir(parents=True, exist_ok=True)
        write_dataset(path, X, y, attrs, chunk_rows=ds.chunk_rows, overwrite=True)
    ctx.dataset_fp = dataset_fingerprint(path)
    return path


def _cached(ctx: RunContext, stage: str, npz: Path, key: str, pick: Any) -> Any:
    """This run's result of a cached stage, else ``pick(arrays)`` of its cache file with this
    key (noted as reused), else None (noted as recomputed when a stale file was there)."""
    if key in ctx.memo:
        return ctx.memo[key]
    hit = stage_cache.load(npz, key)
    if hit is not None:
        ctx.note(stage, True)
        ctx.memo[key] = pick(hit)
        return ctx.memo[key]
    if npz.exists():
        ctx.note(stage, False, "inputs changed")
    return None


def open_xy(ctx: RunContext) -> tuple[Any, Any]:
    """Lazy X, y of the dataset (not cached; cheap: metadata only)."""
    X, y = graph.open_zarr_xy(dataset_path(ctx))
    if y is None:
        raise NldistError(f"dataset {dataset_path(ctx)} has no y; ingest with a target")
    return graph.as_dask_xy(X, y)


def xy(ctx: RunContext) -> tuple[Any, Any]:
    """X, y for the passes: kept in worker memory per ``job.cache_x`` on first use."""
    if ctx.xy_cache is None:
        ctx.xy_cache = _cache(ctx, *open_xy(ctx))
    return ctx.xy_cache


def _cache(ctx: RunContext, X: Any, y: Any) -> tuple[Any, Any]:
    mode = ctx.job.cache_x
    if mode == "never":
        return X, y
    nbytes = int(X.nbytes + y.nbytes)
    c = graph.current_client()
    budget = cache_budget(graph.worker_memory_limits(c))
    if mode == "auto" and (budget is None or nbytes > budget):
        log.info("X not cached in worker memory (%.0f MiB; budget %s)", nbytes / 2**20,
                 "none without a distributed client" if budget is None
                 else f"{budget / 2**20:.0f} MiB")
        return X, y
    with ctx.timed("cache"):
        X, y = graph.persist_xy(X, y, c)
    log.info("X and y cached in worker memory (%.0f MiB, one read of the store)",
             nbytes / 2**20)
    ctx.cached_x = True
    return X, y


def model(ctx: RunContext) -> Model:
    """The job's model for the dataset's d (with the job's adjoint options)."""
    if ctx.model_cache is None:
        X, _ = ctx.xy_cache or open_xy(ctx)
        m = get_model(ctx.job.model, X.shape[1])
        if ctx.job.adjoint is not None:
            m.configure(**ctx.job.adjoint.model_dump())
        ctx.model_cache = m
    return ctx.model_cache


# --------------------------------------------------------------------------------------
# theta: full-data optimum, pilot, or given
# --------------------------------------------------------------------------------------


def optimum(ctx: RunContext) -> tuple[np.ndarray, dict]:
    """Full-data theta* over the ball (distributed Gauss-Newton passes), cached."""
    key = data_key(ctx, *KEYS["optimum"])
    npz = ctx.path("theta_star.npz")
    got = _cached(ctx, "theta*", npz, key, lambda z: (z["theta"], z["info"]))
    if got is not None:
        return got
    X, y = xy(ctx)
    m = model(ctx)
    job = ctx.job
    with ctx.timed("optimum"):
        fit = fit_ball(lambda t: graph.gn_pass(X, y, m, t, job.split_every, loss=job.loss),
                       m.initial_theta(), job.radius, tol=job.tol, max_iter=job.max_iter)
    info = fit_info(fit)
    if not fit.converged:
        log.warning("theta* did not converge in %d iterations", fit.iterations)
    stage_cache.save(npz, key, info=info, theta=fit.theta)
    ctx.memo[key] = fit.theta, info
    return fit.theta, info


def pilot(ctx: RunContext) -> np.ndarray:
    """theta_0 of the pilot scheme (MATH.md §5): train on a uniform sample of pilot_s rows.

    Uniform draws with replacement (weights n / s), seeded from ``seed``; trained like
    the final sample (same loss, ball and tolerance). Cached in OUT/theta_pilot.npz.
    """
    key = data_key(ctx, *KEYS["pilot"])
    npz = ctx.path("theta_pilot.npz")
    got = _cached(ctx, "pilot theta_0", npz, key, lambda z: z["theta"])
    if got is not None:
        return got
    X, y = xy(ctx)
    job = ctx.job
    n = int(X.shape[0])
    rng = np.random.default_rng([job.seed, 0x9170])
    idx = rng.integers(0, n, size=min(job.pilot_s, n))
    w = np.full(idx.size, n / idx.size)
    with ctx.timed("pilot"):
        with ctx.timed("gather"):
            Xs, ys = graph.gather_rows(X, y, idx)
        fit = train_on_sample(model(ctx), Xs, ys, w, job.radius, tol=job.tol,
                              max_iter=job.max_iter, loss=job.loss)
    stage_cache.save(npz, key, info=fit_info(fit), theta=fit.theta, indices=idx)
    ctx.memo[key] = fit.theta
    return fit.theta


def theta(ctx: RunContext) -> np.ndarray:
    """Parameters the nonlinear scores are taken at (job.theta)."""
    src = ctx.job.theta
    m = model(ctx)
    if src == "zeros":
        return np.zeros(m.n_params)
    if src == "optimum":
        return optimum(ctx)[0]
    if src == "init":
        return m.initial_theta()
    if src == "pilot":
        return pilot(ctx)
    path = Path(src)
    if not path.exists():
        raise NldistError(f"theta file {src!r} not found; use zeros, init, optimum, pilot, "
                          "a .npy file or a torch state_dict .pt file")
    if path.suffix in (".pt", ".pth"):
        return m.theta_from_checkpoint(path)
    try:
        t = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise NldistError(f"cannot read theta from {src}: {exc}") from None
    return m.check_theta(np.asarray(t).reshape(-1))


def start_theta(ctx: RunContext) -> np.ndarray:
    """Where training on a sample starts: the pilot theta_0 (pilot scheme) or the default."""
    return pilot(ctx) if ctx.job.theta == "pilot" else model(ctx).initial_theta()


def sample_size(ctx: RunContext, kind: str) -> int:
    """s for a kind: with ``swish_bound`` the main kind draws ceil(s * c2 / c1) rows."""
    if ctx.job.swish_bound and kind == ctx.job.kind:
        return int(np.ceil(ctx.job.s * swish_ratio(model(ctx))))
    return ctx.job.s


# --------------------------------------------------------------------------------------
# scores
# --------------------------------------------------------------------------------------


def scores(ctx: RunContext, kind: str, at: np.ndarray) -> tuple[Any, dict]:
    """Scores of one kind written to OUT/scores.zarr/<kind> (reused when provenance matches).

    Parameters
    ----------
    kind : str
    at : ndarray (p,)
        theta of the nonlinear kinds.

    Returns
    -------
    (lazy (n,) probabilities read back from the store, the array's attrs)
    """
    X, y = xy(ctx)
    job = ctx.job
    k = get_kind(kind)
    sk = None
    if job.sketch is not None and kind == job.kind and not k.uniform:
        sk = job.sketch
    spec = make_spec(k, model(ctx), at, X.shape[1], True, job.linear_augment_y,
                     loss=job.loss, sketch=sk, device=job.device)
    prov = {
        "kind": kind, "model": job.model,
        "theta_sha": array_digest(at) if k.nonlinear else None,
        "loss": job.loss if k.nonlinear else None,
        "ridge": job.ridge if k.ridge else 0.0,
        "dataset_key": data_key(ctx, "dataset"),
        "linear_augment_y": True if k.nonlinear else job.linear_augment_y,
        "n": int(X.shape[0]), "nldist_version": __version__,
    }
    if sk is not None:
        prov["sketch"] = sk.model_dump()
    # per-chunk completion records (nldist.store.scores): a re-run verifies them and
    # computes only unfinished or damaged chunks; pass 1 is kept once done
    out = ChunkedScores(ctx.path("scores.zarr"), kind, prov, X.chunks[0], ctx.run_id)
    out.check(graph.map_tasks)
    ctx.resume_stats[kind] = out.stats
    if out.finished:
        ctx.note(f"scores {kind}", True)
    elif out.stats["reused"]:
        ctx.note(f"scores {kind}", False, f"{out.stats['reused']} of {out.stats['chunks']} "
                 "chunks reused")
    elif out.replaced:
        ctx.note(f"scores {kind}", False, "inputs changed")
    scratch = ctx.out / "dual.zarr.partial" / kind
    if out.finished:
        dual_blocks.remove(scratch)  # left by a run killed after its last chunk
        return graph.open_array(out.path.parent, kind), out.attrs
    with ctx.timed("score", kind=kind, key=f"score:{kind}"):
        if sk is not None and sk.rows:
            probs, info = graph.rowsketch_scores(X, y, spec, sk, job.split_every)
            out.write(probs, graph.store_chunks, graph.store_whole)
            out.finish({**prov, "rank": info["rank"], "complete": True})
            return graph.open_array(out.path.parent, kind), out.attrs
        store = dual_store(ctx, spec, out.key, scratch)
        t0 = time.perf_counter()
        norm = out.load_pass1(PASS1_CLASSES)
        if norm is None:
            norm = graph.pass1(X, y, spec, ridge=job.ridge, split_every=job.split_every,
                               store=store)
            out.save_pass1(norm, PASS1_CLASSES)
        t1 = time.perf_counter()
        probs = graph.pass2(X, y, spec, norm, store=store)
        out.write(probs, graph.store_chunks, graph.store_whole)
        t2 = time.perf_counter()
        attrs = {**prov, "rank": norm.rank, "total": norm.total, "complete": True}
        if norm.factor is not None:
            attrs["svals"] = norm.factor.svals.tolist()
            attrs["R"] = norm.factor.R.tolist()
            if k.ridge:
                attrs["effective_dimension"] = norm.total
        if spec.persistable:
            attrs["persist"] = {"mode": job.persist, **(norm.persist or {}),
                                "pass1": out.stats["pass1"], "pass1_s": round(t1 - t0, 4),
                                "pass2_s": round(t2 - t1, 4)}
        out.finish(attrs)
        dual_blocks.remove(scratch)
    return graph.open_array(out.path.parent, kind), out.attrs


def dual_store(ctx: RunContext, spec: ScoreSpec, key: str, scratch: Path) -> Any:
    """The scratch store of persisted dual blocks for one kind (job.persist), or None.

    Lives in OUT/dual.zarr.partial/<kind>; its key ties it to the scores' resume key and
    the quadrature settings, so blocks of other inputs are deleted rather than read. It
    is removed when the kind's scores are complete; a killed run's blocks are reused.
    """
    if ctx.job.persist == "never" or not spec.persistable:
        dual_blocks.remove(scratch)
        return None
    adj = ctx.key(*KEYS["dual_blocks"])
    dkey = hashlib.sha256(f"{key}:{adj}".encode()).hexdigest()[:32]
    return dual_blocks.prepare(scratch, dkey, ctx.job.persist)


# --------------------------------------------------------------------------------------
# sample, gather, train, evaluate: the draw -> gather -> fit loop of run and experiment
# --------------------------------------------------------------------------------------


def draw(ctx: RunContext, probs: Any, requests: list[tuple[int, Any]], kind: str | None = None
         ) -> list[tuple[np.ndarray, np.ndarray]]:
    """Samples [(indices, weights)] for requests [(s, random_state)] in one pass over probs."""
    with ctx.timed("sample", kind=kind):
        return graph.sample_many(probs, requests, ctx.job.alpha)


def train(ctx: RunContext, Xs: np.ndarray, ys: np.ndarray | None, w: np.ndarray,
          kind: str | None = None) -> FitResult:
    """Train on one weighted sample from the start theta (pilot or the model's default)."""
    job = ctx.job
    t0 = start_theta(ctx)
    with ctx.timed("train", kind=kind):
        fit = train_on_sample(model(ctx), Xs, ys, w, job.radius, theta0=t0, tol=job.tol,
                              max_iter=job.max_iter, loss=job.loss)
    ctx.emit("train", "advance", kind=kind)
    return fit


def fit_draws(ctx: RunContext, draws: dict[Hashable, tuple[np.ndarray, np.ndarray]],
              kind_of: dict[Hashable, str]) -> dict[Hashable, FitResult]:
    """Gather every draw's rows in one pass over X, then train on each draw (in order).

    Parameters
    ----------
    draws : dict key -> (indices (s,), weights (s,))
    kind_of : dict key -> score kind (for progress and logs)
    """
    X, y = xy(ctx)
    allidx = np.unique(np.concatenate([idx for idx, _ in draws.values()]))
    with ctx.timed("gather"):  # random rows touch every chunk: one read for all draws
        Xu, yu = graph.gather_rows(X, y, allidx)
    fits = {}
    for key, (idx, w) in draws.items():
        pos = np.searchsorted(allidx, idx)
        fits[key] = train(ctx, Xu[pos], None if yu is None else yu[pos], w, kind_of[key])
    return fits


def evaluate(ctx: RunContext, thetas: np.ndarray) -> np.ndarray:
    """Full-data losses (m,) of m parameter vectors in one distributed pass."""
    X, y = xy(ctx)
    with ctx.timed("evaluate"):
        return graph.losses_pass(X, y, model(ctx), thetas, ctx.job.split_every,
                                 loss=ctx.job.loss)


def rng(ctx: RunContext, *extra: int) -> np.random.Generator:
    """The job's random state (with ``extra`` spawn words for repeated draws)."""
    return as_rng(ctx.job.seed) if not extra else np.random.default_rng([ctx.job.seed, *extra])


# --------------------------------------------------------------------------------------
# one run per output directory: the run manifest
# --------------------------------------------------------------------------------------

#: the run manifest in the output directory
MANIFEST = "run.json"
#: outputs that belong to one completed verb: removed when it starts again
VERB_OUTPUTS = {
    "run": ("metrics.json", "report.html", "report.md"),
    "experiment": ("experiment.json", "report.html", "report.md"),
    "diagnose": ("diagnostics.json", "report.html", "report.md"),
}
#: outputs of any earlier settings of the job: removed when the job's settings change
SETTINGS_OUTPUTS = ("metrics.json", "experiment.json", "diagnostics.json", "report.html",
                    "report.md", "samples", "theta.npy")


def identity(job: Any) -> dict:
    """What makes an output directory one job's: its name, data source, model and loss."""
    return {"name": job.name, "source": str(job.dataset.source), "model": job.model,
            "loss": job.loss}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def claim(ctx: RunContext, verb: str, force: bool = False) -> None:
    """Make the output directory this job's before a verb writes into it.

    A directory whose manifest names another job (:func:`identity`) is refused with a
    one-line error, unless ``force``: then everything in it is removed first. The outputs of
    this verb's previous run (and, when the job's settings changed, every per-settings
    output) are removed, so a failed run never leaves an old metrics.json or report looking
    current; the manifest is marked incomplete until :func:`complete`.
    """
    out = ctx.out
    path = out / MANIFEST
    old = None
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except (OSError, ValueError):
            old = {}
    ident = identity(ctx.job)
    if old is None and out.is_dir() and (out / "metrics.json").exists():
        try:  # a run written before manifests existed
            m = json.loads((out / "metrics.json").read_text())
            old = {"identity": {"name": m.get("name"), "model": m.get("model"),
                                "loss": m.get("loss"), "source": ident["source"]}}
        except (OSError, ValueError):
            old = {}
    if old is not None and old.get("identity") != ident:
        if not force:
            who = (old.get("identity") or {})
            raise NldistError(
                f"output directory {out} holds the outputs of another job ({who.get('name')!r}, "
                f"model {who.get('model')!r}, data {who.get('source')!r}); choose another "
                "--out, or pass --force to delete them and run this job there")
        for child in list(out.iterdir()):
            _remove(child)
        old = None
    digest_now = ctx.job.digest()
    stale = set(VERB_OUTPUTS[verb])
    if old is not None and old.get("job_digest") != digest_now:
        stale |= set(SETTINGS_OUTPUTS) | {p.name for p in out.glob("theta_*.npy")}
    for name in stale:
        _remove(out / name)
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, {"identity": ident, "job_digest": digest_now, "verb": verb,
                      "complete": False, "started": time.time(), "nldist_version": __version__})


def complete(ctx: RunContext) -> None:
    """Mark the manifest's current verb complete (its outputs are current)."""
    path = ctx.out / MANIFEST
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    write_json(path, {**man, "complete": True, "finished": time.time()})
