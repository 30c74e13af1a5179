"""The dry-run plan: what a run will do, bytes read per pass, and a per-worker memory bound.

Every number comes from :mod:`nldist._budget` (the same constants the kernels size their
work by) and the model's own ``memory_per_row`` / ``workspace_bytes``; nothing runs.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import dask

from nldist._budget import MEMORY_FORMULA, cache_budget
from nldist.pipeline import stages
from nldist.pipeline.budget import kind_task
from nldist.pipeline.context import RunContext
from nldist.scores.kinds import get_kind


def _bytes(size: str) -> int | None:
    """``"1GiB"`` -> bytes; None for what dask decides itself (``"auto"``) or cannot parse."""
    try:
        return int(dask.utils.parse_bytes(size))
    except (ValueError, TypeError):
        return None


def plan(ctx: RunContext, verb: str = "run") -> dict:
    """What the run will do, its bytes read and a per-worker memory bound (n-independent).

    ``verb`` ``"select"`` plans the practical path (the job's kind only, no theta*)."""
    job = ctx.job
    X, y = stages.data.open_xy(ctx)
    n, d = X.shape
    if verb == "select":
        ctx.adjoint_accuracy = "sampling"
        ctx.model_cache = None
    m = stages.data.model(ctx)
    chunk = int(max(X.chunks[0]))
    itemsize = X.dtype.itemsize
    kinds = [job.kind] if verb == "select" else job.kinds()
    # per exact kind pass 1 + the fused pass 2 + sample + gather; a uniform kind the fused
    # read only; run: one evaluation pass and theta*'s passes; select: none (estimated)
    passes = sum(1 if get_kind(k).uniform else 2 for k in kinds)
    tail = " (+ the pilot: 0 from the ingest reservoir, else a few whole chunks)" \
        if verb == "select" else " + 1 (evaluation) + 1 per training iteration of theta*"
    passes_text = f"{passes}{tail}"
    nbytes = int(X.nbytes + y.nbytes)
    c = job.cluster
    if job.cache_x == "never":
        cache = "never: every pass reads the store"
    elif c.address == "local" and _bytes(c.memory_limit) is not None:
        budget = cache_budget([_bytes(c.memory_limit)] * c.n_workers)
        fits = job.cache_x == "always" or (budget is not None and nbytes <= budget)
        cache = (f"{job.cache_x}: X+y {nbytes / 2**20:,.1f} MiB vs budget "
                 + (f"{budget / 2**20:,.1f} MiB" if budget is not None else "none")
                 + " -> "
                 + ("read once, then every pass from worker memory" if fits
                    else "streamed from the store every pass"))
    else:
        cache = f"{job.cache_x}: decided at run time from the workers' memory limits"
    # the largest kind decides the task (:func:`nldist.pipeline.budget.kind_task`)
    task = max((kind_task(job, m, k, chunk, d, itemsize) for k in kinds),
               key=lambda t: t["bytes"])
    rows, group, per_task = task["rows"], task["group"], task["bytes"]
    return {
        "n_rows": n, "n_features": d, "n_params": m.n_params, "chunks": len(X.chunks[0]),
        "chunk_rows": chunk, "kinds": kinds,
        "task_rows": f"{rows} examples x {group} row(s) each = {rows * group} dual rows of "
                     f"p = {m.n_params}" + (" (C outputs: block kinds)" if group > 1 else ""),
        "passes_over_X": passes_text,
        "bytes_per_pass": int(n * d * itemsize),
        "memory_per_task_bytes": int(per_task),
        "memory_per_worker_bytes": int(per_task * job.cluster.threads_per_worker),
        # a local cluster's limit is known now (None: decided by the workers at run time);
        # a run refuses what does not fit (:func:`nldist.pipeline.budget.check_memory`)
        "fits_memory_limit": (None if c.address != "local" or not _bytes(c.memory_limit)
                              else per_task * c.threads_per_worker <= _bytes(c.memory_limit)),
        "device": job.device,
        "cache_x": cache,
        "memory_formula": MEMORY_FORMULA,
    }


def dry_run(ctx: RunContext, verb: str = "run") -> dict:
    """:func:`plan` without writing anything into ``ctx.out``: the job's dataset as it is when
    it exists, else ingested into a temporary directory that is removed afterwards."""
    if stages.data.dataset_path(ctx).exists():
        return plan(ctx, verb)
    with tempfile.TemporaryDirectory(prefix="nldist-plan-") as tmp:
        tctx = RunContext(ctx.job, Path(tmp))
        stages.data.ingest(tctx)
        return plan(tctx, verb)
