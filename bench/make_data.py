"""Build the benchmark dataset: a tall Zarr v3 group derived from the KDD Cup 2004 bio data.

The real data (``nldist.datasets.load("bio")``: 145,751 rows, 74 numeric features, binary
``target``) is too short for a distributed benchmark, so this script

1. takes the first ``d`` (default 50) feature columns and standardizes them (mean 0, sd 1),
2. tiles the rows cyclically up to ``n`` rows (default 2,000,000),
3. adds small i.i.d. Gaussian noise (sd ``--noise``, default 0.05, in standardized units)
   to every tiled copy, so that no two rows are identical and the chunks do not compress to
   nothing; the target is tiled unchanged.

``--dataset california`` does the same with California Housing (20,640 rows, 8 features, a
real-valued target, standardized like the default job's ``standardize_target: true``): a
regression target for the single-index Swish model (bio's target is 0/1 with 0.9 %
positives, on which ``glm:swish``'s optimum is essentially theta = 0).

The layout is that of :func:`nldist.store.dataset.write_dataset` (``X`` (n, d) float64 in row chunks
with one column chunk, ``y`` (n,), attrs), written chunk by chunk into ``OUT.partial`` and
renamed into place: at most one chunk of the tall array is in memory at a time.

Usage::

    .venv/bin/python bench/make_data.py                      # bench/data/bio_2M_50.zarr
    .venv/bin/python bench/make_data.py --n 500000 --chunk-rows 50000 --out bench/data/x.zarr
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def base_matrix(d: int, dataset: str = "bio") -> tuple[np.ndarray, np.ndarray, list[str],
                                                      dict]:
    """Standardized first d feature columns (N, d) of ``dataset`` and its target (N,)
    (standardized too for ``california``)."""
    from nldist import datasets

    df, info = datasets.load(dataset)
    feats = [c for c in df.columns if c != info.target][:d]
    if len(feats) < d:
        raise SystemExit(f"bio has only {len(feats)} feature columns; use --d <= {len(feats)}")
    X = df[feats].to_numpy(np.float64)
    mu, sd = X.mean(axis=0), X.std(axis=0)
    sd[sd == 0] = 1.0
    X = (X - mu) / sd
    y = df[info.target].to_numpy(np.float64)
    if dataset == "california":
        y = (y - y.mean()) / y.std()
    meta = {"standardize": {"mean": mu.tolist(), "scale": sd.tolist()}, "dataset": dataset,
            "source": info.source, "license": info.license, "task": info.task}
    return X, y, [str(c) for c in feats], meta


def write(out: Path, n: int, d: int, chunk_rows: int, noise: float, seed: int,
          dataset: str = "bio") -> Path:
    """Write the tiled, noised dataset chunk by chunk; returns the group path."""
    import zarr

    from nldist import __version__

    base, ybase, feats, meta = base_matrix(d, dataset)
    nb = base.shape[0]
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    g = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    cr = min(chunk_rows, n)
    ax = g.create_array("X", shape=(n, d), chunks=(cr, d), dtype=np.float64)
    ay = g.create_array("y", shape=(n,), chunks=(cr,), dtype=np.float64)
    n_chunks = -(-n // cr)
    streams = np.random.SeedSequence(seed).spawn(n_chunks)
    for k, start in enumerate(range(0, n, cr)):
        idx = np.arange(start, min(start + cr, n)) % nb
        rng = np.random.default_rng(streams[k])
        block = base[idx]
        block += noise * rng.standard_normal(block.shape)
        ax[start : start + len(idx)] = block
        ay[start : start + len(idx)] = ybase[idx]
    g.attrs.update({
        **meta, "target": "target", "features": feats, "n_rows": n, "n_features": d,
        "chunk_rows": cr, "nldist_version": __version__,
        "bench": {"base_rows": nb, "tiled": True, "noise_sd": noise, "seed": seed},
    })
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2_000_000, help="rows (default 2,000,000)")
    ap.add_argument("--d", type=int, default=50, help="feature columns (default 50)")
    ap.add_argument("--chunk-rows", type=int, default=None,
                    help="rows per chunk (default: about 32 MiB per X chunk, as nldist ingest)")
    ap.add_argument("--noise", type=float, default=0.05, help="sd of the added Gaussian noise")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", choices=["bio", "california"], default="bio",
                    help="the real rows to tile (california: d <= 8)")
    ap.add_argument("--out", type=Path, default=None,
                    help="output group (default bench/data/<dataset>_<n>_<d>_<rows>.zarr)")
    args = ap.parse_args(argv)
    from nldist._budget import x_chunk_rows

    cr = args.chunk_rows or x_chunk_rows(args.d)
    out = args.out or HERE / "data" / f"{args.dataset}_{args.n}_{args.d}_{cr}.zarr"
    t0 = time.perf_counter()
    write(out, args.n, args.d, cr, args.noise, args.seed, args.dataset)
    print(f"wrote {out} ({args.n} x {args.d} float64, chunk rows {cr}) "
          f"in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
