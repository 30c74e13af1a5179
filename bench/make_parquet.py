"""Build a tall multi-file Parquet table from flights-3m for the distributed-ingest benchmark.

How the data is made (exactly):

1. The real table is ``nldist.datasets.load("flights_3m")`` (``nldist fetch flights_3m``:
   flights-3m.parquet of the npm package vega-datasets@3.2.1, US on-time flights 2001,
   3,000,000 rows): the four numeric features ``distance``, ``dep_hour``, ``weekday`` and
   ``day_of_year`` and the target ``delay`` (minutes), all float64.
2. File ``k`` (k = 0 .. F-1) takes ``m`` rows drawn uniformly **with replacement** from the
   3,000,000 by ``numpy.random.default_rng([seed, k])`` (default seed 0), so every file is
   reproducible on its own and any prefix of files is the same whatever ``F`` is.
3. Every drawn feature value gets i.i.d. Gaussian noise of sd ``noise`` (default 0.05) times
   that column's standard deviation in the real table, from the same generator (drawn after
   the row indices), so no two rows are identical and the columns do not compress to
   nothing; ``delay`` is copied unchanged.
4. The file is written as ``part-{k:05d}.parquet`` (pyarrow, snappy, one row group of ``m``
   rows, columns in the order above) under ``--out`` (default ``bench/data/flights_parquet``,
   git-ignored), through ``.part-*.tmp`` and a rename. One file is in memory at a time
   (plus the 3,000,000-row base table); files already there with the right row count are
   kept, so an interrupted build resumes. ``OUT.json`` beside the directory records the
   settings, the feature sds and the bytes written.

Usage::

    .venv/bin/nldist fetch flights_3m
    .venv/bin/python bench/make_parquet.py --files 100 --rows 1000000   # 100M rows, ~4 GB
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FEATURES = ["distance", "dep_hour", "weekday", "day_of_year"]
TARGET = "delay"


def base_table() -> tuple[np.ndarray, np.ndarray]:
    """The real flights-3m table.

    Returns
    -------
    base : ndarray, shape (3000000, 5)
        The features in :data:`FEATURES` order, then the target, float64.
    sd : ndarray, shape (4,)
        Standard deviation of each feature column (the noise's unit).
    """
    from nldist import datasets

    df, _ = datasets.load("flights_3m")
    base = df[FEATURES + [TARGET]].to_numpy(np.float64)
    return base, base[:, :4].std(axis=0)


def make_file(base: np.ndarray, sd: np.ndarray, k: int, rows: int, seed: int,
              noise: float) -> dict[str, np.ndarray]:
    """The columns of file ``k`` (see the module docstring).

    Parameters
    ----------
    base, sd : ndarray
        From :func:`base_table`.
    k : int
        File number (part of the generator's seed).
    rows : int
        Rows of the file.
    seed : int
        Seed of the whole table.
    noise : float
        Noise sd in units of each feature column's sd.

    Returns
    -------
    dict
        Column name to float64 array of ``rows`` values.
    """
    rng = np.random.default_rng([seed, k])
    idx = rng.integers(0, base.shape[0], size=rows)
    block = base[idx]
    block[:, :4] += rng.standard_normal((rows, 4)) * (noise * sd)
    return {c: np.ascontiguousarray(block[:, j]) for j, c in enumerate(FEATURES + [TARGET])}


def write_file(cols: dict[str, np.ndarray], path: Path) -> None:
    """Write one Parquet file (one row group) through a temporary name and a rename.

    Parameters
    ----------
    cols : dict
        Column name to array.
    path : Path
        Final file path.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(cols)
    tmp = path.with_name(f".{path.stem}.tmp")
    pq.write_table(table, tmp, compression="snappy", row_group_size=table.num_rows)
    os.replace(tmp, path)


def file_rows(path: Path) -> int:
    """Rows of an existing Parquet file (footer only), -1 when unreadable.

    Parameters
    ----------
    path : Path

    Returns
    -------
    int
    """
    import pyarrow.parquet as pq

    try:
        return int(pq.ParquetFile(path).metadata.num_rows)
    except Exception:  # noqa: BLE001 - a truncated file is rebuilt
        return -1


def main(argv: list[str] | None = None) -> None:
    """Command line: build ``--files`` files of ``--rows`` rows under ``--out``.

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=100)
    ap.add_argument("--rows", type=int, default=1_000_000, help="rows per file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--noise", type=float, default=0.05,
                    help="feature noise sd, in units of each column's sd")
    ap.add_argument("--out", type=Path, default=HERE / "data" / "flights_parquet")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    base, sd = base_table()
    made = 0
    for k in range(args.files):
        path = args.out / f"part-{k:05d}.parquet"
        if path.exists() and file_rows(path) == args.rows:
            continue
        write_file(make_file(base, sd, k, args.rows, args.seed, args.noise), path)
        made += 1
        if made % 10 == 0:
            print(f"{k + 1}/{args.files} files, {time.perf_counter() - t0:.0f} s", flush=True)
    total = sum(p.stat().st_size for p in args.out.glob("part-*.parquet"))
    meta = {"files": args.files, "rows_per_file": args.rows, "rows": args.files * args.rows,
            "seed": args.seed, "noise": args.noise, "feature_sd": sd.tolist(),
            "features": FEATURES, "target": TARGET, "bytes": total,
            "made_now": made, "seconds": round(time.perf_counter() - t0, 1)}
    # beside the directory, not in it: the directory holds the table's files only
    args.out.with_suffix(".json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta))


if __name__ == "__main__":
    main()
