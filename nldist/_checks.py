"""Cheap input checks shared by every ring: finiteness of a block, the job's random state.

Each raises a one-line :class:`nldist.errors.NldistError` that names the fix.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from nldist.errors import NldistError


def check_finite_block(X: np.ndarray, y: np.ndarray | None, offset: int = 0) -> None:
    """Raise a one-line error if a block holds NaN/inf, naming the first bad row."""
    bad = ~np.isfinite(X).all(axis=1)
    if y is not None:
        fin = np.isfinite(y)
        bad |= ~(fin.all(axis=1) if fin.ndim == 2 else fin)  # 2-D: multi-output targets
    if bad.any():
        first = int(np.argmax(bad)) + offset
        raise NldistError(
            f"data contain NaN or inf in {int(bad.sum())} row(s) of rows "
            f"{offset}..{offset + len(bad) - 1} (first bad row {first}); drop or impute them, "
            "e.g. `nldist ingest ... --dropna`"
        )


def as_rng(random_state: Any) -> np.random.Generator:
    """A Generator from an int, None, SeedSequence or Generator (the job's one random_state)."""
    if isinstance(random_state, np.random.Generator):
        return random_state
    try:
        return np.random.default_rng(random_state)
    except (TypeError, ValueError):
        raise NldistError(
            "random_state must be an int, a SeedSequence or a numpy Generator, "
            f"got {random_state!r}"
        ) from None
