"""Categorical codes against dense one-hot columns on flights-3m with its airports (issue 26
item 5): store size, ingest time, and the time of the one-read sampling pass and of the exact
two-pass leverage, on the same real rows.

The table is the packaged ``flights_3m`` (3,000,000 US flights of 2001, npm
vega-datasets@3.2.1): distance, dep_hour, weekday, day_of_year (standardized here, before
the encodings, so both see the same numbers), origin (229 airports) and destination (228).
Two encodings of the same rows, both through :func:`nldist.ingest.prepare` and
:func:`nldist.store.dataset.write_dataset` (Zarr v3, nldist's default codecs and chunking):

* **codes** (the default, ``onehot_max_levels=32``): X (n, 6) — 4 numeric columns and 2
  columns of integer codes; the model ``get_model(spec, 6, Codes.from_attrs(attrs))`` builds
  its dual rows as a sparse matrix;
* **one-hot** (``onehot_max_levels=10**6``, what nldist stored before): X (n, 459) dense
  float64 (4 + 228 + 227 dummy columns; pandas ``get_dummies(drop_first=True)``).

The design (and so theta's layout: numeric, origin's dummies, destination's, bias) is the
same, so both encodings give the same scores at the same theta. theta: ordinary least
squares of the (glm:identity) model fitted on a seeded 50,000-row subset. On a seeded
uniform subset of ``--rows`` real rows (default 500,000: the dense one-hot store of all 3M
rows would be 11 GB uncompressed, past this machine's comfort), each encoding is timed
``--repeats`` times, interleaved:

* ``one-read``: :func:`nldist.select_sample` (s = 20p, kind auto, a 10,000-row pilot);
* ``exact``: :func:`nldist.scores` (kind nonlinear-leverage: pass 1 forms R, pass 2 the
  values), computed;

and checked equal (the one-read indices identical; the exact scores to 1e-8). Then the codes
store of all 3,000,000 rows is built and timed the same way (the one-hot one is not: its
size is stated from n x 459 x 8 bytes). Dask runs in-process (threaded scheduler, 2
threads): the numbers compare encodings, not clusters.

Usage::

    .venv/bin/nldist fetch flights_3m
    .venv/bin/python bench/bench_codes.py --rows 500000 --repeats 3 --json bench/codes_flights.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np

import nldist
from nldist import datasets
from nldist.ingest import prepare
from nldist.models import get_model
from nldist.models.coded import Codes
from nldist.store.dataset import open_dataset, write_dataset

NUMERIC = ["distance", "dep_hour", "weekday", "day_of_year"]


def du(path: Path) -> int:
    """Bytes on disk under ``path``."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def table(rows: int | None, seed: int = 0):
    df, _ = datasets.load("flights_3m")
    if rows is not None and rows < len(df):
        pick = np.sort(np.random.default_rng(seed).choice(len(df), rows, replace=False))
        df = df.iloc[pick].reset_index(drop=True)
    df = df.copy()
    for c in NUMERIC + ["delay"]:
        df[c] = (df[c] - df[c].mean()) / df[c].std(ddof=0)
    return df


def build(df, enc: str, root: Path) -> dict:
    t0 = time.perf_counter()
    X, y, attrs = prepare(df, "delay", onehot_max_levels=32 if enc == "codes" else 10**6)
    t_prep = time.perf_counter() - t0
    out = root / f"{enc}.zarr"
    t0 = time.perf_counter()
    write_dataset(out, X, y, attrs, overwrite=True)
    t_write = time.perf_counter() - t0
    return {"path": out, "attrs": attrs, "d": int(X.shape[1]), "x_bytes": int(X.nbytes),
            "disk_bytes": du(out), "prepare_s": t_prep, "write_s": t_write}


def theta_ols(store: dict, model, seed: int = 1) -> np.ndarray:
    """OLS on a seeded 50,000-row subset of the coded store (min-norm: a level missing from
    the subset gets 0)."""
    X, y = open_dataset(store["path"])
    n = int(X.shape[0])
    pick = np.sort(np.random.default_rng(seed).choice(n, min(50_000, n), replace=False))
    D = model.expand(np.asarray(X[pick]))
    A = np.column_stack([D, np.ones(len(D))])
    return np.linalg.lstsq(A, np.asarray(y[pick]), rcond=None)[0]


def time_passes(store: dict, model, theta: np.ndarray, s: int) -> dict:
    X, y = open_dataset(store["path"])
    X, y = da.asarray(X), da.asarray(y)
    t0 = time.perf_counter()
    idx, w, info = nldist.select_sample(X, y, model, theta, s=s, kind="auto")
    t_one = time.perf_counter() - t0
    t0 = time.perf_counter()
    sc = np.asarray(nldist.scores(X, y, model=model, theta=theta, kind="nonlinear-leverage"))
    t_exact = time.perf_counter() - t0
    return {"one_read_s": t_one, "exact_s": t_exact, "idx": idx, "scores": sc,
            "chosen": info.get("kind")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=500_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--full", action=argparse.BooleanOptionalAction, default=True,
                    help="also the codes store of all 3,000,000 rows")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    dask.config.set(scheduler="threads", num_workers=2)
    root = Path(tempfile.mkdtemp(prefix="bench_codes_"))
    res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores",
                 "load_before": os.getloadavg(), "rows": args.rows, "runs": []}
    try:
        df = table(args.rows)
        stores = {enc: build(df, enc, root) for enc in ("codes", "onehot")}
        codes = Codes.from_attrs(stores["codes"]["attrs"])
        models = {"codes": get_model("linear", stores["codes"]["d"], codes),
                  "onehot": get_model("linear", stores["onehot"]["d"])}
        theta = theta_ols(stores["codes"], models["codes"])
        p = models["codes"].n_params
        assert p == models["onehot"].n_params
        s = 20 * p
        res.update(p=p, s=s, stores={k: {kk: vv for kk, vv in v.items()
                                          if kk not in ("path", "attrs")}
                                      for k, v in stores.items()})
        got = {}
        for r in range(args.repeats):
            for enc in ("codes", "onehot"):
                t = time_passes(stores[enc], models[enc], theta, s)
                got[enc] = t
                res["runs"].append({"encoding": enc, "repeat": r, "one_read_s": t["one_read_s"],
                                    "exact_s": t["exact_s"], "chosen": t["chosen"]})
                print(f"{enc:7s} repeat {r}: one-read {t['one_read_s']:.1f} s, exact "
                      f"{t['exact_s']:.1f} s ({t['chosen']})", flush=True)
        res["same_sample"] = bool(np.array_equal(got["codes"]["idx"], got["onehot"]["idx"]))
        res["scores_max_rel_diff"] = float(np.max(np.abs(
            got["codes"]["scores"] - got["onehot"]["scores"]) / got["onehot"]["scores"].max()))
        for enc in ("codes", "onehot"):
            shutil.rmtree(stores[enc]["path"])
        if args.full:
            full = table(None)
            st = build(full, "codes", root)
            m = get_model("linear", st["d"], Codes.from_attrs(st["attrs"]))
            th = theta_ols(st, m)
            t = time_passes(st, m, th, 20 * m.n_params)
            res["full"] = {"rows": len(full), **{k: v for k, v in st.items()
                                                 if k not in ("path", "attrs")},
                           "one_read_s": t["one_read_s"], "exact_s": t["exact_s"],
                           "onehot_x_bytes_stated": len(full) * 459 * 8}
            print(f"all {len(full):,} rows, codes: X {st['x_bytes'] / 2**20:.0f} MiB raw, "
                  f"{st['disk_bytes'] / 2**20:.0f} MiB on disk; one-read {t['one_read_s']:.1f} s,"
                  f" exact {t['exact_s']:.1f} s; one-hot would be "
                  f"{len(full) * 459 * 8 / 2**30:.1f} GiB raw", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    res["load_after"] = os.getloadavg()
    for enc in ("codes", "onehot"):
        st = res["stores"][enc]
        print(f"{enc}: d = {st['d']}, X {st['x_bytes'] / 2**20:.0f} MiB raw, "
              f"{st['disk_bytes'] / 2**20:.1f} MiB on disk, prepare {st['prepare_s']:.1f} s, "
              f"write {st['write_s']:.1f} s")
    print(f"same one-read sample: {res['same_sample']}; exact scores max rel diff "
          f"{res['scores_max_rel_diff']:.1e}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1, default=float))


if __name__ == "__main__":
    main()
