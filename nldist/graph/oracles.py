"""Full-data oracles of training: loss, gradient and Gauss-Newton matrix in one distributed pass.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
import os

import dask
import dask.array as da
import numpy as np
from dask.base import get_scheduler

from nldist import objectives, precond
from nldist.graph.inputs import SPLIT_EVERY, current_client, persist_blocks, row_blocks, tree_reduce
from nldist.models.base import Model

log = logging.getLogger("nldist")


def gn_pass(
    X: da.Array, y: da.Array, model: Model, theta: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> dict:
    """One distributed pass: full-data loss, gradient (p,) and Gauss-Newton matrix (p, p)."""
    parts = [
        dask.delayed(objectives.gn_block, pure=True)(model, theta, xb, yb, off, loss)
        for xb, yb, off in row_blocks(X, y)
    ]
    parts = persist_blocks(parts, part_bytes=8 * model.n_params ** 2)
    (out,) = dask.compute(tree_reduce(parts, objectives.combine_sum, split_every))
    return out

def losses_pass(
    X: da.Array, y: da.Array, model: Model, thetas: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> np.ndarray:
    """Full-data losses (m,) of m parameter vectors (m, p) in one distributed pass."""
    thetas = np.atleast_2d(np.asarray(thetas, dtype=np.float64))
    parts = [
        dask.delayed(objectives.losses_block, pure=True)(model, thetas, xb, yb, loss)
        for xb, yb, _ in row_blocks(X, y)
    ]
    parts = persist_blocks(parts, part_bytes=8 * thetas.shape[0])
    (out,) = dask.compute(tree_reduce(parts, sum, split_every))
    return np.asarray(out, dtype=np.float64)

def grad_pass(
    X: da.Array, y: da.Array, model: Model, theta: np.ndarray, split_every: int = SPLIT_EVERY,
    loss: str = "squared",
) -> dict:
    """One distributed pass: full-data loss and gradient (p,) — n p work per row, no p x p
    matrix per chunk (:func:`nldist.precond.grad_block`; the preconditioned fit's pass)."""
    parts = [
        dask.delayed(precond.grad_block, pure=True)(model, theta, xb, yb, off, loss)
        for xb, yb, off in row_blocks(X, y)
    ]
    parts = persist_blocks(parts, part_bytes=8 * model.n_params)
    (out,) = dask.compute(tree_reduce(parts, objectives.combine_sum, split_every))
    return out

def parallelism() -> int:
    """Chunk tasks that run at once: the threads of the client's workers, else the local
    scheduler's (1 when synchronous)."""
    c = current_client()
    if c is not None:
        workers = c.scheduler_info().get("workers", {}).values()
        return max(1, sum(int(w.get("nthreads") or 1) for w in workers))
    if get_scheduler() is dask.local.get_sync:
        return 1
    return max(1, int(dask.config.get("num_workers", None) or os.cpu_count() or 1))
