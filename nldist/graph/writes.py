"""Resumable writes of the score store (:mod:`nldist.store.scores`): selected blocks only,
small results back.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da

from nldist._runtime import chunk_listener
from nldist.errors import NldistError
from nldist.graph.inputs import compute_blocks, current_client, follow

log = logging.getLogger("nldist")


def store_chunks(
    arr: da.Array, blocks: Sequence[int], func: Callable, *args: Any, starts: Sequence[int]
) -> list:
    """Run ``func(block_values, i, starts[i], *args)`` for the chosen row blocks of a lazy
    1-D array, on the cluster; blocks not listed are not computed (their part of the graph,
    X reads included, is culled). Returns func's (small) results in order."""
    parts = arr.to_delayed().ravel()
    tasks = [dask.delayed(func, pure=False)(parts[i], i, starts[i], *args) for i in blocks]
    return compute_blocks(tasks)

def map_tasks(func: Callable, arg_tuples: Sequence[tuple],
              where: Sequence[str] | None = None) -> list:
    """``[func(*a) for a in arg_tuples]`` as independent tasks on the cluster (small results).

    With ``where`` (one name per task, e.g. the file a table partition comes from), a task
    that fails with anything but an :class:`NldistError` — a damaged file failing inside its
    read, before ``func`` sees it — is reported as one line naming its ``where``."""
    tasks = [dask.delayed(func, pure=False)(*a) for a in arg_tuples]
    if where is None:
        return compute_blocks(tasks)
    listener = chunk_listener() or (lambda done, total: None)
    client = current_client()
    if client is None:
        out = []
        for i, (t, w) in enumerate(zip(tasks, where, strict=True)):
            out.append(_named(lambda t=t: dask.compute(t)[0], w))
            listener(i + 1, len(tasks))
        return out
    from distributed import wait

    futs = client.compute(tasks)
    follow(futs, listener)
    wait(futs)
    for f, w in zip(futs, where, strict=True):
        if f.status == "error":
            _named(f.result, w)
    return list(client.gather(futs))

def _named(get: Callable[[], Any], where: str) -> Any:
    """``get()``, with a failure other than an NldistError as one line naming ``where``."""
    try:
        return get()
    except (NldistError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - a damaged file fails in its reader, any type
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise NldistError(f"{where} cannot be read ({type(exc).__name__}{': ' + msg if msg else ''}"
                          "); upload it again whole or remove it from the source") from None

def store_whole(arr: da.Array, target: Any) -> None:
    """Compute a lazy array into a Zarr array in one locked pass (irregular chunks)."""
    da.store(arr, target, lock=True)
