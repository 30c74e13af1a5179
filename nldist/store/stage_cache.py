"""Stage caches: small outputs of a pipeline stage (theta*, the pilot theta_0, a sample),
reused by a later run only when their recorded key matches.

One ``.npz`` per stage, written atomically (:func:`nldist.store.records.save_npz`) with
its key (a digest of the job fields the stage depends on) and read with
``allow_pickle=False``; a file with another key, or one that cannot be read, is a miss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from nldist.store.records import load_npz, save_npz


def load(path: Path, key: str) -> dict[str, Any] | None:
    """The arrays of a cached stage output with this key (``info`` decoded from JSON), or
    None (absent, another key, unreadable)."""
    if not path.exists():
        return None
    try:
        with load_npz(path) as z:
            if str(z["key"]) != key:
                return None
            out = {k: z[k] for k in z.files if k != "key"}
    except Exception:  # noqa: BLE001 - truncated or foreign file: recompute
        return None
    if "info" in out:
        out["info"] = json.loads(str(out["info"]))
    return out


def save(path: Path, key: str, info: dict | None = None, **arrays: Any) -> None:
    """Cache a stage output under ``key`` (``info`` stored as JSON)."""
    extra = {} if info is None else {"info": json.dumps(info)}
    save_npz(path, key=key, **arrays, **extra)
