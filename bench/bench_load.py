"""Load test: one whole ``nldist run`` on a tall Zarr, with per-worker memory and bytes read.

Runs ``nldist run JOB --out OUT`` as a child process (the job's own cluster: by default an
embedded LocalCluster) and samples, every ``--interval`` seconds from outside, every process
below it: resident set size (peak per worker process) and ``/proc/PID/io`` ``rchar`` (bytes
read through read(2), page-cache hits included, i.e. what the workers pulled from the
store), and the size of the Dask spill directories. Prints and writes (``--json``) wall time,
per-stage seconds from ``OUT/metrics.json``, peak RSS per worker, bytes read in all and as a
multiple of the X array's stored size, and the peak spilled bytes.

Usage::

    .venv/bin/python bench/make_data.py --n 27000000          # 10.1 GiB of X
    .venv/bin/python bench/bench_load.py bench/load_27m.yaml --json /tmp/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent


def dir_bytes(path: Path) -> int:
    """Total size of the regular files below ``path`` (0 when missing)."""
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.path.getsize(os.path.join(root, f))
            except OSError:
                pass
    return total


class TreeSampler:
    """Peak RSS and last ``rchar`` of every descendant of ``pid``; peak size of spill dirs."""

    def __init__(self, pid: int, spill_root: Path, interval: float) -> None:
        self.root = psutil.Process(pid)
        self.spill_root = spill_root
        self.interval = interval
        self.peak_rss: dict[int, int] = {}
        self.rchar: dict[int, int] = {}
        self.cmd: dict[int, str] = {}
        self.peak_spill = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                procs = self.root.children(recursive=True)
            except psutil.Error:
                procs = []
            for p in procs:
                try:
                    rss = p.memory_info().rss
                    io = p.io_counters()
                    if p.pid not in self.cmd:
                        self.cmd[p.pid] = " ".join(p.cmdline())[:120]
                except psutil.Error:
                    continue
                self.peak_rss[p.pid] = max(self.peak_rss.get(p.pid, 0), rss)
                self.rchar[p.pid] = io.read_chars
            self.peak_spill = max(self.peak_spill, dir_bytes(self.spill_root))
            time.sleep(self.interval)

    def __enter__(self) -> TreeSampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("job", type=Path)
    ap.add_argument("--out", type=Path, default=None, help="job output dir (default: a tmp dir)")
    ap.add_argument("--interval", type=float, default=0.2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the output directory")
    ap.add_argument("--verb", default="run", choices=("run", "score"),
                    help="nldist verb (score: the scores stage only, e.g. a large-p job)")
    args = ap.parse_args(argv)

    import yaml
    import zarr

    job = yaml.safe_load(args.job.read_text())
    out = args.out or Path(tempfile.mkdtemp(prefix="nldist-load-")) / "out"
    src = Path(job["dataset"]["source"])
    if not (src / "zarr.json").exists():  # a packaged dataset: ingested to OUT/dataset.zarr
        src = out / "dataset.zarr"
    spill_root = Path(tempfile.mkdtemp(prefix="nldist-load-spill-"))
    env = {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(spill_root)}
    cmd = [str(Path(sys.executable).with_name("nldist")), args.verb, str(args.job), "--out",
           str(out)]
    print(" ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    with TreeSampler(proc.pid, spill_root, args.interval) as ts:
        rc = proc.wait()
    wall = time.perf_counter() - t0
    if rc != 0:
        sys.exit(f"error: nldist {args.verb} exited with {rc}")
    X = zarr.open_group(str(src), mode="r")["X"]
    x_stored = dir_bytes(src / "X")
    print(f"X: {X.shape} {X.dtype}, {X.nbytes / 2**30:.2f} GiB in memory, "
          f"{x_stored / 2**30:.2f} GiB stored, chunks {X.chunks}", flush=True)
    mpath = out / "metrics.json"
    metrics = json.loads(mpath.read_text()) if mpath.exists() else {}
    # dask worker processes: the spawned children holding real memory
    workers = {pid: rss for pid, rss in ts.peak_rss.items()
               if "multiprocessing" in ts.cmd.get(pid, "") and rss > 50 * 2**20}
    read_total = sum(ts.rchar[p] for p in workers)
    res = {
        "job": str(args.job), "n": X.shape[0], "d": X.shape[1], "x_gib": X.nbytes / 2**30,
        "x_stored_gib": x_stored / 2**30, "chunks": X.chunks, "wall_s": wall,
        "stages_s": metrics.get("timings"), "peak_rss_mib_per_worker":
        sorted(round(v / 2**20) for v in workers.values()),
        "bytes_read_gib": read_total / 2**30, "reads_of_x": read_total / x_stored,
        "peak_spill_mib": ts.peak_spill / 2**20, "cpu_count": os.cpu_count(),
        "cluster": job.get("cluster"), "rel_error": metrics.get("rel_error"),
    }
    print(json.dumps(res, indent=2, default=str))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=str))
    shutil.rmtree(spill_root, ignore_errors=True)
    if args.out is None and not args.keep:
        shutil.rmtree(out.parent, ignore_errors=True)
    return res


if __name__ == "__main__":
    main()
