"""Benchmark exact scores against a plain read and against dask's tsqr, on one cluster.

In one process and on one ``LocalCluster`` (processes, 1 thread per worker), each repeated
``--repeats`` times (median reported):

* ``read``     ``da.from_zarr(X).sum().compute()``: decode every X block once, nothing else.
* ``ours-lin`` ``nldist.scores(path, kind="linear-leverage")`` (matrix [X, 1]) and the (n,)
  scores stored to a Zarr array with ``.to_zarr`` (pass 1 eager, pass 2 by the store).
* ``ours-nl``  ``nldist.scores(path, model=glm:swish, theta, kind="nonlinear-leverage")``
  (dual matrix [F*(theta), f(0) - y], theta fixed and nonzero), stored the same way.
* ``tsqr``     ``dask.array.linalg.tsqr`` of the same [X, 1] and the row norms of Q
  (leverage), stored the same way.
* ``ours-mem`` (with ``--in-memory``) X and y read once into the workers' memory
  (``client.persist``), then ``ours-lin`` on the persisted arrays; the time includes that
  one read. Needs ~n*d*8/workers bytes per worker (use ``--memory-limit``).

Ratios: ours-lin / read (target <= 2.5), tsqr / ours-lin (target >= 3) and ours-mem / read
(target <= 1.5). The stored
scores of ours (times the rank) and of tsqr are compared (max abs difference).

Optional: ``--scaling`` (weak scaling: 1 worker on n/2 rows vs 2 workers on n rows) and
``--memory`` (peak RSS per worker, sampled every 50 ms from the driver, vs n).

Usage::

    .venv/bin/python bench/make_data.py
    .venv/bin/python bench/bench_scores.py --repeats 3 --scaling --memory --json out.json
    .venv/bin/python bench/bench_scores.py --repeats 3 --in-memory --memory-limit 2GiB \
        --skip ours-nl,tsqr --json mem.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


class RssSampler:
    """Sample the resident set size of the given worker processes from the driver.

    Peaks are per process (bytes); sampling every ``interval`` seconds in a thread.
    """

    def __init__(self, pids: list[int], interval: float = 0.05) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.interval = interval
        self.peak = [0] * len(pids)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for k, p in enumerate(self.procs):
                try:
                    self.peak[k] = max(self.peak[k], p.memory_info().rss)
                except Exception:  # a worker restarted or exited
                    pass
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def task_stream(client):
    from dask.distributed import get_task_stream

    return get_task_stream(client)


def task_seconds(data: list[dict]) -> dict:
    """Compute seconds and counts per task-name prefix from a task stream."""
    out: dict[str, dict] = {}
    for t in data:
        key = t["key"][0] if isinstance(t["key"], tuple) else str(t["key"])
        name = key.rsplit("-", 1)[0] if key[-1:].isalnum() and "-" in key else key
        for ss in t.get("startstops", ()):
            if ss["action"] != "compute":
                continue
            e = out.setdefault(name[:48], {"seconds": 0.0, "count": 0})
            e["seconds"] += ss["stop"] - ss["start"]
            e["count"] += 1
    return out


def _spill_bytes(dask_worker) -> float:
    metrics = getattr(dask_worker.data, "cumulative_metrics", {})
    return float(sum(v for (label, unit), v in metrics.items()
                     if label == "disk-write" and unit == "bytes"))


def spilled_mib(client) -> float:
    """Bytes written to disk by the workers' spill buffers so far (all workers), MiB."""
    return sum(client.run(_spill_bytes).values()) / 2**20


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the given processes (all their threads)."""
    import psutil

    total = 0.0
    for pid in pids:
        t = psutil.Process(pid).cpu_times()
        total += t.user + t.system
    return total


def worker_pids(client) -> list[int]:
    return list(client.run(os.getpid).values())


def timed(fn: Callable[[], object], repeats: int, client=None) -> tuple[list[float], object]:
    """Wall-clock times (s) of ``repeats`` calls; returns (times, last result)."""
    times, out = [], None
    for _ in range(repeats):
        if client is not None:
            client.run(_gc)
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return times, out


def _gc() -> None:
    import gc

    gc.collect()


def linear_block(x: np.ndarray) -> np.ndarray:
    """[x, 1] for one block (the matrix linear-leverage scores)."""
    out = np.empty((x.shape[0], x.shape[1] + 1))
    out[:, :-1] = x
    out[:, -1] = 1.0
    return out


@contextmanager
def cluster(n_workers: int, memory_limit: str):
    from dask.distributed import Client, LocalCluster

    cl = LocalCluster(n_workers=n_workers, processes=True, threads_per_worker=1,
                      memory_limit=memory_limit, host="127.0.0.1", dashboard_address=":0")
    client = Client(cl)
    try:
        yield client
    finally:
        client.close()
        cl.close()


def load_avg() -> str:
    try:
        return " ".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


# --------------------------------------------------------------------------------------
# The measured operations
# --------------------------------------------------------------------------------------


def open_xy(path: Path, n: int | None):
    """Lazy X, y of the group, optionally cut to the first n rows."""
    from nldist.graph.inputs import open_zarr_xy

    X, y = open_zarr_xy(path)
    if n is not None and n < X.shape[0]:
        X, y = X[:n], y[:n]
    return X, y


def op_read(path: Path, n: int | None) -> Callable[[], float]:
    X, _ = open_xy(path, n)
    return lambda: float(X.sum().compute())


def op_ours(path: Path, n: int | None, out: Path, kind: str, model=None, theta=None):
    import nldist

    def run() -> float:
        src = str(path) if n is None else open_xy(path, n)[0]
        ys = None if n is None else open_xy(path, n)[1]
        if kind == "linear-leverage":
            p = nldist.scores(src, ys, kind=kind)
        else:
            p = nldist.scores(src, ys, model=model, theta=theta, kind=kind)
        p.to_zarr(str(out), overwrite=True)
        return 0.0

    return run


def op_ours_mem(path: Path, n: int | None, out: Path, client, loads: list[float]):
    """ours-lin on X, y persisted in worker memory; the timed call includes that one read."""
    from distributed import wait

    import nldist

    def run() -> float:
        t0 = time.perf_counter()
        X, y = client.persist(list(open_xy(path, n)))
        wait([X, y])
        loads.append(time.perf_counter() - t0)
        nldist.scores(X, y, kind="linear-leverage").to_zarr(str(out), overwrite=True)
        del X, y
        return 0.0

    return run


def op_tsqr(path: Path, n: int | None, out: Path):
    import dask.array as da

    X, _ = open_xy(path, n)
    A = X.map_blocks(linear_block, chunks=(X.chunks[0], (X.shape[1] + 1,)), dtype=np.float64)

    def run() -> float:
        q, _ = da.linalg.tsqr(A)
        lev = (q * q).sum(axis=1)
        lev.to_zarr(str(out), overwrite=True)
        return 0.0

    return run


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--path", type=Path, default=None, help="dataset group (built if missing)")
    ap.add_argument("--n", type=int, default=2_000_000)
    ap.add_argument("--d", type=int, default=50)
    ap.add_argument("--chunk-rows", type=int, default=None)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", default="1GiB", help="per worker (all measurements)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="glm:swish")
    ap.add_argument("--theta-scale", type=float, default=0.2,
                    help="theta = scale * standard normal (seed 0), for the nonlinear scores")
    ap.add_argument("--skip", default="", help="comma list of read,ours-lin,ours-nl,tsqr")
    ap.add_argument("--in-memory", action="store_true",
                    help="also ours-mem: X read once into worker memory, both passes from it")
    ap.add_argument("--scaling", action="store_true", help="weak scaling 1 -> 2 workers")
    ap.add_argument("--memory", action="store_true", help="peak worker RSS vs n")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args(argv)

    import dask
    import zarr

    import nldist
    from nldist._budget import x_chunk_rows

    cr = args.chunk_rows or x_chunk_rows(args.d)
    path = args.path or HERE / "data" / f"bio_{args.n}_{args.d}_{cr}.zarr"
    if not path.exists():
        import make_data  # noqa: I001  (bench/ sibling script)

        make_data.write(path, args.n, args.d, cr, 0.05, 0)
    g = zarr.open_group(str(path), mode="r")
    n, d = g["X"].shape
    cr = g["X"].chunks[0]
    skip = set(filter(None, args.skip.split(",")))
    model = nldist.get_model(args.model, n_features=d)
    theta = args.theta_scale * np.random.default_rng(0).standard_normal(model.n_params)
    tmp = Path(tempfile.mkdtemp(prefix="nldist-bench-"))
    res: dict = {
        "n": n, "d": d, "chunk_rows": cr, "n_chunks": -(-n // cr), "workers": args.workers,
        "memory_limit": args.memory_limit, "repeats": args.repeats, "model": args.model,
        "theta_scale": args.theta_scale, "path": str(path), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "versions": {
            "nldist": nldist.__version__, "dask": dask.__version__, "zarr": zarr.__version__,
            "numpy": np.__version__},
        "load_before": load_avg(), "times": {},
    }
    print(f"n={n} d={d} chunk_rows={cr} workers={args.workers} memory_limit={args.memory_limit}"
          f" load={res['load_before']}", flush=True)
    try:
        with cluster(args.workers, args.memory_limit) as client:
            ops = {
                "read": op_read(path, None),
                "ours-lin": op_ours(path, None, tmp / "ours-lin.zarr", "linear-leverage"),
                "ours-nl": op_ours(path, None, tmp / "ours-nl.zarr", "nonlinear-leverage",
                                   model, theta),
                "tsqr": op_tsqr(path, None, tmp / "tsqr.zarr"),
            }
            mem_loads: list[float] = []
            if args.in_memory:
                ops["ours-mem"] = op_ours_mem(path, None, tmp / "ours-mem.zarr", client,
                                              mem_loads)
            # warm-up: imports on the workers and the page cache
            ops["read"]()
            names = [k for k in ops if k not in skip]
            times: dict[str, list[float]] = {k: [] for k in names}
            peaks: dict[str, list[int]] = {k: [0] * args.workers for k in names}
            tasks: dict[str, dict] = {k: {} for k in names}
            spills: dict[str, float] = {k: 0.0 for k in names}
            cpus: dict[str, list[float]] = {k: [] for k in names}
            # interleaved: repeat r runs every operation once, so that load from other
            # processes on the machine hits all of them alike
            for r in range(args.repeats):
                for name in names:
                    client.run(_gc)
                    spill0 = spilled_mib(client)
                    pids = worker_pids(client)
                    with RssSampler(pids) as rss, task_stream(client) as ts:
                        c0 = cpu_seconds(pids)
                        t0 = time.perf_counter()
                        ops[name]()
                        times[name].append(time.perf_counter() - t0)
                        cpus[name].append(cpu_seconds(pids) - c0)
                    peaks[name] = [max(a, b) for a, b in zip(peaks[name], rss.peak, strict=True)]
                    spills[name] = max(spills[name], spilled_mib(client) - spill0)
                    if r == args.repeats - 1:
                        tasks[name] = task_seconds(ts.data)
                    print(f"  repeat {r} {name:9s} {times[name][-1]:7.2f} s  worker CPU "
                          f"{cpus[name][-1]:6.2f} s  load "
                          f"{load_avg()}", flush=True)
            for name in names:
                res["times"][name] = {"all": times[name], "median": float(np.median(times[name])),
                                      "min": float(np.min(times[name])),
                                      "peak_rss_mib": [b / 2**20 for b in peaks[name]],
                                      "task_seconds_last_repeat": tasks[name],
                                      "spilled_mib_max": spills[name],
                                      "worker_cpu_s": cpus[name],
                                      "worker_cpu_s_median": float(np.median(cpus[name]))}
                if name == "ours-mem":
                    res["times"][name]["load_s"] = mem_loads
                print(f"{name:9s} median {np.median(times[name]):7.2f} s  all "
                      f"{', '.join(f'{t:.2f}' for t in times[name])}  peak RSS/worker "
                      f"{', '.join(f'{b / 2**20:.0f}' for b in peaks[name])} MiB  spilled "
                      f"{spills[name]:.0f} MiB", flush=True)
                top = sorted(tasks[name].items(), key=lambda kv: -kv[1]["seconds"])[:4]
                print("           task compute (last repeat): " + "; ".join(
                    f"{k} {v['seconds']:.2f} s/{v['count']}" for k, v in top), flush=True)
        t = {k: v["median"] for k, v in res["times"].items()}
        c = {k: v["worker_cpu_s_median"] for k, v in res["times"].items()}
        if len(c) > 1:
            print("worker CPU seconds (median): " + ", ".join(f"{k} {v:.2f}" for k, v in c.items()))
        if "read" in t and "ours-lin" in t:
            res["ours_over_read"] = t["ours-lin"] / t["read"]
            res["ours_over_read_cpu"] = c["ours-lin"] / c["read"]
            print(f"ours-lin / read = {res['ours_over_read']:.2f}  (target <= 2.5; in worker CPU "
                  f"seconds {res['ours_over_read_cpu']:.2f})")
        m = {k: v["min"] for k, v in res["times"].items()}
        if "read" in m and "ours-lin" in m:
            res["ours_over_read_min"] = m["ours-lin"] / m["read"]
            print(f"ours-lin / read, best of {args.repeats}: {res['ours_over_read_min']:.2f}")
        if "read" in t and "ours-nl" in t:
            res["ours_nl_over_read"] = t["ours-nl"] / t["read"]
            print(f"ours-nl / read  = {res['ours_nl_over_read']:.2f}")
        if "read" in t and "ours-mem" in t:
            res["ours_mem_over_read"] = t["ours-mem"] / t["read"]
            passes = t["ours-mem"] - float(np.median(res["times"]["ours-mem"]["load_s"]))
            res["ours_mem_passes_over_read"] = passes / t["read"]
            print(f"ours-mem / read = {res['ours_mem_over_read']:.2f}  (target <= 1.5; the two "
                  f"passes alone, X already in memory: {res['ours_mem_passes_over_read']:.2f})")
        if "tsqr" in t and "ours-lin" in t:
            res["tsqr_over_ours"] = t["tsqr"] / t["ours-lin"]
            res["tsqr_over_ours_cpu"] = c["tsqr"] / c["ours-lin"]
            print(f"tsqr / ours-lin = {res['tsqr_over_ours']:.2f}  (target >= 3; in worker CPU "
                  f"seconds {res['tsqr_over_ours_cpu']:.2f})")
            res["tsqr_over_ours_min"] = m["tsqr"] / m["ours-lin"]
            print(f"tsqr / ours-lin, best of {args.repeats}: {res['tsqr_over_ours_min']:.2f}")
        if {"tsqr", "ours-lin"} <= set(t):
            ours = zarr.open_array(str(tmp / "ours-lin.zarr"), mode="r")[:]
            ref = zarr.open_array(str(tmp / "tsqr.zarr"), mode="r")[:]
            rank = round(float(ref.sum()))
            res["rank"] = rank
            res["max_abs_diff_vs_tsqr"] = float(np.max(np.abs(ours * rank - ref)))
            res["max_rel_diff_vs_tsqr"] = float(np.max(np.abs(ours * rank - ref)) / ref.max())
            print(f"ours*rank vs tsqr row norms: max abs diff {res['max_abs_diff_vs_tsqr']:.2e}"
                  f" (max leverage {ref.max():.3e}, rank {rank})")
        if args.scaling:
            res["weak_scaling"] = weak_scaling(path, n, cr, args, tmp)
        if args.memory:
            res["memory_vs_n"] = memory_vs_n(path, n, cr, args, tmp, model, theta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["load_after"] = load_avg()
    print(f"load after: {res['load_after']}")
    if args.json:
        args.json.write_text(json.dumps(res, indent=1))
    return res


def _cut(n: int, cr: int, frac: float) -> int:
    """frac * n rounded to whole chunks (at least one chunk; n itself for frac >= 1)."""
    if frac >= 1:
        return n
    return min(n, max(cr, round(n * frac / cr) * cr))


def weak_scaling(path: Path, n: int, cr: int, args, tmp: Path) -> dict:
    """Ours-lin and read: 1 worker on n/2 rows vs 2 workers on n rows (same chunk size)."""
    out: dict = {}
    for workers, rows in ((1, _cut(n, cr, 0.5)), (2, n)):
        with cluster(workers, args.memory_limit) as client:
            sub = None if rows == n else rows
            read, ours = op_read(path, sub), op_ours(path, sub, tmp / "ws.zarr", "linear-leverage")
            read()  # warm-up
            t_read, t_ours = [], []
            for _ in range(args.repeats):  # interleaved, as in the main measurement
                t_read += timed(read, 1, client)[0]
                t_ours += timed(ours, 1, client)[0]
        out[str(workers)] = {"rows": rows, "read": float(np.median(t_read)),
                             "ours-lin": float(np.median(t_ours))}
        print(f"weak scaling: {workers} worker(s), {rows} rows: read "
              f"{np.median(t_read):.2f} s, ours-lin {np.median(t_ours):.2f} s", flush=True)
    out["efficiency_ours"] = out["1"]["ours-lin"] / out["2"]["ours-lin"]
    out["efficiency_read"] = out["1"]["read"] / out["2"]["read"]
    print(f"weak-scaling efficiency (t1/t2): ours-lin {out['efficiency_ours']:.2f}, "
          f"read {out['efficiency_read']:.2f}")
    return out


def memory_vs_n(path: Path, n: int, cr: int, args, tmp: Path, model, theta) -> dict:
    """Peak RSS per worker for ours-lin and ours-nl at n/4, n/2, n rows (fresh cluster each)."""
    out: dict = {}
    for frac in (0.25, 0.5, 1.0):
        rows = _cut(n, cr, frac)
        sub = None if rows == n else rows
        for name in ("ours-lin", "ours-nl"):
            with cluster(args.workers, args.memory_limit) as client:
                base = [r / 2**20 for r in
                        client.run(lambda: __import__("psutil").Process().memory_info().rss)
                        .values()]
                if name == "ours-lin":
                    fn = op_ours(path, sub, tmp / "mem.zarr", "linear-leverage")
                else:
                    fn = op_ours(path, sub, tmp / "mem.zarr", "nonlinear-leverage", model, theta)
                with RssSampler(worker_pids(client), interval=0.02) as rss:
                    fn()
            peaks = [r / 2**20 for r in rss.peak]
            out.setdefault(name, []).append({"rows": rows, "peak_rss_mib": peaks,
                                             "idle_rss_mib": base})
            print(f"memory: {name} {rows} rows: peak RSS/worker "
                  f"{', '.join(f'{p:.0f}' for p in peaks)} MiB (idle "
                  f"{', '.join(f'{b:.0f}' for b in base)} MiB)", flush=True)
    return out


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(HERE))
    main()
