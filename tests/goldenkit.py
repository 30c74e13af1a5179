"""Golden outputs of a fixed set of jobs (tests/golden/*.yaml), recorded before the
architecture redesign (issue 11) and compared bit for bit by tests/test_golden.py.

``python tests/goldenkit.py record`` re-records them (only when a change of results is
intended: say so in the commit). Each job runs through the CLI (``python -m nldist.cli run``)
into a fresh directory; what is compared:

* every ``scores.zarr/<kind>`` array (its values and attrs, persist timings dropped),
* every ``samples/<kind>.npz`` array, every ``theta*.npy`` and the ``theta`` of
  ``theta_star.npz`` / ``theta_pilot.npz`` (and the pilot's indices),
* ``metrics.json`` and ``experiment.json`` without timings, paths and resume counts.

Floats are compared as bytes, with the driver's BLAS on one thread (:data:`THREADS`; the
last bits of a GEMM depend on how many threads split it). BLAS kernels are chosen per CPU,
so on a machine whose CPU or library versions differ from the recording's
(``machine.json``: CPU model, library versions and the BLAS kernels threadpoolctl reports —
VMs name several CPU generations "AMD EPYC") the arrays are compared to 1e-7 relative
instead (digests of float bytes skipped), and the test says so.

Recorded with the code before the redesign: ``git worktree add /tmp/old a08f6cf`` then
``PYTHONPATH=/tmp/old python tests/goldenkit.py record`` (the CLI subprocesses then run the
old package).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
ROOT = HERE.parent
JOBS = ["california", "relu2", "torch_mlp", "bce", "ridge", "sketch_cols", "sketch_rows",
        "device_cpu", "resume"]
#: jobs whose CLI run also gets --experiment
EXPERIMENT = {"california"}
DROP_METRICS = {"timings", "dataset", "resume", "nldist_version", "cost"}  # cost: what a run read
#: digests of the job's dataset settings, which hold the source path (a temporary file for bce)
DROP_ATTRS = {"dataset_key", "resume_key"}
#: persisted-block statistics that do not depend on timings (``persist: auto`` decides per
#: chunk from measured times: then only the mode is kept)
PERSIST_KEEP = ("mode", "chunks", "persisted", "bytes", "unavailable", "pass1")


def machine() -> dict:
    """What decides the bits of BLAS/LAPACK results: CPU model, library versions."""
    import scipy
    import torch

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    from threadpoolctl import threadpool_info

    # the BLAS kernels chosen for this CPU: VMs report "AMD EPYC" for several generations
    # whose kernels (Zen vs SkylakeX) round differently
    blas = sorted(f"{i.get('internal_api')} {i.get('architecture')}" for i in threadpool_info()
                  if i.get("user_api") == "blas")
    return {"cpu": cpu, "machine": platform.machine(), "numpy": np.__version__,
            "scipy": scipy.__version__, "torch": torch.__version__, "blas": blas}


def bce_source(path: Path) -> Path:
    """California Housing with a binary target 1[MedHouseVal > 2] as an .npz source."""
    from nldist.datasets import load

    df, info = load("california")
    y = (df[info.target].to_numpy() > 2.0).astype(np.float64)
    X = df.drop(columns=[info.target]).to_numpy(dtype=np.float64)
    np.savez(path, X=X, y=y)
    return path


def job_file(name: str, work: Path) -> Path:
    """The golden job ``name`` with its placeholders filled, written under ``work``."""
    text = (GOLDEN / f"{name}.yaml").read_text()
    if "BCE_NPZ" in text:
        text = text.replace("BCE_NPZ", str(bce_source(work / "bce.npz")))
    path = work / f"{name}.yaml"
    path.write_text(text)
    return path


#: BLAS and OpenMP threads of the driver: one, whatever the parent process set (a GEMM's
#: last bits depend on how many threads split it; a test that started a LocalCluster
#: earlier in the same pytest process leaves OMP_NUM_THREADS=1 behind)
THREADS = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args: Any, cwd: Path = ROOT, **kw: Any) -> subprocess.CompletedProcess:
    env = {**os.environ, **THREADS}
    return subprocess.run([sys.executable, "-m", "nldist.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, env=env, **kw)


def run_job(name: str, work: Path) -> Path:
    """Run golden job ``name`` end to end into ``work/<name>``; return that directory."""
    out = work / name
    args = ["run", job_file(name, work), "--out", out, "--quiet"]
    if name in EXPERIMENT:
        args.append("--experiment")
    res = cli(*args)
    if res.returncode != 0:
        raise RuntimeError(f"golden job {name} failed ({res.returncode}): {res.stderr[-3000:]}")
    return out


def _clean_persist(p: dict) -> dict:
    keep = PERSIST_KEEP if p.get("mode") == "always" else ("mode",)
    return {k: p.get(k) for k in keep}


def _clean_attrs(attrs: dict) -> dict:
    attrs = {k: v for k, v in attrs.items() if k not in DROP_ATTRS}
    if "persist" in attrs:
        attrs["persist"] = _clean_persist(attrs["persist"])
    return attrs


def _clean_metrics(m: dict) -> dict:
    m = {k: v for k, v in m.items() if k not in DROP_METRICS}
    for res in (m.get("kinds") or {}).values():
        if "persist" in res:
            res["persist"] = _clean_persist(res["persist"])
    return m


def collect(out: Path) -> tuple[dict[str, np.ndarray], dict]:
    """(arrays, json-able parts) of a finished run directory."""
    import zarr

    arrays: dict[str, np.ndarray] = {}
    meta: dict[str, Any] = {}
    store = out / "scores.zarr"
    for kind_dir in sorted(p for p in store.iterdir() if (p / "zarr.json").exists()):
        arr = zarr.open_array(str(kind_dir), mode="r")
        arrays[f"scores/{kind_dir.name}"] = np.asarray(arr[:])
        meta[f"scores/{kind_dir.name}"] = _clean_attrs(dict(arr.attrs))
    for npz in sorted((out / "samples").glob("*.npz")):
        with np.load(npz) as z:
            for key in z.files:
                arrays[f"samples/{npz.stem}/{key}"] = z[key]
    for npy in sorted(out.glob("theta*.npy")):
        arrays[npy.stem] = np.load(npy)
    for npz_name, keys in (("theta_star.npz", ("theta",)),
                           ("theta_pilot.npz", ("theta", "indices"))):
        if (out / npz_name).exists():
            with np.load(out / npz_name) as z:
                for key in keys:
                    arrays[f"{Path(npz_name).stem}/{key}"] = z[key]
    meta["metrics"] = _clean_metrics(json.loads((out / "metrics.json").read_text()))
    if (out / "experiment.json").exists():
        exp = json.loads((out / "experiment.json").read_text())
        meta["experiment"] = {k: v for k, v in exp.items() if k not in DROP_METRICS}
    return arrays, meta


def save(name: str, arrays: dict, meta: dict) -> None:
    np.savez_compressed(GOLDEN / f"{name}.npz", **{k.replace("/", "|"): v
                                                   for k, v in arrays.items()})
    (GOLDEN / f"{name}.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")


def load(name: str) -> tuple[dict, dict]:
    with np.load(GOLDEN / f"{name}.npz", allow_pickle=False) as z:
        arrays = {k.replace("|", "/"): z[k] for k in z.files}
    return arrays, json.loads((GOLDEN / f"{name}.json").read_text())


def same_machine() -> bool:
    """Whether the recording's machine.json equals this machine (a recording without the
    BLAS kernels cannot be shown to match: it is then compared to 1e-7, not bit for bit)."""
    path = GOLDEN / "machine.json"
    return path.exists() and json.loads(path.read_text()) == machine()


def record(names: list[str], work: Path) -> None:
    work.mkdir(parents=True, exist_ok=True)
    for name in names:
        arrays, meta = collect(run_job(name, work))
        save(name, arrays, meta)
        print(f"recorded {name}: {len(arrays)} arrays")
    (GOLDEN / "machine.json").write_text(json.dumps(machine(), indent=1) + "\n")


if __name__ == "__main__":
    import tempfile

    if len(sys.argv) < 2 or sys.argv[1] != "record":
        sys.exit("usage: python tests/goldenkit.py record [JOB ...]")
    with tempfile.TemporaryDirectory() as tmp:
        record(sys.argv[2:] or JOBS, Path(tmp))
