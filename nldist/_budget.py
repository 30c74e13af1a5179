"""Every byte budget of the engine, and the dry-run memory bound computed from the same numbers.

The kernels size their work from these constants, and :func:`memory_per_task` (what
``--dry-run`` prints) is computed from them and from the model's own
``memory_per_row`` / ``workspace_bytes``, so the plan cannot drift from the kernels.

==========================  ==============================================================
constant                    bounds
==========================  ==============================================================
:data:`SUB_BYTES`           a row slice processed in cache (Gram, TRSM, GEMM, Householder)
:data:`DEVICE_SLICE_BYTES`  a row slice sent to a torch device at once
:data:`DUAL_BLOCK_BYTES`    a (rows, q) matrix block one scores task builds (wide duals
                            get X's row chunks split to stay inside it)
:data:`SKETCH_BATCH_BYTES`  the unprojected rows a column sketch projects at once
:data:`DUAL_CHUNK_BYTES`    one Zarr chunk of a persisted dual block
:data:`X_CHUNK_BYTES`       one Zarr chunk of X written by ingest
:data:`CACHE_FRACTION`      X and y kept in worker memory (``cache_x: auto``), as a
                            fraction of the workers' summed memory limits
==========================  ==============================================================
"""

from __future__ import annotations

SUB_BYTES = 2**20
DEVICE_SLICE_BYTES = 2**26
DUAL_BLOCK_BYTES = 64 * 2**20
SKETCH_BATCH_BYTES = 64 * 2**20
DUAL_CHUNK_BYTES = 8 * 2**20
X_CHUNK_BYTES = 32 * 2**20
#: dask starts spilling at 60 % of a worker's limit; the passes need the rest
CACHE_FRACTION = 0.25
#: bytes of per-row bookkeeping of a scores task: the float64 score and its row index
ROW_OVERHEAD_BYTES = 2 * 8
#: (q, q) float64 matrices a scores task holds at once (Gram, R, R^-1, QR work)
SMALL_MATRICES = 4
#: the smallest ``cluster.memory_limit`` of a local worker: a worker process holds ~110 MiB
#: once Python, NumPy, Dask and nldist are imported, ~220 MiB after a pass of a tiny job
#: (measured), and its nanny restarts it at 95 % of its limit — below this floor workers
#: are restarted over and over before any task ends, and a run never finishes
WORKER_MEMORY_FLOOR = 512 * 2**20
#: driver bytes of the evaluation sample of the practical path (its rows, float64)
EVAL_SAMPLE_BYTES = 128 * 2**20


def eval_rows(requested: int, d: int) -> int:
    """Rows of the evaluation sample: ``requested``, at most :data:`EVAL_SAMPLE_BYTES` of
    (d + 1) float64 values each (wide data gets fewer rows, the driver stays bounded)."""
    return max(1, min(int(requested), EVAL_SAMPLE_BYTES // (8 * (d + 1))))


def sub_rows(q: int, itemsize: int = 8) -> int:
    """Rows of a cache-sized slice of a (., q) matrix (at least 256)."""
    return max(256, SUB_BYTES // max(1, q * itemsize))


def device_rows(q: int) -> int:
    """Rows of a device slice of a (., q) float64 matrix (at least 256)."""
    return max(256, DEVICE_SLICE_BYTES // max(1, 8 * q))


def slices(n: int, step: int) -> list[slice]:
    """Consecutive row slices of ``step`` rows covering 0..n (one empty slice for n = 0)."""
    return [slice(s, min(s + step, n)) for s in range(0, n, step)] or [slice(0, 0)]


def dual_chunk_rows(q: int) -> int:
    """Rows of one Zarr chunk of a persisted block: whole pass-2 slices, about
    :data:`DUAL_CHUNK_BYTES`."""
    step = sub_rows(max(q, 1))
    return step * max(1, DUAL_CHUNK_BYTES // (step * max(q, 1) * 8))


def x_chunk_rows(n_cols: int, itemsize: int = 8) -> int:
    """Rows per chunk for about :data:`X_CHUNK_BYTES` per X chunk."""
    return max(1, X_CHUNK_BYTES // max(1, n_cols * itemsize))


def cache_budget(limits: list[int]) -> int | None:
    """Bytes ``cache_x: auto`` may keep in worker memory: :data:`CACHE_FRACTION` of the
    workers' summed memory limits (None without workers or when a worker has no limit)."""
    if not limits or min(limits) <= 0:
        return None
    return int(CACHE_FRACTION * sum(limits))


def memory_per_task(model, chunk_rows: int, n_features: int, itemsize: int,
                    group: int = 1, *, q: int | None = None,
                    row_bytes: int | None = None) -> int:
    """Peak bytes of one scores task on a chunk of X: independent of n.

    ``chunk_rows * (d * itemsize + 8 d + group * row_bytes + 16)`` (the X chunk, its float64
    copy, the matrix rows — ``row_bytes`` per row, by default the model's dual rows
    ``model.memory_per_row()``; ``group`` of them per example for the block kinds of a
    C-output model: C, or k for ``block-sketch:k`` — per-row results)
    ``+ 4 q^2 * 8`` (the small (q, q) matrices of a leverage: q = p + 1 by default, k + 1 of
    a column sketch, d + 1 for the data rows, 0 for a norm) ``+ model.workspace_bytes()``
    (the quadrature engine's batch, 0 for closed forms; only with the model's dual rows). A
    dual block wider than :data:`DUAL_BLOCK_BYTES` is split into more tasks (``chunk_rows``
    is then the split chunk's rows).
    """
    q = model.n_params + 1 if q is None else q
    dual = row_bytes is None
    row_bytes = model.memory_per_row() if dual else row_bytes
    per_row = n_features * itemsize + 8 * n_features + group * row_bytes + ROW_OVERHEAD_BYTES
    return int(chunk_rows * per_row + matrices_bytes(q)
               + (model.workspace_bytes() if dual else 0))


def matrices_bytes(q: int) -> int:
    """Bytes of the small (q, q) float64 matrices one leverage task holds at once (R, its
    inverse, the Gram, the QR work): what no choice of chunk rows makes smaller."""
    return SMALL_MATRICES * q * q * 8


MEMORY_FORMULA = ("threads * chunk_rows * (d*itemsize + 8d + 24(p+1) g + 16) + 32 q^2 bytes "
                  "(g = rows per example: C or k for block kinds, else 1; q = p+1 for a "
                  "leverage of the dual rows, k+1 with sketch.cols, d+1 for the linear kinds "
                  "(rows of 24(d+1) bytes), 0 for a norm; + 16*max_elems for quadrature "
                  "models), the largest over the job's kinds, independent of n")


def task_rows(chunk_rows: int, q: int, group: int = 1) -> int:
    """Examples per scores task: the X chunk, split so that its (rows x group, q) float64
    block is at most :data:`DUAL_BLOCK_BYTES` (as :func:`nldist.graph.passes.split_for_dual`)."""
    cap = max(1, DUAL_BLOCK_BYTES // (8 * max(q, 1) * max(group, 1)))
    if chunk_rows <= cap:
        return int(chunk_rows)
    k = -(-chunk_rows // cap)
    return -(-chunk_rows // k)
