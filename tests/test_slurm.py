"""A real job on a real single-node Slurm: through dask-jobqueue and as an sbatch job.

The session fixture starts Slurm + MUNGE with ``cluster/slurm/up.sh`` (installing Debian's
slurm-wlm and munge when missing) and stops it at the end if it started it. Results must
equal the LocalCluster run of the same job: same scores (to rounding), same sample.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from clusterkit import ROOT, job_dict, make_certs, make_dataset, outputs, run_local, write_job

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

SLURM_DIR = Path(os.environ.get("NLDIST_SLURM_DIR", "/tmp/nldist-slurm"))
KINDS = ["nonlinear-leverage", "linear-leverage", "uniform"]


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def slurm():
    """SLURM_CONF of a running single-node Slurm (cluster/slurm/up.sh)."""
    was_up = _alive(SLURM_DIR / "run" / "slurmctld.pid")
    t0 = time.perf_counter()
    proc = subprocess.run(["bash", str(ROOT / "cluster/slurm/up.sh"), str(SLURM_DIR)],
                          capture_output=True, text=True, timeout=600)
    if proc.returncode == 3:
        pytest.skip(f"no Slurm: {proc.stderr.strip()}")
    if proc.returncode != 0:
        logs = "".join(f"\n--- {p}\n{p.read_text()[-2000:]}" for p in
                       sorted((SLURM_DIR / "log").glob("*.log")) if p.exists())
        pytest.fail(f"cluster/slurm/up.sh failed ({proc.returncode}): {proc.stderr}{logs}")
    print(f"slurm up in {time.perf_counter() - t0:.1f} s")
    conf = str(SLURM_DIR / "slurm.conf")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf
    yield conf
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not was_up:
        subprocess.run(["bash", str(ROOT / "cluster/slurm/down.sh"), str(SLURM_DIR)],
                       capture_output=True, timeout=120)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("slurmdata") / "d.zarr")


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """The same job on a LocalCluster: scores and samples."""
    out = tmp_path_factory.mktemp("ref")
    run_local(job_dict(data), out)
    return outputs(out, KINDS)


def _same(got: dict, ref: dict) -> None:
    for kind in KINDS:
        np.testing.assert_allclose(got[kind][0], ref[kind][0], rtol=1e-9, atol=1e-15,
                                   err_msg=kind)
        assert np.isclose(got[kind][0].sum(), 1.0)
        np.testing.assert_array_equal(got[kind][1], ref[kind][1], err_msg=kind)


def test_up_is_idempotent(slurm):
    proc = subprocess.run(["bash", str(ROOT / "cluster/slurm/up.sh"), str(SLURM_DIR)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "already up" in proc.stderr
    state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], capture_output=True, text=True)
    assert state.stdout.strip().startswith(("idle", "mixed", "allocated")), state


def test_dask_jobqueue_run_equals_local(slurm, data, reference, tmp_path):
    """cluster.address=slurm: two Slurm jobs, one Dask worker each, run the passes."""
    from nldist import pipeline
    from nldist.cluster import connect
    from nldist.jobs import validate_job
    from nldist.pipeline import RunContext

    job = validate_job(job_dict(data, address="slurm", slurm={
        "jobs": 2, "cores": 1, "memory": "1GiB", "walltime": "00:15:00", "interface": "lo",
        "log_directory": str(tmp_path / "logs"), "timeout": 120}))
    with connect(job.cluster, name=job.name) as client:
        client.wait_for_workers(2, timeout=120)
        # every worker really is a process of a Slurm job
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(job_ids) == 2 and all(job_ids.values()), job_ids
        queue = subprocess.run(["squeue", "-h", "-o", "%i %j %T"], capture_output=True,
                               text=True, check=True).stdout
        for jid in job_ids.values():
            assert f"{jid} nldist-ctest RUNNING" in queue, queue
        pipeline.run(RunContext(job, tmp_path / "out"), stop_after="sample")
    _same(outputs(tmp_path / "out", KINDS), reference)
    # the worker jobs are cancelled when the cluster closes
    for _ in range(100):
        left = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True)
        if not set(left.stdout.split()) & set(job_ids.values()):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"worker jobs still queued: {left.stdout}")


def test_dask_jobqueue_with_tls(slurm, tmp_path):
    """cluster.tls + slurm: scheduler, Slurm-job workers and client all on tls://."""
    pytest.importorskip("cryptography")
    from nldist.cluster import connect
    from nldist.jobs import ClusterConfig

    cfg = ClusterConfig(address="slurm", tls=make_certs(tmp_path), slurm={
        "jobs": 1, "interface": "lo", "timeout": 120, "log_directory": str(tmp_path)})
    with connect(cfg, name="tls") as client:
        assert client.scheduler.address.startswith("tls://127.0.0.1:")
        job_ids = client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert len(job_ids) == 1 and all(w.startswith("tls://") for w in job_ids)
        assert all(job_ids.values())
        assert client.submit(sum, [1, 2]).result() == 3


def test_sbatch_run_equals_local(slurm, data, reference, tmp_path):
    """cluster/slurm/nldist.sbatch runs `nldist run` as a batch job (LocalCluster inside)."""
    job_file = write_job(tmp_path / "job.yaml", job_dict(data))
    out = tmp_path / "out"
    env = {**os.environ, "SLURM_CONF": slurm,
           "NLDIST": f"{ROOT / '.venv/bin/python'} -m nldist.cli"}
    if not (ROOT / ".venv/bin/python").exists():
        import sys

        env["NLDIST"] = f"{sys.executable} -m nldist.cli"
    t0 = time.perf_counter()
    proc = subprocess.run(
        ["sbatch", "--wait", "--parsable", "--cpus-per-task=2", "--mem=3G",
         f"--output={tmp_path}/slurm-%j.out", str(ROOT / "cluster/slurm/nldist.sbatch"),
         str(job_file), "--out", str(out), "--quiet"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    logs = "".join(p.read_text() for p in tmp_path.glob("slurm-*.out"))
    assert proc.returncode == 0, f"{proc.stderr}\n{logs}"
    job_id = proc.stdout.strip().split(";")[0]
    assert f"Slurm job {job_id} on" in logs, logs
    print(f"sbatch job {job_id}: {time.perf_counter() - t0:.1f} s")
    assert (out / "metrics.json").exists(), logs
    _same(outputs(out, KINDS), reference)


@pytest.mark.parametrize("bad, words", [
    ({"partition": "no-such-partition"}, "invalid partition"),
    ({"memory": "100TiB"}, ""),
])
def test_a_job_slurm_refuses_fails_at_once_in_one_line(slurm, tmp_path, bad, words):
    """sbatch would fail at once (bad partition, impossible memory): one line naming
    cluster.slurm within seconds, not the full timeout with tornado tracebacks."""
    from nldist.cluster import connect
    from nldist.errors import NldistError
    from nldist.jobs import ClusterConfig

    cfg = ClusterConfig(address="slurm", slurm={"jobs": 1, "interface": "lo", "timeout": 300,
                                                "log_directory": str(tmp_path), **bad})
    t0 = time.perf_counter()
    with pytest.raises(NldistError, match=rf"Slurm refuses the worker job: .*{words}"):
        with connect(cfg, name="bad"):
            pass
    assert time.perf_counter() - t0 < 60
