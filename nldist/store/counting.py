"""Reads of X counted where they happen: a Zarr store wrapper that counts chunk reads.

Every ``get`` of a key under ``X/c/`` (one chunk file or object of X) adds one to a
per-process counter named by a token; :func:`nldist.graph.inputs.store_reads` adds up the counters
of the driver and of every worker. The cost a run reports is therefore the chunks its tasks
actually read from the store — duplicated reads included — not a ledger of intended passes.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Any

from zarr.abc.store import ByteRequest, Store
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import WrapperStore

_COUNTS: dict[str, int] = {}
_LOCK = threading.Lock()


def _count(token: str, k: int = 1) -> None:
    with _LOCK:
        _COUNTS[token] = _COUNTS.get(token, 0) + k


def chunk_reads(token: str) -> int:
    """Chunk reads counted under ``token`` in this process."""
    with _LOCK:
        return _COUNTS.get(token, 0)


def process_reads(token: str) -> tuple[int, int]:
    """(this process's id, its chunk reads under ``token``): summed once per process."""
    return os.getpid(), chunk_reads(token)


def _counted_call(func: Any, token: str, *args: Any, **kwargs: Any) -> Any:
    _count(token)
    return func(*args, **kwargs)


def counted(func: Any, token: str) -> Any:
    """``func`` that adds one to the counter ``token`` per call (a Parquet partition read
    and encoded in place: the table's "chunk reads")."""
    return functools.partial(_counted_call, func, token)


class CountingStore(WrapperStore):
    """A read-through wrapper of a Zarr store counting gets of one array's chunk keys.

    Parameters
    ----------
    store : zarr Store
    token : str
        Name of the counter (one per run).
    prefix : str
        Keys counted (``"X/c/"``: the chunks of X in a dataset group).
    """

    def __init__(self, store: Store, token: str = "", prefix: str = "X/c/") -> None:
        super().__init__(store)
        self._token = token
        self._prefix = prefix

    def _with_store(self, store: Store) -> CountingStore:
        return type(self)(store, self._token, self._prefix)

    async def get(self, key: str, prototype: BufferPrototype,
                  byte_range: ByteRequest | None = None) -> Buffer | None:
        got = await self._store.get(key, prototype, byte_range)
        if got is not None and key.startswith(self._prefix):
            _count(self._token)
        return got

    async def get_partial_values(self, prototype: BufferPrototype,
                                 key_ranges: Any) -> list[Buffer | None]:
        key_ranges = list(key_ranges)
        got = await self._store.get_partial_values(prototype, key_ranges)
        k = sum(1 for (key, _), g in zip(key_ranges, got, strict=True)
                if g is not None and key.startswith(self._prefix))
        if k:
            _count(self._token, k)
        return got
