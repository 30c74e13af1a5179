"""The scores stages: a kind's exact two-pass scores written chunk by chunk to
``OUT/scores.zarr`` (reused when their provenance matches), and the fused pass 2 + sample +
gather.

Part of :mod:`nldist.pipeline.stages`.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from nldist import graph
from nldist._version import __version__
from nldist.models.losses import target_columns
from nldist.pipeline.context import RunContext
from nldist.pipeline.stages.data import KEYS, data_key, model, stage_key, xy
from nldist.pipeline.stages.fitting import draw
from nldist.pipeline.stages.theta import touched
from nldist.scores.kinds import get_kind
from nldist.scores.linalg import RFactor
from nldist.scores.reductions import Normalizer
from nldist.scores.spec import ScoreSpec, make_spec
from nldist.store import dual_blocks
from nldist.store.records import array_digest
from nldist.store.remote import is_remote
from nldist.store.scores import ChunkedScores

log = logging.getLogger("nldist")


#: the dataclasses a stored pass-1 result may hold (nothing else is ever constructed)
PASS1_CLASSES = {"Normalizer": Normalizer, "RFactor": RFactor}

#: not recorded in a kind's provenance
OMIT = object()
#: what a kind's scores record for a field or input of ``KEYS["scores"]`` they do not depend
#: on (:attr:`nldist.scores.kinds.Kind.depends_on`), so that it never invalidates them
UNUSED_SCORE_FIELDS: dict[str, Any] = {
    "theta": None, "loss": None, "ridge": 0.0, "linear_augment_y": True, "sketch": OMIT,
    "seed": OMIT, "adjoint": OMIT}
#: the attrs names of those recorded under another name
RECORDED_AS = {"dataset": "dataset_key", "theta": "theta_sha"}

def score_provenance(ctx: RunContext, kind: str, at: np.ndarray, sk: Any) -> dict:
    """The provenance of a kind's scores, recorded in their attrs and, with the chunking,
    their resume key (:func:`nldist.store.scores.resume_key`): the fields and inputs of
    ``KEYS["scores"]``, those the kind does not depend on recorded as
    :data:`UNUSED_SCORE_FIELDS`.

    ``sk`` is the sketch applied to this kind (the job's, for its own kind), or None."""
    job, k, m = ctx.job, get_kind(kind), model(ctx)
    X, _ = xy(ctx)
    opts = getattr(m, "quad_options", None)  # quadrature settings (accuracy) make the scores
    value = {  # of each, for a kind that depends on it
        "kind": kind, "dataset": data_key(ctx, "dataset"), "model": job.model,
        "theta": None if at is None else array_digest(at), "loss": job.loss,
        "ridge": job.ridge, "linear_augment_y": job.linear_augment_y,
        "sketch": OMIT if sk is None else sk.model_dump(), "seed": job.seed,
        "adjoint": OMIT if m.closed_form else None if opts is None else opts.model_dump(),
        "n": int(X.shape[0]), "nldist_version": __version__,
        "chunks": OMIT,  # ChunkedScores adds them to the key
    }
    decl = KEYS["scores"]
    prov = {}
    for name in (*decl.fields, *decl.inputs):
        got = (value[name] if name not in UNUSED_SCORE_FIELDS or name in k.depends_on
               else UNUSED_SCORE_FIELDS[name])
        if got is not OMIT:
            prov[RECORDED_AS.get(name, name)] = got
    return prov

def _score_output(ctx: RunContext, kind: str, at: np.ndarray
                  ) -> tuple[ChunkedScores, ScoreSpec, dict, Any]:
    """The kind's score store (records checked), its spec, provenance and sketch options."""
    X, y = xy(ctx)
    job = ctx.job
    k = get_kind(kind)
    sk = None
    if job.sketch is not None and kind == job.kind and not k.uniform:
        sk = job.sketch
    spec = make_spec(k, model(ctx), at, X.shape[1], True, job.linear_augment_y,
                     loss=job.loss, sketch=sk, device=job.device, seed=job.seed,
                     y_cols=target_columns(y))
    prov = score_provenance(ctx, kind, at, sk)
    # per-chunk completion records (nldist.store.scores): a re-run verifies them and
    # computes only unfinished or damaged chunks; pass 1 is kept once done
    out = ChunkedScores(ctx.path("scores.zarr"), kind, prov, X.chunks[0], ctx.run_id)
    out.check(graph.writes.map_tasks)
    ctx.resume_stats[kind] = out.stats
    if out.finished:
        ctx.note(f"scores {kind}", True)
    elif out.stats["reused"]:
        ctx.note(f"scores {kind}", False, f"{out.stats['reused']} of {out.stats['chunks']} "
                 "chunks reused")
    elif out.replaced:
        ctx.note(f"scores {kind}", False, "inputs changed")
    return out, spec, prov, sk

def _pass1(ctx: RunContext, out: ChunkedScores, spec: ScoreSpec, store: Any) -> Normalizer:
    """Pass 1 of a kind (with the chunk masses), or its stored result."""
    X, y = xy(ctx)
    norm = out.load_pass1(PASS1_CLASSES)
    if norm is None or (norm.masses is None and not spec.kind.uniform):
        t0 = time.perf_counter()
        norm = graph.passes.pass1(X, y, spec, ridge=ctx.job.ridge, split_every=ctx.job.split_every,
                           store=store, masses=True)
        if not spec.kind.uniform:
            ctx.read("pass 1")
            ctx.pass1_s = time.perf_counter() - t0
        out.save_pass1(norm, PASS1_CLASSES)
    return norm

def _finish(ctx: RunContext, out: ChunkedScores, spec: ScoreSpec, prov: dict, norm: Normalizer,
            t: tuple[float, float, float]) -> None:
    """Mark a kind's scores complete with their attributes (rank, R, persist statistics)."""
    attrs = {**prov, "rank": norm.rank, "total": norm.total, "complete": True}
    if norm.factor is not None:
        attrs["svals"] = norm.factor.svals.tolist()
        attrs["R"] = norm.factor.R.tolist()
        if spec.kind.ridge:
            attrs["effective_dimension"] = norm.total
    if spec.persistable:
        attrs["persist"] = {"mode": ctx.job.persist, **(norm.persist or {}),
                            "pass1": out.stats["pass1"], "pass1_s": round(t[1] - t[0], 4),
                            "pass2_s": round(t[2] - t[1], 4)}
    out.finish(attrs)

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
    out, spec, prov, sk = _score_output(ctx, kind, at)
    scratch = ctx.out / "dual.zarr.partial" / kind
    if out.finished:
        dual_blocks.remove(scratch)  # left by a run killed after its last chunk
        return graph.memory.open_array(out.path.parent, out.path.name), out.attrs
    with ctx.timed("score", kind=kind, key=f"score:{kind}"):
        if sk is not None and sk.rows:
            probs, info = graph.passes.rowsketch_scores(X, y, spec, sk, job.split_every)
            ctx.read("row sketch", 2.0)
            out.write(probs, graph.writes.store_chunks, graph.writes.store_whole)
            out.finish({**prov, "rank": info["rank"], "complete": True})
            return graph.memory.open_array(out.path.parent, out.path.name), out.attrs
        store = dual_store(ctx, spec, out.key, scratch)
        t0 = time.perf_counter()
        norm = _pass1(ctx, out, spec, store)
        t1 = time.perf_counter()
        probs = graph.passes.pass2(X, y, spec, norm, store=store)
        out.write(probs, graph.writes.store_chunks, graph.writes.store_whole)
        if not spec.kind.uniform:
            ctx.read("pass 2", out.stats["computed"] / max(1, len(out.chunks)))
        _finish(ctx, out, spec, prov, norm, (t0, t1, time.perf_counter()))
        dual_blocks.remove(scratch)
    return graph.memory.open_array(out.path.parent, out.path.name), out.attrs

def scores_and_sample(ctx: RunContext, kind: str, at: np.ndarray,
                      requests: list[tuple[int, Any]], eval_rate: float = 0.0) -> tuple[
                          Any, dict, list[tuple[np.ndarray, ...]], tuple | None]:
    """A kind's scores, its samples with their rows, and an evaluation sample: the fused pass.

    When the kind's scores must be computed from scratch, pass 2, the sampling and the
    gather of the sampled rows run as one read of X (:func:`nldist.graph.draws.sample_pass`), the
    scores still written chunk by chunk to OUT/scores.zarr. Otherwise (scores reused or a
    killed run half done, row-sketch scores, irregular chunks) the same samples come from
    :func:`scores` + :func:`draw` + a gather.

    Parameters
    ----------
    requests : list of (s, random_state)
    eval_rate : float
        Bernoulli rate of the evaluation sample (0: none).

    Returns
    -------
    probs : lazy (n,) probabilities from the store
    attrs : dict
    draws : list of (indices (s,), weights (s,), X rows (s, d), y rows (s,)), per request
    eval : (indices (m,), X (m, d), y (m,)) or None
    """
    X, y = xy(ctx)
    job = ctx.job
    eval_seed = int(job.seed) + 0x3E7A1
    out, spec, prov, sk = _score_output(ctx, kind, at)
    scratch = ctx.out / "dual.zarr.partial" / kind
    fused = (not out.finished and not out.stats["reused"] and out.aligned
             and not (sk is not None and sk.rows))
    if fused:
        with ctx.timed("score", kind=kind, key=f"score:{kind}"):
            store = dual_store(ctx, spec, out.key, scratch)
            t0 = time.perf_counter()
            norm = _pass1(ctx, out, spec, store)
            t1 = time.perf_counter()
            got = graph.draws.sample_pass(X, y, spec, norm, requests, job.alpha, store=store,
                                    eval_rate=eval_rate, eval_seed=eval_seed,
                                    sink=out.sink())
            ctx.read("pass 2 + sample + gather")
            out.stored(got["stored"])
            _finish(ctx, out, spec, prov, norm, (t0, t1, time.perf_counter()))
            dual_blocks.remove(scratch)
        ev = got["eval"] if eval_rate > 0 else None
        return graph.memory.open_array(out.path.parent, out.path.name), out.attrs, got["draws"], ev
    probs, attrs = scores(ctx, kind, at)
    norm = out.stored_pass1(PASS1_CLASSES)  # its chunk masses: the fused pass's routing
    drawn = draw(ctx, probs, requests, kind, None if norm is None else norm.masses)
    allidx = np.unique(np.concatenate([idx for idx, _ in drawn]))
    with ctx.timed("gather"):
        Xu, yu = graph.draws.gather_rows(X, y, allidx)
    ctx.read("gather", touched(np.asarray(X.chunks[0]), allidx))
    draws = []
    for idx, w in drawn:
        pos = np.searchsorted(allidx, idx)
        draws.append((idx, w, Xu[pos], yu[pos]))
    ev = None
    if eval_rate > 0:
        with ctx.timed("gather"):
            ev = graph.draws.bernoulli_rows(X, y, eval_rate, eval_seed)
        ctx.read("evaluation sample")
    return probs, attrs, draws, ev

def dual_store(ctx: RunContext, spec: ScoreSpec, key: str, scratch: Path) -> Any:
    """The scratch store of persisted dual blocks for one kind (job.persist), or None.

    Lives in OUT/dual.zarr.partial/<kind>; its key ties it to the scores' resume key and
    the quadrature settings, so blocks of other inputs are deleted rather than read. It
    is removed when the kind's scores are complete; a killed run's blocks are reused.
    """
    if ctx.job.persist == "never" or not spec.persistable or is_remote(ctx.out):
        # on object storage, a round trip of every dual block costs more than rebuilding it
        dual_blocks.remove(scratch)
        return None
    return dual_blocks.prepare(scratch, stage_key(ctx, "dual_blocks", scores=key),
                               ctx.job.persist)
