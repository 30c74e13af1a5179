"""The memory bound of a scores task, per kind, and its check before a run (issue 29).

:func:`kind_task` is what ``--dry-run`` prints (:func:`nldist.pipeline.plan.plan`, the
largest over the job's kinds); :func:`check_memory` enforces the same number against the
workers' memory limits before any pass runs, so that a model whose task cannot fit is one
line instead of minutes of worker restarts ending in KilledWorker. The numbers come from
:mod:`nldist._budget` (the constants the kernels size their work by).
"""

from __future__ import annotations

from typing import Any

import dask

from nldist import graph
from nldist._budget import matrices_bytes, memory_per_task, task_rows
from nldist.errors import NldistError
from nldist.models.coded import CodedModel
from nldist.pipeline import stages
from nldist.pipeline.context import RunContext
from nldist.scores.kinds import get_kind
from nldist.scores.reductions import SquaredNorm


def kind_task(job: Any, m: Any, kind: str, chunk: int, d: int, itemsize: int) -> dict:
    """One scores task of ``kind`` on a chunk of ``chunk`` rows: ``bytes`` (its peak,
    :func:`nldist._budget.memory_per_task`), ``rows`` (examples per task), ``group`` (matrix
    rows per example), ``q`` (side of its (q, q) matrices; 0: none) and ``kind``.

    The dual rows of a nonlinear kind are p + 1 wide (q = p + 1 for a leverage, k + 1 when
    ``sketch.cols`` projects the job's kind to k dims); the linear kinds' data rows [X, 1]
    are d + 1 wide; a norm factors nothing; a uniform kind builds no matrix."""
    k = get_kind(kind)
    if k.uniform:
        return {"kind": kind, "bytes": 0, "rows": chunk, "group": 1, "q": 0}
    group = k.group(m)  # C or k rows per example for the block kinds, else 1
    row_bytes: int | None
    if k.nonlinear:
        width, row_bytes = m.n_params + 1, None  # the model's dual rows
        sk = job.sketch
        q = sk.cols + 1 if sk is not None and sk.cols and kind == job.kind else width
    else:  # the data rows [X, 1]: over coded categoricals, the one-hot design's
        width = q = (m.inner.n_features if isinstance(m, CodedModel) else d) + 1
        row_bytes = 3 * 8 * width
    if isinstance(k.reduction, SquaredNorm):
        q = 0
    rows = task_rows(chunk, width, group)
    return {"kind": kind, "rows": rows, "group": group, "q": q,
            "bytes": memory_per_task(m, rows, d, itemsize, group, q=q, row_bytes=row_bytes)}


def _size(n: float) -> str:
    return dask.utils.format_bytes(int(n))


def check_memory(ctx: RunContext, kinds: list[str]) -> None:
    """Refuse, before any pass, a job whose scores task cannot fit a worker: the dry-run's
    bound (:func:`kind_task`, times the tasks a worker runs at once) against the smallest
    memory limit of the cluster's workers (nothing to check without a distributed client or
    without limits). A worker over its limit is restarted by its nanny and the task retried
    on others until dask gives up (KilledWorker): minutes of restarts and a traceback for
    what is known now.

    Raises
    ------
    NldistError
        Naming the kind, its bytes, chunk_rows, the threads per worker, memory_limit and
        the fix.
    """
    client = graph.inputs.current_client()
    limits = [x for x in graph.memory.worker_memory_limits(client) if x > 0]
    if not limits:
        return
    limit = min(limits)
    threads = max(graph.memory.worker_threads(client) or [1])
    X, _ = stages.data.open_xy(ctx)
    chunk, d, itemsize = int(max(X.chunks[0])), int(X.shape[1]), X.dtype.itemsize
    m = stages.data.model(ctx)
    task = max((kind_task(ctx.job, m, k, chunk, d, itemsize) for k in kinds),
               key=lambda t: t["bytes"])
    if task["bytes"] * threads <= limit:
        return
    fixed = matrices_bytes(task["q"])
    if fixed * threads > limit:
        why = (f"its ({task['q']:,}, {task['q']:,}) matrices alone take {_size(fixed)}, "
               f"whatever the chunk_rows ({chunk:,})")
        fix = ("sketch the dual rows (sketch: {cols: 512}), choose a model with fewer "
               "parameters or a norm kind, or raise cluster.memory_limit")
    else:
        why = f"{task['rows']:,} rows per task of chunk_rows {chunk:,}"
        fix = "lower dataset.chunk_rows or raise cluster.memory_limit"
    raise NldistError(
        f"model {ctx.job.model!r} (p = {m.n_params:,}) does not fit the workers: one "
        f"{task['kind']} scores task needs {_size(task['bytes'])} ({why})"
        + (f" x {threads} threads per worker" if threads > 1 else "")
        + f", over the workers' memory_limit of {_size(limit)}; {fix} (`--dry-run` prints "
        "the plan)")
