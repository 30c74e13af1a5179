"""The distributed ingest of a table: its partitions (CSV / Parquet, local or remote), lazily
encoded X and y, and the chunk writes.

Part of :mod:`nldist.graph`, the only package that builds Dask graphs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import dask.dataframe as dd
import numpy as np

from nldist.errors import NldistError
from nldist.graph.inputs import compute_blocks, delayed_xy
from nldist.graph.writes import map_tasks
from nldist.store import counting
from nldist.store.dataset import verify_xy_chunk, write_xy_chunk
from nldist.store.remote import storage_options

log = logging.getLogger("nldist")


def table_partitions(source: str | list[str], fmt: str, blocksize: str = "64MB") -> list:
    """Delayed pandas partitions of a CSV or Parquet source (a file, a directory, a glob, an
    fsspec URL, or a list of files: what nldist's listing kept): Parquet by row groups /
    files, CSV by ``blocksize`` byte ranges. The workers read them; nothing is read here but
    metadata."""
    opts = storage_options(source if isinstance(source, str) else source[0])
    try:
        if fmt == "parquet":
            ddf = dd.read_parquet(source, storage_options=opts)
        else:
            ddf = dd.read_csv(source, sep="\t" if fmt == "tsv" else ",", blocksize=blocksize,
                              storage_options=opts, assume_missing=True, sample_rows=1000)
    except FileNotFoundError:
        raise NldistError(f"source {source!r} matches no files; check the path or glob") from None
    except (ValueError, OSError) as exc:
        raise NldistError(f"cannot read {source!r} as {fmt}: {type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    return list(ddf.to_delayed())

def table_xy(parts: Sequence[Any], encode: Callable, sizes: Sequence[int], d: int,
             dtype: Any, chunk_rows: int, count: str | None = None
             ) -> tuple[da.Array, da.Array, list]:
    """Lazy X (n, d), y (n,) of a table: every partition encoded (``encode(df) -> (X, y)``,
    one task each; ``sizes``: its rows after encoding, from the statistics pass) and the
    rows re-blocked into a grid of ``chunk_rows`` (a chunk reads the one or two partitions
    it spans). Also the delayed encodings, one per partition.

    Reads nothing here; every computation that uses X reads the table again (no copy).
    ``count``: each partition read is counted under that token (:func:`store_reads`).
    """
    if count:
        encode = counting.counted(encode, count)
    enc = [dask.delayed(encode, pure=True)(p) for p in parts]
    xs = [da.from_delayed(dask.delayed(lambda e: e[0], pure=True)(e), shape=(int(k), d),
                          dtype=dtype) for e, k in zip(enc, sizes, strict=True)]
    ys = [da.from_delayed(dask.delayed(lambda e: e[1], pure=True)(e), shape=(int(k),),
                          dtype=dtype) for e, k in zip(enc, sizes, strict=True)]
    X = da.concatenate(xs).rechunk((chunk_rows, d))
    y = da.concatenate(ys).rechunk((chunk_rows,))
    return X, y, enc

def write_table(parts: Sequence[Any], encode: Callable, sizes: Sequence[int], d: int,
                dtype: Any, path: str, chunk_rows: int, picks: dict[int, np.ndarray],
                key: str, resume: bool = False
                ) -> tuple[list[tuple[int, str, np.ndarray, np.ndarray]], int]:
    """Encode every partition (``encode(df) -> (X, y)``), re-block the rows into the store's
    chunk grid of ``chunk_rows`` (:func:`table_xy`) and write each chunk from one task (no
    chunk written by two), with its completion record, in one pass; each task also brings
    back its chunk's rows ``picks[chunk]`` (local indices: the reservoir).

    With ``resume`` the chunks a killed ingest finished (record of this ``key``, stored
    values still matching its SHA-256: :func:`nldist.store.dataset.verify_xy_chunk`, one
    read of the stored chunk each) are kept, and only the others are written: the
    partitions that feed only kept chunks are not read.

    Returns
    -------
    ([(chunk, SHA-256, X picks, y picks)] in chunk order, number of chunks kept)
    """
    X, y, _ = table_xy(parts, encode, sizes, d, dtype, chunk_rows)
    bounds = np.concatenate([[0], np.cumsum(X.chunks[0])]).astype(int)
    none = np.empty(0, dtype=np.int64)
    got: dict[int, tuple] = {}
    if resume:
        kept = map_tasks(verify_xy_chunk, [(path, i, int(bounds[i]), int(bounds[i + 1]), key,
                                            picks.get(i, none)) for i in range(len(bounds) - 1)])
        got = {r[0]: r for r in kept if r is not None}
    n_kept = len(got)
    writes = [dask.delayed(write_xy_chunk, pure=False)(xb, yb, i, int(bounds[i]), path, key,
                                                       picks.get(i, none))
              for i, (xb, yb) in enumerate(zip(*delayed_xy(X, y),
                                               strict=True)) if i not in got]
    for r in compute_blocks(writes):
        got[r[0]] = r
    return [got[i] for i in range(len(bounds) - 1)], n_kept
