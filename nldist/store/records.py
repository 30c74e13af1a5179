"""The one record format of every output nldist writes and may reuse.

Everything a later run may reuse (score chunks, persisted dual blocks, the pass-1 result,
stage caches, the dataset) is written the same way and checked the same way:

* **atomic write**: to a temporary name in the same directory, then ``os.replace``; a
  killed writer leaves the old file or none, never a half-written one;
* **sha256**: of the payload's float64 bytes (:func:`array_sha`), kept in the record;
* **digest**: a short hash of the inputs the output depends on (:func:`digest`); a record
  with another digest is stale and ignored;
* **completion record**: a JSON file ``<dir>/done/<i>.json`` written after its payload,
  so a record vouches for finished data (:func:`write_record` / :func:`read_record`).

Nothing here computes or imports a compute module: payloads are arrays and JSON.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from pathlib import Path
from typing import Any

import numpy as np

from nldist.store.remote import as_path, is_remote, write_bytes_atomic


def digest(data: Any, length: int = 32) -> str:
    """Short SHA-256 of a JSON-able value (sorted keys): the provenance key of an output."""
    text = json.dumps(data, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def array_sha(values: np.ndarray) -> str:
    """SHA-256 of an array's values as contiguous float64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(values, dtype=np.float64).tobytes()).hexdigest()


def array_digest(values: np.ndarray) -> str:
    """Short (16 hex digits) :func:`array_sha`: the digest of a theta vector."""
    return array_sha(values)[:16]


def file_fingerprint(path: str | Path, block: int = 1 << 22) -> dict:
    """Size, mtime (an object's ETag on object storage) and SHA-256 (streamed) of a file:
    what a cache keyed on it depends on."""
    p = as_path(path)
    h = hashlib.sha256()
    with p.open("rb") as f:
        for chunk in iter(lambda: f.read(block), b""):
            h.update(chunk)
    if is_remote(p):
        info = p.fs.info(p.path)
        return {"size": int(info.get("size") or 0), "etag": str(info.get("ETag", "")),
                "sha256": h.hexdigest()}
    st = p.stat()
    return {"size": int(st.st_size), "mtime_ns": int(st.st_mtime_ns), "sha256": h.hexdigest()}


def tree_fingerprint(path: str | Path) -> str:
    """Digest of every file under a directory by relative path, size and mtime (stat only,
    nothing read; on object storage by size and ETag): changes when any file of a Zarr
    store is rewritten."""
    root = as_path(path)
    if is_remote(root):
        found = root.fs.find(root.path, detail=True)
        base = root.path.rstrip("/") + "/"
        return digest(sorted((k[len(base):] if k.startswith(base) else k,
                              int(v.get("size") or 0), str(v.get("ETag", "")))
                             for k, v in found.items() if v.get("type") != "directory"))
    items = sorted((str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                   for f in root.rglob("*") if f.is_file())
    return digest(items)


def atomic_write(path: Path, text: str) -> None:
    """Write text to path through a temporary file and a rename (creates the directory; one
    PUT on object storage: :func:`nldist.store.remote.write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode())


def append_text(path: Any, text: str) -> None:
    """Append text to a log file (on object storage, which cannot append: the file is
    read and written again whole — for small logs only)."""
    p = as_path(path)
    if is_remote(p):
        old = p.read_text() if p.exists() else ""
        p.write_text(old + text)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("a") as fh:
        fh.write(text)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def write_json(path: Path, data: Any) -> None:
    """JSON (indented, NumPy scalars and arrays converted) written atomically."""
    atomic_write(path, json.dumps(data, indent=2, sort_keys=False, default=_json_default))


def _npz_bytes(**arrays: Any) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def save_npz(path: Path, **arrays: Any) -> None:
    """``np.savez`` written atomically (read back with ``allow_pickle=False``)."""
    write_bytes_atomic(path, _npz_bytes(**arrays))


def save_npy(path: Path, values: np.ndarray) -> None:
    """``np.save`` written atomically (local disk or object storage)."""
    buf = io.BytesIO()
    np.save(buf, np.asarray(values))
    write_bytes_atomic(path, buf.getvalue())


def load_npz(path: Any) -> Any:
    """``np.load`` of an ``.npz`` (local or on object storage), ``allow_pickle=False``."""
    p = as_path(path)
    return np.load(io.BytesIO(p.read_bytes()) if is_remote(p) else p, allow_pickle=False)


def record_path(directory: str | Path, i: int) -> Path:
    """Where the completion record of item i of ``directory`` lives."""
    return as_path(directory) / "done" / f"{i}.json"


def write_record(directory: str | Path, i: int, fields: dict) -> None:
    """The completion record of item i (written after its payload)."""
    atomic_write(record_path(directory, i), json.dumps(fields))


def read_record(directory: str | Path, i: int) -> dict | None:
    """The completion record of item i, or None when absent or unreadable."""
    try:
        rec = json.loads(record_path(directory, i).read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) else None


# --------------------------------------------------------------------------------------
# small dataclasses (a pass-1 result) as arrays + JSON, no pickle
# --------------------------------------------------------------------------------------


def _encode(obj: Any, prefix: str, meta: dict, arrays: dict, classes: dict) -> None:
    meta[prefix] = {"__class__": type(obj).__name__}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        name = f"{prefix}.{f.name}"
        if dataclasses.is_dataclass(v):
            if type(v).__name__ not in classes:
                raise TypeError(type(v))
            meta[prefix][f.name] = {"__dataclass__": name}
            _encode(v, name, meta, arrays, classes)
        elif isinstance(v, np.ndarray):
            arrays[name] = v
            meta[prefix][f.name] = {"__array__": name}
        else:
            meta[prefix][f.name] = json.loads(json.dumps(v, default=_json_default))


def _decode(prefix: str, meta: dict, arrays: Any, classes: dict) -> Any:
    spec = meta[prefix]
    cls = classes[spec["__class__"]]
    kw = {}
    for f in dataclasses.fields(cls):
        v = spec.get(f.name)
        if isinstance(v, dict) and "__dataclass__" in v:
            v = _decode(v["__dataclass__"], meta, arrays, classes)
        elif isinstance(v, dict) and "__array__" in v:
            v = np.array(arrays[v["__array__"]])
        kw[f.name] = v
    return cls(**kw)


def save_dataclass(path: Path, obj: Any, key: str, classes: dict[str, type]) -> bool:
    """Store a (nested) dataclass as arrays + JSON atomically, keyed; False (nothing
    written) when it holds a dataclass not in ``classes`` (name -> class)."""
    meta: dict = {}
    arrays: dict = {}
    try:
        _encode(obj, "norm", meta, arrays, classes)
    except TypeError:
        return False
    write_bytes_atomic(path, _npz_bytes(__meta__=np.array(json.dumps(meta)),
                                        __key__=np.array(key), **arrays))
    return True


def load_dataclass(path: Path, key: str, classes: dict[str, type]) -> Any:
    """A dataclass stored with this key (only ``classes`` are ever constructed), or None
    (absent, other key, or unreadable)."""
    try:
        with load_npz(path) as z:
            if str(z["__key__"]) != key:
                return None
            meta = json.loads(str(z["__meta__"]))
            return _decode("norm", meta, z, classes)
    except Exception:  # noqa: BLE001 - absent, truncated or foreign file: recompute
        return None
