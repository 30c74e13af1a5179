"""Resumable score outputs: per-chunk completion records in the output store.

Layout of one kind's scores inside ``OUT/scores.zarr``::

    <kind>/zarr.json         the (n,) float64 array; attrs: provenance, resume_key, complete
    <kind>/c/<i>             chunk i of the scores (the rows of X block i)
    <kind>/pass1.npz         the pass-1 result (normalizer: R factor, rank, total), keyed
    <kind>/done/<i>.json     completion record of chunk i: rows, SHA-256 of its float64
                             values, resume_key and the id of the run that wrote it

A record is written (atomically: temporary file + rename) only after its chunk is written,
so it vouches for finished data. A re-run with the same provenance (``resume_key``, which
covers the provenance and the chunking) checks every record against the stored chunk and
computes only the chunks with no record or a failed check (each logged as a warning): a
killed run loses at most the chunks in flight, and a corrupt or partially written chunk is
detected, never silently reused. A different provenance discards the whole array.

The functions that run on workers (:func:`write_chunk`, :func:`verify_chunk`) take and
return small things; :mod:`nldist.graph` maps them over blocks (and is injected where a
whole array must be written). Records, hashes and the pass-1 file use
:mod:`nldist.store.records`; nothing here unpickles or computes: the pass-1 result is stored
as arrays plus JSON (``allow_pickle=False``), and only the classes the caller names are ever
constructed from it.
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from nldist.store.records import (
    array_sha,
    digest,
    load_dataclass,
    read_record,
    save_dataclass,
    write_record,
)
from nldist.store.remote import as_path, open_array, open_group, rmtree

log = logging.getLogger("nldist")


def resume_key(prov: dict, chunks: tuple[int, ...]) -> str:
    """Digest of the provenance and the row chunking that chunk records must match."""
    return digest({"prov": prov, "chunks": [int(c) for c in chunks]})


def write_chunk(block: np.ndarray, i: int, start: int, array_path: str, key: str,
                run_id: str) -> tuple[int, str]:
    """Write one chunk of scores, then its completion record (runs on a worker).

    Parameters
    ----------
    block : ndarray (n_i,)
        The chunk's values (rows ``start .. start + n_i``).
    i : int
        Chunk index (aligned with the array's chunks).
    start : int
        First row of the chunk.
    array_path : str
        The Zarr array directory ``OUT/scores.zarr/<kind>``.
    key, run_id : str
        The store's resume key and the writing run's id, copied into the record.

    Returns
    -------
    (i, sha256 of the values)
    """
    block = np.asarray(block, dtype=np.float64)
    arr = open_array(array_path, mode="r+")
    stop = start + block.shape[0]
    arr[start:stop] = block
    sha = array_sha(block)
    write_record(array_path, i, {"chunk": int(i), "start": int(start), "stop": int(stop),
                                 "sha256": sha, "key": key, "run": run_id})
    return int(i), sha


def verify_chunk(array_path: str, i: int, start: int, stop: int, key: str) -> str:
    """Check chunk i against its record (runs on a worker).

    Returns
    -------
    ``"ok"``, ``"missing"`` (no record: never finished), or the reason the check failed.
    """
    rec = read_record(array_path, i)
    if rec is None:
        return "missing"
    if rec.get("key") != key:
        return "record of another provenance"
    if (rec.get("start"), rec.get("stop")) != (start, stop):
        return "record of other rows"
    try:
        values = open_array(array_path, mode="r")[start:stop]
    except Exception as exc:  # noqa: BLE001 - a damaged chunk raises codec-specific errors
        return f"unreadable chunk ({type(exc).__name__})"
    if array_sha(values) != rec.get("sha256"):
        return "checksum mismatch"
    return "ok"


def path_name(name: str) -> str:
    """The kind as a file or Zarr key name: ``block-sketch:4`` -> ``block-sketch-4`` (a colon
    is not allowed in Windows file names and needs escaping in URLs); other kinds unchanged.
    No two kinds share a path name (no base kind ends in ``-<digits>``)."""
    return name.replace(":", "-")


# --------------------------------------------------------------------------------------
# one kind's resumable score array
# --------------------------------------------------------------------------------------


class ChunkedScores:
    """The (n,) score array of one kind in ``OUT/scores.zarr``, written chunk by chunk.

    Parameters
    ----------
    store : Path
        ``OUT/scores.zarr`` (a Zarr v3 group; created if absent).
    kind : str
    prov : dict
        Provenance of these scores (kind, model, theta digest, dataset key, n, ...).
    chunks : tuple of int
        Row chunks of X; the array gets the same chunking (one record per chunk).
    run_id : str
        Id of the writing run, kept in each record it writes.

    Attributes
    ----------
    stats : dict
        ``chunks`` (total), ``reused`` (verified records), ``computed`` (written by this
        run), ``invalid`` (records that failed their check) and ``pass1`` (``"reused"`` or
        ``"computed"``): how much work a resumed run skipped.
    """

    def __init__(self, store: Path, kind: str, prov: dict, chunks: tuple[int, ...],
                 run_id: str) -> None:
        self.store = as_path(store)
        self.kind = kind
        self.path = self.store / path_name(kind)
        self.chunks = tuple(int(c) for c in chunks)
        self.starts = np.concatenate([[0], np.cumsum(self.chunks)[:-1]]).astype(int).tolist()
        self.key = resume_key(prov, self.chunks)
        self.run_id = run_id
        self.stats = {"chunks": len(self.chunks), "reused": 0, "computed": 0, "invalid": 0,
                      "pass1": None}
        self.valid: set[int] = set()
        self.array = None
        #: an array of other inputs (or an unreadable one) was replaced
        self.replaced = False
        try:
            arr = open_array(self.path, mode="r+")
            if arr.attrs.get("resume_key") == self.key:
                self.array = arr
            else:
                self.replaced = True
                log.info("scores.zarr/%s was made for other inputs; recomputing it", kind)
        except Exception:  # noqa: BLE001 - absent or unreadable: start afresh
            if self.path.exists():
                self.replaced = True
                log.warning("scores.zarr/%s is unreadable; recomputing it", kind)
        if self.array is None:
            rmtree(self.path)
            root = open_group(self.store, mode="a", zarr_format=3)
            n = int(sum(self.chunks))
            size = max(1, max(self.chunks))
            self.array = root.create_array(path_name(kind), shape=(n,), chunks=(size,),
                                           dtype="float64", overwrite=True)
            self.array.attrs.update({**prov, "resume_key": self.key, "complete": False})
        self.attrs = dict(self.array.attrs)
        if not self.aligned:
            log.info("X chunks are irregular; scores of %s are written in one piece", kind)

    @property
    def aligned(self) -> bool:
        """Every X block is exactly one array chunk (regular chunks, ragged last one)."""
        size = self.array.chunks[0]
        return all(c == size for c in self.chunks[:-1]) and self.chunks[-1] <= size

    def check(self, verify: Any) -> None:
        """Check every record with ``verify(func, arg_tuples) -> results``; fills ``valid``."""
        if not self.aligned or not (self.path / "done").is_dir():
            return
        todo = [(str(self.path), i, s, s + c, self.key)
                for i, (s, c) in enumerate(zip(self.starts, self.chunks, strict=True))]
        for (_, i, s, e, _), res in zip(todo, verify(verify_chunk, todo), strict=True):
            if res == "ok":
                self.valid.add(i)
            elif res != "missing":
                self.stats["invalid"] += 1
                log.warning("scores.zarr/%s chunk %d (rows %d..%d): %s; recomputing it",
                            self.kind, i, s, e - 1, res)
        self.stats["reused"] = len(self.valid)

    @property
    def finished(self) -> bool:
        """Complete, and every chunk verified."""
        return bool(self.attrs.get("complete")) and len(self.valid) == len(self.chunks)

    @property
    def todo(self) -> list[int]:
        """Chunks this run must compute."""
        return [i for i in range(len(self.chunks)) if i not in self.valid]

    def load_pass1(self, classes: dict[str, type]) -> Any:
        """The stored pass-1 result of these inputs (built from ``classes`` only), or None."""
        norm = load_dataclass(self.path / "pass1.npz", self.key, classes)
        if norm is not None:
            self.stats["pass1"] = "reused"
        return norm

    def stored_pass1(self, classes: dict[str, type]) -> Any:
        """The stored pass-1 result (or None), without counting it as reused."""
        return load_dataclass(self.path / "pass1.npz", self.key, classes)

    def save_pass1(self, norm: Any, classes: dict[str, type]) -> None:
        """Store the pass-1 result (a dataclass of ``classes``) beside the array."""
        self.stats["pass1"] = "computed"
        if not save_dataclass(self.path / "pass1.npz", norm, self.key, classes):
            log.info("pass-1 result of %s not stored (unsupported field type)", self.kind)

    def write(self, probs: Any, store_chunks: Any, store_whole: Any) -> None:
        """Compute and write the missing chunks of ``probs`` (a lazy (n,) array).

        ``store_chunks(probs, blocks, func, *args, starts=...)`` (from :mod:`nldist.graph`)
        runs ``func(block, i, start, *args)`` for the selected blocks on the cluster;
        ``store_whole(probs, array)`` writes all of it (irregular chunks).
        """
        blocks = self.todo
        if not blocks:
            return
        if not self.aligned:  # cannot write block by block without chunk races
            store_whole(probs, self.array)
            self.stats["computed"] = len(self.chunks)
            return
        done = store_chunks(probs, blocks, write_chunk, str(self.path), self.key, self.run_id,
                            starts=self.starts)
        self.valid.update(i for i, _ in done)
        self.stats["computed"] = len(done)

    def sink(self) -> tuple | None:
        """``(func, args, blocks)`` for a pass that writes the missing chunks as it goes
        (:func:`nldist.graph.draws.sample_pass`): ``func(block, i, start, *args)`` is
        :func:`write_chunk`; None when the chunks are irregular (no chunk-wise writes)."""
        if not self.aligned:
            return None
        return write_chunk, (str(self.path), self.key, self.run_id), self.todo

    def stored(self, done: list[tuple[int, str]]) -> None:
        """Record the chunks a :meth:`sink` pass wrote."""
        self.valid.update(i for i, _ in done)
        self.stats["computed"] = len(done)

    def finish(self, attrs: dict) -> None:
        """Mark the array complete with its final attributes."""
        self.array.attrs.update({**attrs, "resume_key": self.key, "complete": True})
        self.attrs = dict(self.array.attrs)


def new_run_id() -> str:
    """A fresh id for the chunk records a run writes."""
    return uuid.uuid4().hex[:12]
