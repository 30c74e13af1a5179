"""Distributed ingest of a tall multi-file Parquet table, against plain Dask (issue 16 item 7).

In one process, on one Dask ``LocalCluster`` of 2 worker processes x 1 thread x 1 GiB
(made by :func:`nldist.cluster.connect`, as ``nldist`` makes it: ``processes=True``, the
driver's BLAS/torch threads capped to the free core), for every size n (default 10M, 30M and
100M rows: the first 10, 30, 100 files of ``bench/make_parquet.py``, 1,000,000 rows each,
hard-linked into a directory per size):

* **ours**: :func:`nldist.ingest.ingest_table` ``(dir, OUT.zarr, target="delay",
  standardize=True, standardize_target=True)`` — a statistics pass over the files (missing
  and infinite values, Chan moments), then a pass that encodes, standardizes, re-blocks into
  32 MiB chunks and writes each chunk from one task with its SHA-256, plus the 10,000-row
  pilot reservoir;
* **baseline** (what a competent Dask user writes): ``dd.read_parquet(dir,
  columns=...).to_dask_array(lengths=True)``, the column means and population sds by
  ``dask.compute(A.mean(0), A.std(0))``, then ``(A - mu) / sd`` split into X (n, 4) and y
  (n,) and both written in one ``dask.compute`` of ``da.to_zarr(..., compute=False)``
  (Zarr v3, zarr's default codecs — the same as nldist's —, one chunk per file);

interleaved: ours, baseline, ours, baseline (``--repeats``), after one plain read of the
files (:func:`warm`: every run then finds them in the page cache). Each run records wall
seconds (and its phases), the CPU seconds of the workers and of the driver (less sensitive
than wall time to other load on the machine), MB/s of Parquet bytes on disk and of
uncompressed float64 values (n x 5 x 8 bytes), the driver's peak RSS (a thread sampling
``psutil`` every 0.1 s; this process also hosts the scheduler, as ``nldist``'s embedded
cluster does) next to ``resource.getrusage`` ``ru_maxrss`` (the process's lifetime peak,
monotone), and each worker process's peak RSS (the same thread sampling the worker PIDs,
which ``client.run(os.getpid)`` gives, and every other child process of the driver; worker
restarts are counted), with ``os.getloadavg()`` before and after. The two stores are
checked equal (a chunk at the start, middle and end of X and y, on a worker) once per size.

With ``--once``, also **ours-once**: the same ingest with each Parquet partition read and
encoded once in the write pass (:func:`read_once`, a bench-only monkeypatch of two nldist
graph helpers, restored after; nldist itself unchanged): what nldist's own graph costs
against the same work done once.

Then, at the largest size, the whole practical path (``nldist.pipeline.select``: pilot
theta_0 from 1,000 rows, nonlinear-leverage scores at theta_0, the fused pass that samples
s rows and a ~100,000-row evaluation sample, training on the sample, the estimated
full-data loss) of a ``glm:swish`` single-index model with squared loss, on the same
cluster, once on the store ingested by ours (pilot from its reservoir) and once straight
from the Parquet files (``dataset: {source: DIR, format: parquet, target: delay,
standardize: true, standardize_target: true}``: a statistics pass, then every pass reads
and encodes the row groups; pilot from a seeded set of whole chunks), interleaved
(``--job-repeats``): wall seconds, passes over X, bytes read, per-stage seconds and the
driver's and workers' peak RSS and CPU seconds. With ``--once``, also **parquet-once**: the
job from the Parquet files with each partition read and encoded once per pass
(:func:`read_once`).

Usage::

    .venv/bin/nldist fetch flights_3m
    .venv/bin/python bench/make_parquet.py --files 100 --rows 1000000
    .venv/bin/python bench/bench_ingest.py --sizes 10 --json /tmp/ingest_10m.json   # debug
    .venv/bin/python bench/bench_ingest.py --once --job-repeats 2 --json bench/ingest_100m.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURES = ["distance", "dep_hour", "weekday", "day_of_year"]
TARGET = "delay"
MiB = 2**20


def log(msg: str) -> None:
    """Print a time-stamped progress line to stderr.

    Parameters
    ----------
    msg : str
    """
    print(f"[{time.strftime('%H:%M:%S')} load {os.getloadavg()[0]:.2f}] {msg}",
          file=sys.stderr, flush=True)


def dir_bytes(path: Path) -> int:
    """Total size of the regular files below ``path`` (0 when missing).

    Parameters
    ----------
    path : Path

    Returns
    -------
    int
    """
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.path.getsize(os.path.join(root, f))
    return total


def loadavg() -> list[float]:
    """``os.getloadavg()`` rounded.

    Returns
    -------
    list of float
        1, 5 and 15 minute load averages.
    """
    return [round(v, 2) for v in os.getloadavg()]


def machine() -> dict:
    """CPU, memory and library versions of this machine.

    Returns
    -------
    dict
    """
    import dask
    import distributed
    import pyarrow
    import zarr

    import nldist

    cpu = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        cpu = next((ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")),
                   "")
    return {"nproc": os.cpu_count(), "ram_bytes": psutil.virtual_memory().total, "cpu": cpu,
            "python": sys.version.split()[0], "dask": dask.__version__,
            "distributed": distributed.__version__, "zarr": zarr.__version__,
            "pyarrow": pyarrow.__version__, "numpy": np.__version__,
            "nldist": nldist.__version__, "nldist_path": str(Path(nldist.__file__).parent),
            "nldist_git_head": git_head(Path(nldist.__file__).parent.parent),
            "loadavg_start": loadavg()}


def git_head(where: Path) -> str | None:
    """The commit of the nldist tree in use: ``NLDIST_COMMIT`` (a snapshot made by ``git
    archive``) or ``git rev-parse HEAD`` of its checkout (with ``+dirty`` when it has
    uncommitted changes under ``nldist/``).

    Parameters
    ----------
    where : Path
        The directory holding the ``nldist`` package.

    Returns
    -------
    str or None
    """
    import subprocess

    if os.environ.get("NLDIST_COMMIT"):
        return os.environ["NLDIST_COMMIT"]
    try:
        head = subprocess.run(["git", "-C", str(where), "rev-parse", "HEAD"], check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(where), "status", "--porcelain", "nldist"],
                               check=True, capture_output=True, text=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+dirty" if dirty else "")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (its threads; 0 when gone).

    Parameters
    ----------
    pid : int

    Returns
    -------
    float
    """
    try:
        t = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return 0.0
    return float(t.user + t.system)


class RssSampler:
    """Peak RSS of the driver and of every child process, sampled by a background thread.

    Parameters
    ----------
    interval : float
        Seconds between samples.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.me = psutil.Process()
        self.interval = interval
        self.workers: dict[int, str] = {}
        self._lock = threading.Lock()
        self._reset()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _reset(self) -> None:
        self.driver_peak = 0
        self.child_peak: dict[int, int] = {}

    def _run(self) -> None:
        children: list[psutil.Process] = []
        last_scan = 0.0
        while not self._stop.is_set():
            now = time.monotonic()
            if now - last_scan > 1.0:  # new processes (a restarted worker) within a second
                with contextlib.suppress(psutil.Error):
                    children = self.me.children(recursive=True)
                last_scan = now
            with contextlib.suppress(psutil.Error):
                rss = self.me.memory_info().rss
                with self._lock:
                    self.driver_peak = max(self.driver_peak, rss)
            for c in children:
                try:
                    rss = c.memory_info().rss
                except psutil.Error:
                    continue
                with self._lock:
                    self.child_peak[c.pid] = max(self.child_peak.get(c.pid, 0), rss)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def phase(self, client: Any, rec: dict) -> Iterator[None]:
        """Measure one phase into ``rec``: wall, peaks, load averages, worker restarts.

        Parameters
        ----------
        client : distributed.Client
        rec : dict
            Filled with ``wall_s``, ``driver_cpu_s`` and ``worker_cpu_s`` (user + system
            CPU seconds of the driver and of the workers, summed: less sensitive than wall
            time to other load on the machine), ``driver_peak_rss``, ``driver_rss_start``,
            ``ru_maxrss`` (bytes), ``worker_peak_rss`` (per worker address), ``other_children``
            (peak RSS of other child processes), ``worker_restarts`` and ``loadavg``.
        """
        pids = client.run(os.getpid)
        self.workers = {pid: addr for addr, pid in pids.items()}
        with self._lock:
            self._reset()
        rec["driver_rss_start"] = self.me.memory_info().rss
        rec["loadavg_start"] = loadavg()
        cpu0 = {pid: cpu_s(pid) for pid in [self.me.pid, *self.workers]}
        t0 = time.perf_counter()
        try:
            yield
        finally:
            rec["wall_s"] = round(time.perf_counter() - t0, 3)
            cpu1 = {pid: cpu_s(pid) for pid in cpu0}
            rec["driver_cpu_s"] = round(cpu1[self.me.pid] - cpu0[self.me.pid], 2)
            rec["worker_cpu_s"] = round(sum(cpu1[p] - cpu0[p] for p in self.workers), 2)
            time.sleep(2 * self.interval)
            rec["loadavg_end"] = loadavg()
            after = client.run(os.getpid)
            with self._lock:
                rec["driver_peak_rss"] = self.driver_peak
                peaks = dict(self.child_peak)
            rec["ru_maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            rec["worker_peak_rss"] = {addr: peaks.get(pid, 0) for pid, addr in
                                      self.workers.items()}
            rec["worker_peak_rss_max"] = max(rec["worker_peak_rss"].values(), default=0)
            others = {pid: v for pid, v in peaks.items() if pid not in self.workers}
            new = set(after.values()) - set(pids.values())
            rec["worker_restarts"] = len(new)
            if new:  # a worker died and was restarted: its successor's peak too
                rec["restarted_worker_peak_rss"] = {str(p): others.get(p, 0) for p in new}
            rec["other_children_peak_rss"] = {str(p): v for p, v in others.items()
                                              if p not in new}

    def close(self) -> None:
        """Stop the sampling thread."""
        self._stop.set()
        self._t.join()


def subset_dir(src: Path, files: int, work: Path) -> Path:
    """A directory holding hard links to the first ``files`` Parquet files of ``src``.

    Parameters
    ----------
    src : Path
        Directory of ``part-*.parquet`` (``bench/make_parquet.py``).
    files : int
        How many files.
    work : Path
        Where the directory is made.

    Returns
    -------
    Path
    """
    parts = sorted(src.glob("part-*.parquet"))
    if len(parts) < files:
        raise SystemExit(f"{src} holds {len(parts)} files, {files} needed; run "
                         f"bench/make_parquet.py --files {files}")
    out = work / f"parquet_{files}"
    have = sorted(out.glob("part-*.parquet")) if out.exists() else []
    if [p.name for p in have] != [p.name for p in parts[:files]] or any(
            p.stat().st_ino != q.stat().st_ino for p, q in zip(have, parts, strict=False)):
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        for p in parts[:files]:
            os.link(p, out / p.name)
    return out


def warm(src: Path) -> dict:
    """Read every file of ``src`` once (16 MiB at a time, nothing kept), so that every timed
    run finds the Parquet bytes in the page cache: otherwise the first run after other
    writes (the stores of the previous size, other users' jobs) pays the disk alone.

    Parameters
    ----------
    src : Path

    Returns
    -------
    dict
        Seconds and MB/s of that read.
    """
    t0 = time.perf_counter()
    total = 0
    for p in sorted(src.iterdir()):
        with open(p, "rb") as fh:
            while chunk := fh.read(16 * MiB):
                total += len(chunk)
    dt = time.perf_counter() - t0
    return {"bytes": total, "seconds": round(dt, 2), "MBps": round(total / 1e6 / dt, 1)}


def run_ours(src: Path, out: Path, chunk_rows: int | None = None) -> dict:
    """nldist's distributed ingest; the time its statistics pass ended, from its progress.

    Parameters
    ----------
    src : Path
        Parquet directory.
    out : Path
        The Zarr store to write (replaced).
    chunk_rows : int, optional
        Rows per chunk of the store (default nldist's: about 32 MiB of X).

    Returns
    -------
    dict
        ``phases`` (seconds of the statistics pass and of the write pass).
    """
    from nldist.ingest import ingest_table

    events: list[tuple[float, int, int]] = []
    t0 = time.perf_counter()
    ingest_table(str(src), out, target=TARGET, standardize=True, standardize_target=True,
                 overwrite=True, chunk_rows=chunk_rows,
                 progress=lambda done, total: events.append((time.perf_counter() - t0, done,
                                                             total)))
    wall = time.perf_counter() - t0
    # the first pass's events end with done == total; the second pass's count starts anew
    first_total = events[0][2] if events else 0
    stats_end = next((t for t, d, tot in events if tot == first_total and d == tot), None)
    return {"phases": {"statistics_s": round(stats_end, 3) if stats_end else None,
                       "write_s": round(wall - stats_end, 3) if stats_end else None},
            "progress_events": len(events)}


@contextlib.contextmanager
def _unoptimized_to_delayed() -> Iterator[None]:
    """``dask.array.Array.to_delayed`` with ``optimize_graph=False`` by default, for the
    duration (restored on exit)."""
    import dask.array as da

    orig = da.Array.to_delayed

    def to_delayed(self: Any, optimize_graph: bool = False) -> Any:
        return orig(self, optimize_graph=optimize_graph)

    da.Array.to_delayed = to_delayed
    try:
        yield
    finally:
        da.Array.to_delayed = orig


def _once(func: Any) -> Any:
    """``func`` (an nldist graph helper) run under :func:`_unoptimized_to_delayed`."""
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with _unoptimized_to_delayed():
            return func(*args, **kwargs)

    return wrapped


@contextlib.contextmanager
def read_once() -> Iterator[None]:
    """nldist's graph built so that each Parquet partition is read and encoded once per
    pass, for the ``*-once`` variants.

    nldist's ``graph.tables.write_table`` (the ingest's write pass) and
    ``graph.inputs.row_blocks`` (the blocks of every pass over X) take ``X.to_delayed()``
    and ``y.to_delayed()`` separately, and the default ``optimize_graph=True`` fuses read ->
    encode -> getter into a separate task per array (different keys): every partition is
    read and encoded once for X and once for y (at nldist 209d5f6 a third time for the
    ingest's reservoir rows, which use the unfused encoding). Here both helpers run with
    ``optimize_graph=False``, so X, y (and the reservoir rows) share one read and encoding
    per partition. A bench-only monkeypatch of ``write_table`` and of ``row_blocks`` in
    every graph module that calls it (restored on exit; nldist itself is not changed),
    independent of their signatures.
    """
    from nldist import graph

    mods = [m for m in (graph.inputs, graph.passes, graph.draws, graph.oracles)
            if hasattr(m, "row_blocks")]
    saved_write = graph.tables.write_table
    saved = [m.row_blocks for m in mods]
    graph.tables.write_table = _once(saved_write)
    for m, f in zip(mods, saved, strict=True):
        m.row_blocks = _once(f)
    try:
        yield
    finally:
        graph.tables.write_table = saved_write
        for m, f in zip(mods, saved, strict=True):
            m.row_blocks = f


def run_ours_once(src: Path, out: Path) -> dict:
    """:func:`run_ours` under :func:`read_once`.

    Parameters
    ----------
    src, out : Path
        As :func:`run_ours`.

    Returns
    -------
    dict
    """
    with read_once():
        return run_ours(src, out)


def run_baseline(src: Path, out: Path) -> dict:
    """The plain-Dask ingest with the same standardization (module docstring).

    Parameters
    ----------
    src : Path
        Parquet directory.
    out : Path
        The Zarr group to write (replaced).

    Returns
    -------
    dict
        ``phases``: seconds of ``to_dask_array(lengths=True)``, of the moments and of the
        write.
    """
    import dask
    import dask.array as da
    import dask.dataframe as dd

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    ddf = dd.read_parquet(str(src), columns=FEATURES + [TARGET])
    A = ddf.to_dask_array(lengths=True)
    t1 = time.perf_counter()
    mu, sd = dask.compute(A.mean(axis=0), A.std(axis=0))
    t2 = time.perf_counter()
    Z = (A - mu) / sd
    X, y = Z[:, :4], Z[:, 4]
    dask.compute(da.to_zarr(X, str(out), component="X", compute=False),
                 da.to_zarr(y, str(out), component="y", compute=False))
    t3 = time.perf_counter()
    return {"phases": {"lengths_s": round(t1 - t0, 3), "moments_s": round(t2 - t1, 3),
                       "write_s": round(t3 - t2, 3)},
            "chunk_rows": int(A.chunks[0][0]), "partitions": int(A.numblocks[0])}


def same_output(client: Any, ours: Path, base: Path) -> dict:
    """:func:`compare_stores` on a worker (its reads would otherwise stay in the driver's
    RSS: glibc keeps freed chunk buffers, and the driver's peak is what is measured).

    Parameters
    ----------
    client : distributed.Client
    ours, base : Path

    Returns
    -------
    dict
    """
    return client.submit(compare_stores, str(ours), str(base), pure=False).result()


def compare_stores(ours: str, base: str) -> dict:
    """Compare the two stores at a chunk at the start, middle and end of X and y.

    Parameters
    ----------
    ours, base : Path

    Returns
    -------
    dict
        Largest absolute difference of X and of y over the compared rows.
    """
    import zarr

    a, b = zarr.open_group(ours, mode="r"), zarr.open_group(base, mode="r")
    n = a["X"].shape[0]
    if b["X"].shape != a["X"].shape:
        return {"equal_shape": False}
    dx = dy = 0.0
    for start in (0, n // 2, max(0, n - 100_000)):
        sl = slice(start, min(n, start + 100_000))
        dx = max(dx, float(np.abs(a["X"][sl] - b["X"][sl]).max()))
        dy = max(dy, float(np.abs(a["y"][sl] - b["y"][sl]).max()))
    return {"equal_shape": True, "max_abs_diff_X": dx, "max_abs_diff_y": dy,
            "rows_compared": 300_000}


def job_dict(name: str, dataset: dict, out: Path, args: argparse.Namespace) -> dict:
    """The practical-path job (``nldist select``) on one dataset.

    Parameters
    ----------
    name : str
    dataset : dict
        The job's ``dataset`` section.
    out : Path
        Output directory.
    args : argparse.Namespace
        ``model``, ``s``, ``seed``.

    Returns
    -------
    dict
    """
    return {"name": name, "dataset": dataset, "model": args.model, "theta": "pilot",
            "kind": "nonlinear-leverage", "baselines": [], "s": int(args.s),
            "seed": int(args.seed), "evaluate": "estimate", "radius": 10.0,
            "loss": "squared", "out": str(out)}


def run_job(job: dict, out: Path) -> dict:
    """``nldist.pipeline.select`` of a job on the current cluster.

    Parameters
    ----------
    job : dict
        From :func:`job_dict`.
    out : Path
        Its output directory (emptied first).

    Returns
    -------
    dict
        The cost summary, per-stage seconds, pilot provenance and the loss estimate.
    """
    from nldist.jobs import validate_job
    from nldist.pipeline import RunContext, select

    shutil.rmtree(out, ignore_errors=True)
    ctx = RunContext(validate_job(job), out)
    met = select(ctx, force=True)
    c = met["cost"]
    return {"select_wall_s": c["wall_s"], "select_ingest_s": c.get("ingest_s"),
            "passes_over_x": c["passes_over_x"], "bytes_read": c["bytes_read"],
            "by": c.get("by"), "timings": met.get("timings"),
            "pilot": {k: v for k, v in (met.get("pilot") or {}).items() if k != "chunks"},
            "loss_estimate": met.get("loss_estimate"), "loss_ci95": met.get("loss_ci95"),
            "cached_x": bool(ctx.cached_x), "s": job["s"], "n_rows": met.get("n_rows")}


def main(argv: list[str] | None = None) -> None:
    """Command line (module docstring).

    Parameters
    ----------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=Path, default=HERE / "data" / "flights_parquet")
    ap.add_argument("--work", type=Path, default=HERE / "data" / "ingest_work")
    ap.add_argument("--sizes", default="10,30,100", help="millions of rows (files of 1M)")
    ap.add_argument("--rows-per-file", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=2, help="ours/baseline pairs per size")
    ap.add_argument("--aligned", action="store_true",
                    help="also ours with chunk_rows = rows per file (chunks aligned to files)")
    ap.add_argument("--once", action="store_true",
                    help="also the '-once' variants: ours and the job from Parquet with each "
                    "partition read once per pass (bench-only monkeypatch, see read_once)")
    ap.add_argument("--job-at", type=int, default=None,
                    help="size (millions) to run the job at (default the largest; 0: none)")
    ap.add_argument("--job-repeats", type=int, default=1)
    ap.add_argument("--model", default="glm:swish")
    ap.add_argument("--s", type=int, default=5000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--memory-limit", default="1GiB")
    ap.add_argument("--json", type=Path, default=HERE / "ingest_100m.json")
    args = ap.parse_args(argv)
    sizes = [int(v) for v in args.sizes.split(",")]
    job_at = max(sizes) if args.job_at is None else args.job_at

    import nldist.pipeline  # noqa: F401 - the driver's imports before any measurement
    from nldist.cluster import connect
    from nldist.jobs import ClusterConfig

    args.work.mkdir(parents=True, exist_ok=True)
    info: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", *sys.argv]), "machine": machine(),
        "cluster": {"n_workers": 2, "threads_per_worker": 1,
                    "memory_limit": args.memory_limit, "processes": True},
        "rss_sampling": "driver thread, psutil every 0.1 s, of this process (driver + "
                        "scheduler) and of the worker PIDs from client.run(os.getpid)",
        "source": str(args.src), "made": json.loads(args.src.with_suffix(".json").read_text())
        if args.src.with_suffix(".json").exists() else None,
        "ingest": [], "job": []}

    def save() -> None:
        info["machine"]["loadavg_now"] = loadavg()
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(info, indent=1))

    sampler = RssSampler()
    cfg = ClusterConfig(address="local", n_workers=2, threads_per_worker=1,
                        memory_limit=args.memory_limit)
    t_all = time.perf_counter()
    with connect(cfg) as client:
        info["driver_rss_connected"] = sampler.me.memory_info().rss
        for m in sizes:
            files = m * 1_000_000 // args.rows_per_file
            src = subset_dir(args.src, files, args.work)
            n = files * args.rows_per_file
            pq_bytes = dir_bytes(src)
            raw_bytes = n * (len(FEATURES) + 1) * 8
            outs = {"ours": args.work / f"ours_{m}m.zarr",
                    "baseline": args.work / f"base_{m}m.zarr",
                    "ours-aligned": args.work / f"aligned_{m}m.zarr",
                    "ours-once": args.work / f"once_{m}m.zarr"}
            methods = ["ours", "baseline"] + (["ours-aligned"] if args.aligned else []) + (
                ["ours-once"] if args.once else [])
            run = {"ours": run_ours, "baseline": run_baseline, "ours-once": run_ours_once,
                   "ours-aligned": lambda a, b: run_ours(a, b, args.rows_per_file)}
            info.setdefault("warm_read", {})[str(n)] = warm(src)
            log(f"  read the {files} files once (page cache): {info['warm_read'][str(n)]}")
            for rep in range(args.repeats):
                for method in methods:
                    rec: dict[str, Any] = {"method": method, "n": n, "files": files,
                                           "repeat": rep, "parquet_bytes": pq_bytes,
                                           "float_bytes": raw_bytes}
                    log(f"ingest {method} n={n:,} ({files} files) repeat {rep}")
                    shutil.rmtree(outs[method], ignore_errors=True)
                    with sampler.phase(client, rec):
                        rec.update(run[method](src, outs[method]))
                    rec["store_bytes"] = dir_bytes(outs[method])
                    rec["parquet_MBps"] = round(pq_bytes / 1e6 / rec["wall_s"], 1)
                    rec["float_MBps"] = round(raw_bytes / 1e6 / rec["wall_s"], 1)
                    log(f"  {method}: {rec['wall_s']:.1f} s (workers' CPU "
                        f"{rec['worker_cpu_s']:.0f} s) {rec['phases']}, driver peak "
                        f"{rec['driver_peak_rss'] / MiB:.0f} MiB, worker peak "
                        f"{rec['worker_peak_rss_max'] / MiB:.0f} MiB")
                    info["ingest"].append(rec)
                    save()
            info.setdefault("same_output", {})[str(n)] = same_output(
                client, outs["ours"], outs["baseline"])
            log(f"  same output: {info['same_output'][str(n)]}")
            if args.aligned:
                info["same_output"][f"{n} aligned"] = same_output(
                    client, outs["ours-aligned"], outs["baseline"])
            if args.once:
                info["same_output"][f"{n} once"] = same_output(
                    client, outs["ours-once"], outs["baseline"])
            shutil.rmtree(outs["baseline"], ignore_errors=True)
            shutil.rmtree(outs["ours-aligned"], ignore_errors=True)
            shutil.rmtree(outs["ours-once"], ignore_errors=True)
            if m != job_at:
                shutil.rmtree(outs["ours"], ignore_errors=True)
                continue
            datasets = {
                "zarr": {"source": str(outs["ours"])},
                "parquet": {"source": str(src), "format": "parquet", "target": TARGET,
                            "standardize": True, "standardize_target": True}}
            if args.once:
                datasets["parquet-once"] = datasets["parquet"]
            for rep in range(args.job_repeats):
                for kind, ds in datasets.items():
                    out = args.work / f"job_{kind}_{m}m"
                    rec = {"from": kind, "n": n, "files": files, "repeat": rep,
                           "dataset": ds, "model": args.model}
                    log(f"job from {kind} n={n:,} repeat {rep}")
                    patch = read_once() if kind.endswith("-once") else contextlib.nullcontext()
                    with sampler.phase(client, rec), patch:
                        rec.update(run_job(job_dict(f"bench-ingest-{kind}", ds, out, args),
                                           out))
                    log(f"  job from {kind}: {rec['wall_s']:.1f} s (workers' CPU "
                        f"{rec['worker_cpu_s']:.0f} s), passes "
                        f"{rec['passes_over_x']}, driver peak "
                        f"{rec['driver_peak_rss'] / MiB:.0f} MiB, worker peak "
                        f"{rec['worker_peak_rss_max'] / MiB:.0f} MiB")
                    info["job"].append(rec)
                    save()
    sampler.close()
    info["elapsed_s"] = round(time.perf_counter() - t_all, 1)
    info["machine"]["loadavg_end"] = loadavg()
    save()
    log(f"wrote {args.json} ({info['elapsed_s']} s)")


if __name__ == "__main__":
    main()
