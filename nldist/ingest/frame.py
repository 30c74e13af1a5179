"""The in-memory ingest: a table that fits in memory (a packaged dataset or one file) as
numeric X (n, d), y (n,) and provenance attrs (:func:`prepare`), written through
:mod:`nldist.store.dataset` (:func:`ingest`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nldist.ingest.plan import (
    check_options,
    encode_partition,
    make_plan,
    merge_stats,
    partition_stats,
)
from nldist.ingest.sources import read_source
from nldist.options import IngestOptions
from nldist.store.dataset import RESERVOIR_ROWS, check_out, read_attrs, write_dataset


def prepare(
    df: pd.DataFrame,
    target: str | None = None,
    *,
    options: IngestOptions | None = None,
    **settings: Any,
) -> tuple[np.ndarray, np.ndarray, dict]:
    """Turn a table into numeric X (n, d), y (n,) and provenance attrs: the table as ONE
    partition through the distributed ingest's plan (:mod:`nldist.ingest.plan`), so both
    paths give the same columns, errors and attrs.

    :func:`~nldist.ingest.plan.partition_stats` (missing and infinite values, text levels,
    per-column moments) → :func:`~nldist.ingest.plan.merge_stats` (one partition: its
    moments unchanged) → :func:`~nldist.ingest.plan.make_plan` (one-hot columns; a text
    column with more than ``onehot_max_levels`` levels as one column of integer codes after
    the others, sorted levels in ``attrs["codes"]``; the target's classes; standardization
    means and scales) → :func:`~nldist.ingest.plan.encode_partition`. Missing values are an
    error unless ``dropna``.

    Parameters
    ----------
    target : str, optional
        The target column (overrides ``options.target``: a source's default target).
    options : IngestOptions, optional
        The settings (:class:`nldist.options.IngestOptions`), or give them as keywords
        (``features``, ``classes``, ``dropna``, ``standardize``, ``standardize_target``,
        ``dtype``, ``onehot_max_levels``; ``chunk_rows`` is the write's).
    """
    o = IngestOptions.of("prepare", options, **settings)
    target = target if target is not None else o.target
    check_options(target, o.classes, o.standardize_target)
    opts = {"features": o.features, "classes": o.classes, "dropna": o.dropna}
    stats = merge_stats([partition_stats(df, None, target, **opts)])
    plan = make_plan(stats, target, o.classes, o.dropna, o.standardize, o.standardize_target,
                     o.dtype, o.onehot_max_levels)
    X, y = encode_partition(df, plan, **opts)
    return X, y, dict(plan["attrs"])


def ingest(
    source: str | Path,
    out: str | Path,
    *,
    options: IngestOptions | None = None,
    overwrite: bool = False,
    reservoir: int = RESERVOIR_ROWS,
    seed: int = 0,
    **settings: Any,
) -> Path:
    """Ingest a packaged dataset or a CSV/Parquet/NPZ/NPY file into a Zarr dataset.

    Parameters
    ----------
    source : str or Path
        A packaged dataset name (``nldist.datasets.DATASETS``) or a file path.
    out : str or Path
        The Zarr group to write (must not exist unless ``overwrite``).
    options : IngestOptions, optional
        The settings (:class:`nldist.options.IngestOptions`: target — default the packaged
        dataset's, ``y`` of an .npz, the last .npy column —, features, classes, dropna,
        standardize, standardize_target, chunk_rows, dtype, onehot_max_levels), or give
        them as keywords.
    reservoir, seed : int
        Rows (and seed) of the uniform sample written beside X for the pilot
        (:func:`nldist.store.dataset.write_dataset`; 0: none).

    Returns
    -------
    Path of the written group.
    """
    o = IngestOptions.of("ingest", options, **settings)
    out = check_out(out, overwrite)  # before reading the source
    df, meta = read_source(source, o.target)
    X, y, attrs = prepare(df, meta["target"], options=o)
    attrs.update({k: v for k, v in meta.items() if k != "target" and v is not None})
    return write_dataset(out, X, y, attrs, chunk_rows=o.chunk_rows, overwrite=overwrite,
                         reservoir=reservoir, seed=seed)


def dataset_attrs(path: str | Path) -> dict:
    """What ingest recorded about a dataset: n_rows, n_features, chunk_rows, columns, ..."""
    return read_attrs(path)
