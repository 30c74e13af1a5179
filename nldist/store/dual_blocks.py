"""Persisted dual blocks: a scratch Zarr store that carries pass 1's blocks to pass 2.

Exact scores read X twice (:mod:`nldist.graph`, :mod:`nldist.scores.block`): pass 1 builds
each chunk's matrix block (the dual block ``[F*(theta), f(0) - y]``) for the global R, pass 2
builds it again for the per-row scores. For closed-form models rebuilding costs about a copy
of X; for ``torch:`` models (quadrature, :mod:`nldist.models.quadrature`) it costs far more
than writing the block to disk and reading it back. With ``persist`` (``"never" | "always" |
"auto"``) pass 1 writes blocks here and pass 2 reads them instead of rebuilding; ``"auto"``
decides per chunk from measured times (:func:`decide`).

Layout of one store (a Zarr v3 group; attrs ``nldist_scratch: true`` and ``key``)::

    <root>/b<i>/             chunk i's block, an uncompressed (n_i, q) float64 Zarr array
    <root>/done/<i>.json     its completion record: rows, cols, SHA-256 of the float64
                             values and the store key (:mod:`nldist.store.records`)

A block is written under a temporary name and renamed into place; its record is written
(atomically) only afterwards, so a record vouches for a whole block. Pass 2 uses a block
only when its record has the store's key and shape and the values read back hash to the
recorded SHA-256; a missing, truncated or corrupt block is rebuilt from X (a warning for a
damaged one), never silently used. The key is a provenance digest (kind, model, theta,
data, chunking, quadrature settings): a store of other inputs is deleted, not reused.

Workers write only into a root that already exists (the driver creates it): a worker that
does not see the driver's filesystem skips persisting (the chunk is rebuilt in pass 2)
rather than leaving files behind on its machine.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from nldist._budget import dual_chunk_rows as chunk_rows
from nldist.errors import BadBlock, NldistError
from nldist.store.records import array_sha, atomic_write, read_record, record_path
from nldist.store.remote import is_remote

log = logging.getLogger("nldist")

PERSIST_MODES = ("never", "always", "auto")

#: bytes of the larger calibration round trip of :func:`io_cost`
PROBE_BYTES = 4 * 2**20


def check_mode(mode: str) -> str:
    """Return mode or raise a one-line error listing the allowed values."""
    if mode not in PERSIST_MODES:
        raise NldistError(f"persist must be one of {', '.join(PERSIST_MODES)}, got {mode!r}")
    return mode


@dataclass(frozen=True)
class DualStore:
    """Where pass 1 persists dual blocks and how it decides (travels to the workers).

    Attributes
    ----------
    path : str
        Root directory of the store (created by the driver: :func:`prepare`).
    key : str
        Provenance digest; records with another key are ignored.
    mode : {"always", "auto"}
        ``"always"`` persists every block, ``"auto"`` those whose measured build time
        exceeds the estimated write + read time (:func:`decide`).
    owner : object, optional
        Keeps a temporary directory alive in the driver process (:func:`temporary`); not
        sent to workers.
    """

    path: str
    key: str
    mode: str = "auto"
    owner: Any = field(default=None, compare=False, repr=False)

    def __reduce__(self) -> tuple:
        return (DualStore, (self.path, self.key, self.mode))

    def __dask_tokenize__(self) -> tuple:
        return ("nldist.DualStore", self.path, self.key, self.mode)

    # the sink / source interface of nldist.scores.block
    def available(self) -> bool:
        """The store's root is visible on this machine."""
        return Path(self.path).is_dir()

    def decide(self, rows: int, q: int, build_s: float) -> tuple[bool, float | None]:
        """See :func:`decide`."""
        return decide(self, rows, q, build_s)

    def write(self, i: int, A: np.ndarray) -> float | None:
        """See :func:`write_block`."""
        return write_block(self, i, A)

    def iter_block(self, i: int, n: int, q: int, slices: list[slice]
                   ) -> Iterator[tuple[slice, np.ndarray]]:
        """See :func:`iter_block`."""
        return iter_block(self, i, n, q, slices)


class _TempDir:
    """A temporary directory removed when this object is garbage-collected (or at exit)."""

    def __init__(self) -> None:
        self.path = tempfile.mkdtemp(prefix="nldist-dual-")
        self._fin = weakref.finalize(self, shutil.rmtree, self.path, ignore_errors=True)

    def cleanup(self) -> None:
        """Remove the directory now."""
        self._fin()


def prepare(root: str | Path, key: str, mode: str) -> DualStore:
    """Create (or reuse, when its key matches) the store at root on the driver.

    A store made for other inputs (another key) or not readable is deleted first.

    Parameters
    ----------
    root : str or Path
    key : str
        Provenance digest of the blocks.
    mode : {"always", "auto"}

    Returns
    -------
    DualStore
    """
    root = Path(root)
    meta = root / "zarr.json"
    try:
        attrs = json.loads(meta.read_text()).get("attributes", {})
    except (OSError, ValueError):
        attrs = None
    if attrs is None or attrs.get("key") != key:
        if root.exists():
            log.info("%s holds dual blocks of other inputs; deleting it", root)
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True, exist_ok=True)
        doc = {"zarr_format": 3, "node_type": "group", "attributes": {
            "nldist_scratch": True, "key": key,
            "about": "dual blocks persisted between pass 1 and pass 2 of exact scores; "
                     "removed when the scores are complete; safe to delete"}}
        atomic_write(meta, json.dumps(doc, indent=2))
    return DualStore(str(root), key, check_mode(mode))


def temporary(mode: str) -> DualStore:
    """A store in a fresh temporary directory, removed when the store is garbage-collected.

    For the Python API without an output directory: the returned store (through its
    ``owner``) keeps the directory alive while a lazy pass-2 graph references it.
    """
    tmp = _TempDir()
    store = prepare(tmp.path, uuid.uuid4().hex, mode)
    return DualStore(store.path, store.key, store.mode, owner=tmp)


def remove(store: DualStore | str | Path | None) -> None:
    """Delete a store (and its parent directory when that is left empty)."""
    if store is None:
        return
    path = store.path if isinstance(store, DualStore) else store
    if is_remote(path):  # never made there (dual_store keeps blocks off object storage)
        return
    path = Path(path)
    shutil.rmtree(path, ignore_errors=True)
    try:
        path.parent.rmdir()  # only when empty (OUT/dual.zarr.partial)
    except OSError:
        pass


# --------------------------------------------------------------------------------------
# worker side: write, read, cost model
# --------------------------------------------------------------------------------------


def _block_path(store: DualStore, i: int) -> Path:
    return Path(store.path) / f"b{int(i)}"


def _write_array(path: Path, A: np.ndarray) -> None:
    arr = zarr.create_array(store=str(path), shape=A.shape,
                            chunks=(max(1, chunk_rows(A.shape[1])), max(1, A.shape[1])),
                            dtype="float64", compressors=None, filters=None, fill_value=0.0,
                            zarr_format=3, overwrite=True)
    arr[...] = A


def write_block(store: DualStore, i: int, A: np.ndarray) -> float | None:
    """Persist chunk i's block A (n_i, q) float64: array, rename, then its record.

    Returns
    -------
    float or None
        Seconds taken, or None when nothing was persisted (the root is not visible on this
        machine, or the write failed: then the chunk is rebuilt in pass 2).
    """
    root = Path(store.path)
    if not root.is_dir():
        return None
    t0 = time.perf_counter()
    final = _block_path(store, i)
    tmp = root / f".b{int(i)}.{uuid.uuid4().hex}.tmp"
    record = record_path(root, i)
    try:
        record.unlink(missing_ok=True)  # the old block is no longer vouched for
        _write_array(tmp, A)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        atomic_write(record, json.dumps(
            {"chunk": int(i), "rows": int(A.shape[0]), "cols": int(A.shape[1]),
             "sha256": array_sha(A), "key": store.key}))
    except OSError as exc:
        log.warning("dual block %d not persisted (%s); pass 2 rebuilds it", i, exc)
        shutil.rmtree(tmp, ignore_errors=True)
        return None
    return time.perf_counter() - t0


def iter_block(
    store: DualStore, i: int, n: int, q: int, slices: list[slice]
) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield ``(s, A[s])`` of chunk i's persisted block for consecutive row slices.

    Each ``A[s]`` is a C-contiguous float64 view the caller may overwrite. The values are
    hashed as they are read; after the last slice the hash is compared with the record.

    Raises
    ------
    FileNotFoundError
        No record: the block was never (completely) persisted.
    BadBlock
        The record or the data do not match (other key or shape, unreadable, truncated,
        or a checksum mismatch). Slices already yielded must then be discarded.
    """
    rec = read_record(store.path, i)
    if rec is None:
        raise FileNotFoundError(i)
    if rec.get("key") != store.key:
        raise BadBlock("record of other inputs")
    if (rec.get("rows"), rec.get("cols")) != (n, q):
        raise BadBlock(f"record of shape ({rec.get('rows')}, {rec.get('cols')}), "
                       f"expected ({n}, {q})")
    try:
        arr = zarr.open_array(str(_block_path(store, i)), mode="r")
    except Exception as exc:  # noqa: BLE001 - missing or damaged metadata
        raise BadBlock(f"unreadable ({type(exc).__name__})") from None
    if tuple(arr.shape) != (n, q) or arr.dtype != np.float64:
        raise BadBlock(f"array of shape {tuple(arr.shape)} and dtype {arr.dtype}")
    h = hashlib.sha256()
    per = chunk_rows(q)
    k = 0
    while k < len(slices):  # windows of whole slices, about one Zarr chunk each
        j = k + 1
        while j < len(slices) and slices[j].stop - slices[k].start <= per:
            j += 1
        a, b = slices[k].start, slices[j - 1].stop
        try:
            W = np.ascontiguousarray(arr[a:b], dtype=np.float64)
        except Exception as exc:  # noqa: BLE001 - truncated chunks raise codec errors
            raise BadBlock(f"unreadable rows {a}..{b - 1} ({type(exc).__name__})") from None
        if W.shape != (b - a, q):
            raise BadBlock(f"rows {a}..{b - 1} read as shape {W.shape}")
        if not W.flags.writeable:
            W = W.copy()
        for s in slices[k:j]:
            V = W[s.start - a : s.stop - a]
            h.update(memoryview(V).cast("B"))
            yield s, V
        k = j
    if h.hexdigest() != rec.get("sha256"):
        raise BadBlock("checksum mismatch")


# calibration per process and directory holding stores: (seconds per round trip, per byte)
_COST: dict[str, tuple[float, float]] = {}


def _round_trip(store: DualStore, A: np.ndarray) -> float:
    """Seconds to write A like a block, read it back and hash it (then delete it)."""
    path = Path(store.path) / f".probe.{uuid.uuid4().hex}"
    t0 = time.perf_counter()
    try:
        _write_array(path, A)
        back = np.ascontiguousarray(zarr.open_array(str(path), mode="r")[...])
        array_sha(back)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(path, ignore_errors=True)


#: floor of the per-byte I/O cost (4 GB/s)
MIN_SECONDS_PER_BYTE = 1.0 / 4e9


def io_cost(store: DualStore, rows: int, q: int) -> float | None:
    """Estimated seconds to persist a (rows, q) float64 block and read + verify it in pass 2.

    ``a + b * bytes`` from two measured round trips (one row; :data:`PROBE_BYTES`) into the
    store, done once per worker process and directory of stores (``OUT/dual.zarr.partial``,
    the temporary directory). None when the store is not visible here.
    """
    if not Path(store.path).is_dir():
        return None
    where = str(Path(store.path).parent)
    cal = _COST.get(where)
    if cal is None:
        qq = max(q, 1)
        big = np.random.default_rng(0).standard_normal((max(2, PROBE_BYTES // (8 * qq)), qq))
        try:
            t_small = min(_round_trip(store, big[:1]) for _ in range(2))
            t_big = _round_trip(store, big)
        except OSError:
            return None
        # at least the cost of moving the bytes at 4 GB/s: two timings of a fast store can
        # come out in either order, and an estimate must still grow with the block
        per_byte = max(max(t_big - t_small, 0.0) / max(1, big.nbytes - 8 * qq),
                       MIN_SECONDS_PER_BYTE)
        cal = (t_small, per_byte)
        _COST[where] = cal
    return cal[0] + cal[1] * 8.0 * rows * q


def decide(store: DualStore, rows: int, q: int, build_s: float) -> tuple[bool, float | None]:
    """Whether to persist a (rows, q) block that took ``build_s`` seconds to build.

    ``"always"``: yes (when the store is visible on this machine). ``"auto"``: when
    rebuilding it in pass 2 (``build_s``) is estimated to cost more than writing it now and
    reading it back (:func:`io_cost`).

    Returns
    -------
    (persist, estimated write + read seconds or None)
    """
    est = io_cost(store, rows, q) if store.mode == "auto" else None
    if not Path(store.path).is_dir():
        return False, est
    if store.mode == "always":
        return True, est
    return (est is not None and build_s > est), est
