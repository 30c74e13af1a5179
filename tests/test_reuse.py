"""Content-addressed reuse and one run per output directory (issue 14).

Stale inputs must never be reused: an edited source file, a Zarr source re-written in
place, a truncated cache file. Every scenario is compared with a fresh run of the same job
into a new directory (same metrics, bit for bit, timings aside), and relative errors are
never negative. An output directory holding another job's run is refused, and with force
emptied first; a failed re-run never leaves the previous metrics looking current.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nldist.errors import NldistError
from nldist.ingest import ingest
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, run

ROOT = Path(__file__).resolve().parents[1]


def _csv(path: Path, n: int, scale: float = 1.0, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3))
    y = scale * (np.tanh(X @ [0.5, -0.3, 0.2]) + 0.1 * rng.normal(size=n))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y}).to_csv(path, index=False)
    return path


def _job(source: Path, **kw) -> dict:
    return {"name": "reuse", "dataset": {"source": str(source), "target": "y",
                                         "chunk_rows": 50},
            "model": "glm:tanh", "theta": "optimum", "kind": "nonlinear-leverage",
            "baselines": ["linear-leverage", "uniform"], "s": 60, "seed": 3,
            "cluster": {"address": "synchronous"}, **kw}


def _run(job: dict, out: Path, force: bool = False) -> tuple[dict, RunContext]:
    ctx = RunContext(validate_job(job), out)
    return run(ctx, force=force), ctx


def _same(a: dict, b: dict) -> None:
    """Equal metrics but for timings (also those of the persisted-block decision), the
    dataset path and what was reused."""
    drop = {"timings", "dataset", "resume", "reuse", "cost"}  # cost: what this run read

    def clean(m: dict) -> dict:
        m = {k: v for k, v in m.items() if k not in drop}
        m["kinds"] = {k: {f: v for f, v in r.items() if f != "persist"}
                      for k, r in m["kinds"].items()}
        if isinstance(m.get("theta_star"), dict):  # what theta* cost: its seconds vary
            m["theta_star"] = {f: v for f, v in m["theta_star"].items() if f != "seconds"}
        return m

    assert clean(a) == clean(b)


@pytest.fixture(autouse=True)
def _sync():
    import dask

    with dask.config.set(scheduler="synchronous"):
        yield


def test_edited_csv_source_is_reingested_and_nothing_stale_is_reused(tmp_path):
    src = _csv(tmp_path / "d.csv", 200)
    out = tmp_path / "out"
    m1, _ = _run(_job(src), out)
    assert m1["n_rows"] == 200
    _csv(src, 120, scale=10.0, seed=1)  # 200 -> 120 rows, y x 10, same path
    m2, ctx = _run(_job(src), out)
    assert m2["n_rows"] == 120
    assert ("ingest", "recomputed", "source or settings changed") in ctx.reuse
    assert all(r["rel_error"] >= 0 for r in m2["kinds"].values())
    fresh, _ = _run(_job(src), tmp_path / "fresh")
    _same(m2, fresh)


def test_zarr_source_rewritten_in_place_invalidates_theta_and_scores(tmp_path):
    src = _csv(tmp_path / "d.csv", 300)
    store = tmp_path / "data.zarr"
    ingest(src, store, target="y", chunk_rows=50)
    out = tmp_path / "out"
    m1, _ = _run(_job(store), out)
    # same n, new y: re-ingested over the same path
    df = pd.read_csv(src)
    df["y"] = -3.0 * df["y"] + 1.0
    df.to_csv(src, index=False)
    ingest(src, store, target="y", chunk_rows=50, overwrite=True)
    m2, ctx = _run(_job(store), out)
    stages = {stage: what for stage, what, _ in ctx.reuse}
    assert stages.get("theta*") == "recomputed"
    assert stages.get("scores nonlinear-leverage") == "recomputed"
    assert m2["loss_opt"] != m1["loss_opt"]
    assert all(r["rel_error"] >= 0 for r in m2["kinds"].values())
    fresh, _ = _run(_job(store), tmp_path / "fresh")
    _same(m2, fresh)


def test_unchanged_inputs_are_reused_and_said_so(tmp_path):
    src = _csv(tmp_path / "d.csv", 200)
    out = tmp_path / "out"
    m1, _ = _run(_job(src), out)
    m2, ctx = _run(_job(src), out)
    _same(m1, m2)
    assert ctx.reuse_summary() == ("reused: ingest, theta*, scores nonlinear-leverage, "
                                   "scores linear-leverage, scores uniform")


def test_truncated_theta_star_is_rebuilt(tmp_path):
    src = _csv(tmp_path / "d.csv", 200)
    out = tmp_path / "out"
    m1, _ = _run(_job(src), out)
    npz = out / "theta_star.npz"
    npz.write_bytes(npz.read_bytes()[:40])
    m2, ctx = _run(_job(src), out)
    assert ("theta*", "recomputed", "inputs changed") in ctx.reuse
    _same(m1, m2)


def test_another_jobs_output_directory_is_refused_then_replaced_with_force(tmp_path):
    src = _csv(tmp_path / "d.csv", 200)
    out = tmp_path / "out"
    _run(_job(src), out)
    (out / "experiment.json").write_text("{}")  # an output only job A had
    other = _job(src, name="other", model="glm:sigmoid", baselines=["uniform"])
    with pytest.raises(NldistError, match="holds the outputs of another job.*--force"):
        _run(other, out)
    assert (out / "theta_linear-leverage.npy").exists()  # nothing was touched
    m, _ = _run(other, out, force=True)
    assert m["name"] == "other"
    assert not (out / "experiment.json").exists()
    assert not (out / "theta_linear-leverage.npy").exists()
    assert json.loads((out / "run.json").read_text())["identity"]["name"] == "other"


def test_failed_rerun_leaves_no_metrics_looking_current(tmp_path):
    src = _csv(tmp_path / "d.csv", 200)
    out = tmp_path / "out"
    _run(_job(src), out)
    assert (out / "metrics.json").exists()
    with pytest.raises(NldistError, match="theta file"):
        _run(_job(src, theta=str(tmp_path / "missing.npy")), out)
    assert not (out / "metrics.json").exists()
    man = json.loads((out / "run.json").read_text())
    assert man["complete"] is False


def test_zero_optimum_loss_prints_a_summary(tmp_path):
    """All-zero targets: L(theta*) = 0 exactly; the summary says n/a instead of crashing."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    pd.DataFrame({"a": X[:, 0], "b": X[:, 1], "y": np.zeros(80)}).to_csv(
        tmp_path / "z.csv", index=False)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(tmp_path / "z.csv", model="linear", s=20)))
    res = subprocess.run([sys.executable, "-m", "nldist.cli", "run", str(job), "--out",
                          str(tmp_path / "o")], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "COLUMNS": "120"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert "n/a" in res.stdout and "Traceback" not in res.stderr
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["loss_opt"] == 0.0 and m["rel_error"] is None
    assert (tmp_path / "o" / "report.html").read_text().rstrip().endswith("</html>")


# --------------------------------------------------------------------------------------
# bad values and OS errors: one line, non-zero exit, nothing half-written
# --------------------------------------------------------------------------------------


def _cli(*args: object, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nldist.cli", *map(str, args)],
                          capture_output=True, text=True, cwd=cwd)


def _one_error_line(res: subprocess.CompletedProcess, match: str) -> None:
    assert res.returncode != 0
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr[-2000:]
    assert match in lines[0], lines[0]


def test_standardizing_huge_values_is_an_error_naming_the_column(tmp_path):
    df = pd.DataFrame({"ok": np.arange(10.0), "big": [1e308, -1e308] * 5, "y": np.ones(10)})
    df.to_csv(tmp_path / "big.csv", index=False)
    res = _cli("ingest", tmp_path / "big.csv", tmp_path / "big.zarr", "--target", "y",
               "--standardize")
    _one_error_line(res, "big")
    assert "rescale or drop" in res.stderr
    assert not (tmp_path / "big.zarr").exists() and not (tmp_path / "big.zarr.partial").exists()


def test_ingest_overwrite_onto_a_file_is_one_line(tmp_path):
    _csv(tmp_path / "d.csv", 20)
    (tmp_path / "f.zarr").write_text("not a dataset")
    res = _cli("ingest", tmp_path / "d.csv", tmp_path / "f.zarr", "--target", "y",
               "--overwrite")
    _one_error_line(res, "is a file")
    assert (tmp_path / "f.zarr").read_text() == "not a dataset"


def test_a_directory_as_job_file_is_one_line(tmp_path):
    _one_error_line(_cli("run", tmp_path), "is a directory")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_directory_is_one_line(tmp_path):
    src = _csv(tmp_path / "d.csv", 60)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(src)))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        _one_error_line(_cli("run", job, "--out", ro / "out"), "permission")
    finally:
        ro.chmod(0o700)


def test_read_only_file_system_is_one_line(tmp_path):
    """A bind mount made read-only (EROFS even for root); skipped where mounts are not allowed."""
    src = _csv(tmp_path / "d.csv", 60)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(src)))
    ro = tmp_path / "rofs"
    ro.mkdir()
    try:
        subprocess.run(["mount", "--bind", str(ro), str(ro)], check=True, capture_output=True)
        subprocess.run(["mount", "-o", "remount,bind,ro", str(ro)], check=True,
                       capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot make a read-only bind mount here")
    try:
        _one_error_line(_cli("run", job, "--out", ro / "out"), "read-only")
    finally:
        subprocess.run(["umount", str(ro)], capture_output=True)


def test_sample_too_large_for_memory_is_refused(tmp_path):
    import nldist

    with pytest.raises(NldistError, match="GiB on the driver.*smaller s"):
        nldist.sample(np.ones(10), 10**13)


# --------------------------------------------------------------------------------------
# bounded, talkative waits
# --------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_port_that_is_not_a_dask_scheduler_fails_within_connect_timeout(tmp_path):
    """An HTTP server accepts the connection and stays silent: one line, within the timeout
    (distributed's own client waits far past it)."""
    import time

    port = _free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind",
                             "127.0.0.1"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=tmp_path)
    try:
        time.sleep(1.0)
        src = _csv(tmp_path / "d.csv", 60)
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps(_job(src, cluster={"address": "local",
                                                     "connect_timeout": 3})))
        t0 = time.monotonic()
        res = _cli("run", job, "--out", tmp_path / "o", "--cluster", f"tcp://127.0.0.1:{port}")
        took = time.monotonic() - t0
    finally:
        http.kill()
        http.wait()
    _one_error_line(res, "did not answer as a Dask scheduler within 3 s")
    assert took < 30, took


def test_a_scheduler_without_workers_fails_after_connect_timeout(tmp_path):
    import time

    port = _free_port()
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler",
                              "--host", "127.0.0.1", "--port", str(port),
                              "--dashboard-address", ":0"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(3.0)
        src = _csv(tmp_path / "d.csv", 60)
        job = tmp_path / "job.yaml"
        job.write_text(json.dumps(_job(src, cluster={"address": "local",
                                                     "connect_timeout": 3})))
        res = _cli("run", job, "--out", tmp_path / "o", "--cluster", f"tcp://127.0.0.1:{port}")
    finally:
        sched.kill()
        sched.wait()
    _one_error_line(res, "has no workers after 3 s")


def test_validate_never_runs_user_code(tmp_path):
    """A schema check reads the model file; importing it would have written the marker."""
    marker = tmp_path / "ran"
    (tmp_path / "net.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                     "def make(d):\n    raise SystemExit('ran')\n")
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps({"dataset": {"source": "california"},
                               "model": f"torch:{tmp_path / 'net.py'}:make"}))
    res = _cli("validate", job)
    assert res.returncode == 0, res.stderr
    assert not marker.exists()
    job.write_text(json.dumps({"dataset": {"source": "california"},
                               "model": f"torch:{tmp_path / 'net.py'}:other"}))
    _one_error_line(_cli("validate", job), "has no callable 'other'")
    assert not marker.exists()


def test_disk_full_is_one_line(tmp_path):
    """A 1 MiB tmpfs as the output directory (ENOSPC mid-run); skipped where mounts are not
    allowed."""
    src = _csv(tmp_path / "d.csv", 4000)
    job = tmp_path / "job.yaml"
    job.write_text(json.dumps(_job(src, dataset={"source": str(src), "target": "y",
                                                 "chunk_rows": 500})))
    small = tmp_path / "small"
    small.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)],
                       check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("cannot mount a tmpfs here")
    try:
        res = _cli("run", job, "--out", small / "out")
        _one_error_line(res, "No space left on device; free disk space")
        assert not (small / "out" / "metrics.json").exists()
        assert not list(small.rglob("*.partial.npz"))
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_ctrl_c_during_a_many_chunk_pass_prints_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group: driver and local workers)
    in the middle of a run over ~150 chunks: exit 130 and the one 'interrupted' line, not
    the asyncio/tornado tracebacks of the cluster's teardown."""
    import signal
    import time

    src = _csv(tmp_path / "big.csv", 60_000)
    job = tmp_path / "job.yaml"
    job.write_text(f"name: intr\ndataset: {{source: {src}, target: y, chunk_rows: 400}}\n"
                   "model: glm:sigmoid\ns: 100\ncache_x: never\nmax_iter: 200\ntol: 1.0e-15\n"
                   "cluster: {address: local, n_workers: 2}\n")
    # as from a terminal: SIGINT at its default. A test session started in the background
    # without job control (`cmd &` in a script, as CI may be) has SIGINT ignored, and the
    # child would inherit that and rightly ignore the Ctrl-C (the run then ends with 0).
    proc = subprocess.Popen([sys.executable, "-m", "nldist", "run", str(job), "--out",
                             str(tmp_path / "o"), "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.monotonic()
    while not (tmp_path / "o" / "run.json").exists() and time.monotonic() - t0 < 120:
        time.sleep(0.05)
    time.sleep(3.0)  # inside the theta* passes over 150 chunks
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["error: interrupted; re-run the same command to resume"], err[-3000:]


def test_every_reusable_output_has_a_declared_key():
    """KEYS names job fields only; a kind's scores depend on declared fields and inputs
    only; a stage key refuses an input its declaration does not name."""
    from types import SimpleNamespace

    from nldist.jobs import JobConfig
    from nldist.pipeline.stages.data import KEYS, stage_key
    from nldist.pipeline.stages.scoring import UNUSED_SCORE_FIELDS
    from nldist.scores.kinds import KINDS

    assert {"ingest", "optimum", "pilot", "scores", "dual_blocks"} <= set(KEYS)
    for name, key in KEYS.items():
        assert set(key.fields) <= set(JobConfig.model_fields), name
    scores = set(KEYS["scores"].fields) | set(KEYS["scores"].inputs)
    assert set(UNUSED_SCORE_FIELDS) <= scores
    for kind in KINDS.values():
        assert set(kind.depends_on) <= set(UNUSED_SCORE_FIELDS), kind.name
    with pytest.raises(TypeError, match="ingest key takes"):
        stage_key(SimpleNamespace(job=None), "ingest", rows=3)
