"""Resume after a killed driver, from per-chunk completion records (nldist.store.scores).

A real ``nldist sample`` process (driver + its LocalCluster worker, one process group) is
SIGKILLed while it writes the second kind's score chunks. Running the same job again must
reuse every verified chunk, compute exactly the others (asserted by count and by the run id
in each record), and give outputs bit-identical to an uninterrupted run. Damaged outputs (a
changed chunk, a truncated chunk file, a lost record, other inputs) are detected and
recomputed, never reused.
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from clusterkit import PYTHON, ROOT, Proc, make_dataset, write_job

from nldist import pipeline
from nldist.cluster import connect
from nldist.jobs import validate_job
from nldist.pipeline import RunContext

pytestmark = pytest.mark.slow

N, CHUNK = 12000, 50
NCH = N // CHUNK
KINDS = ["nonlinear-leverage", "linear-leverage"]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    d = tmp_path_factory.mktemp("rdata")
    data = make_dataset(d / "d.zarr", n=N, d=4, chunk_rows=CHUNK)
    theta = d / "theta.npy"
    np.save(theta, np.array([0.3, -0.2, 0.1, 0.4, 0.05]))
    return {"name": "resume", "dataset": {"source": str(data)}, "model": "glm:swish",
            "theta": str(theta), "kind": KINDS[0], "baselines": KINDS[1:], "s": 300,
            "seed": 11, "cluster": {"address": "synchronous"}}


def _run(job: dict, out: Path) -> RunContext:
    cfg = validate_job(job)
    ctx = RunContext(cfg, out)
    with connect(cfg.cluster):
        pipeline.run(ctx, stop_after="sample")
    return ctx


def _read(out: Path) -> dict:
    got = {}
    for kind in KINDS:
        arr = zarr.open_array(str(out / "scores.zarr" / kind), mode="r")
        with np.load(out / "samples" / f"{kind}.npz") as z:
            got[kind] = (np.asarray(arr[:]), z["indices"].copy(), z["weights"].copy(),
                         dict(arr.attrs))
    return got


def _identical(a: dict, b: dict) -> None:
    for kind in KINDS:
        assert a[kind][0].tobytes() == b[kind][0].tobytes(), kind  # bit for bit
        np.testing.assert_array_equal(a[kind][1], b[kind][1])
        np.testing.assert_array_equal(a[kind][2], b[kind][2])
        assert a[kind][3]["complete"] and b[kind][3]["complete"]


def _records(out: Path, kind: str) -> dict[int, dict]:
    d = out / "scores.zarr" / kind / "done"
    return {int(p.stem): json.loads(p.read_text()) for p in d.glob("*.json")} if d.is_dir() \
        else {}


@pytest.fixture(scope="module")
def reference(job, tmp_path_factory):
    out = tmp_path_factory.mktemp("clean")
    ctx = _run(job, out)
    assert all(ctx.resume_stats[k]["computed"] == NCH for k in KINDS)
    return _read(out)


def test_killed_driver_resumes_without_redoing_finished_chunks(job, reference, tmp_path):
    out = tmp_path / "out"
    job_file = write_job(tmp_path / "job.yaml", {**job, "cluster": {"address": "local"}})
    drv = Proc([PYTHON, "-m", "nldist.cli", "sample", str(job_file), "--out", str(out),
                "--set", "cluster.n_workers=1", "--quiet"], tmp_path / "driver.log", cwd=ROOT)
    second = out / "scores.zarr" / KINDS[1] / "done"
    try:
        t0 = time.monotonic()
        while time.monotonic() - t0 < 300:
            if drv.p.poll() is not None:
                pytest.fail(f"the driver ended before it was killed: {drv.text()[-2000:]}")
            if second.is_dir() and sum(1 for _ in second.glob("*.json")) >= 5:
                break
            time.sleep(0.005)
        else:
            pytest.fail("the second kind's pass 2 never started")
        drv.kill(signal.SIGKILL)  # the driver and its LocalCluster worker: a lost host
        drv.p.wait(30)
    finally:
        drv.stop()
    time.sleep(0.5)
    before = {k: _records(out, k) for k in KINDS}
    first_attrs = dict(zarr.open_array(str(out / "scores.zarr" / KINDS[0]), mode="r").attrs)
    second_attrs = dict(zarr.open_array(str(out / "scores.zarr" / KINDS[1]), mode="r").attrs)
    assert first_attrs["complete"] and len(before[KINDS[0]]) == NCH
    assert not second_attrs["complete"], "the second kind finished before the kill"
    done2 = len(before[KINDS[1]])
    assert 5 <= done2 < NCH
    assert (out / "scores.zarr" / KINDS[1] / "pass1.npz").exists()
    killed_run = {r["run"] for r in before[KINDS[1]].values()}
    assert len(killed_run) == 1

    ctx = _run(job, out)  # the same job again
    st = ctx.resume_stats
    assert st[KINDS[0]] == {"chunks": NCH, "reused": NCH, "computed": 0, "invalid": 0,
                            "pass1": None}
    assert st[KINDS[1]] == {"chunks": NCH, "reused": done2, "computed": NCH - done2,
                            "invalid": 0, "pass1": "reused"}
    after = _records(out, KINDS[1])
    assert len(after) == NCH
    for i, rec in before[KINDS[1]].items():  # finished chunks were not rewritten
        assert after[i] == rec
    assert {r["run"] for i, r in after.items() if i not in before[KINDS[1]]} == {ctx.run_id}
    assert _records(out, KINDS[0]) == before[KINDS[0]]
    _identical(_read(out), reference)


def test_damaged_outputs_are_detected_and_recomputed(job, reference, tmp_path, caplog):
    out = tmp_path / "out"
    _run(job, out)
    kind = KINDS[0]
    path = out / "scores.zarr" / kind
    # 1. a chunk whose values changed (valid encoding, wrong numbers)
    arr = zarr.open_array(str(path), mode="r+")
    arr[3 * CHUNK: 4 * CHUNK] = arr[3 * CHUNK: 4 * CHUNK] * (1 + 1e-12)
    # 2. a partially written chunk file
    chunk_files = sorted(p for p in (path / "c").rglob("*") if p.is_file())
    assert len(chunk_files) == NCH
    victim = path / "c" / "7"
    victim.write_bytes(victim.read_bytes()[: max(1, victim.stat().st_size // 2)])
    # 3. a lost record (the run died between writing the chunk and its record)
    (path / "done" / "11.json").unlink()
    # 4. a corrupt record file
    (path / "done" / "13.json").write_text("{not json")
    with caplog.at_level(logging.WARNING, logger="nldist"):
        ctx = _run(job, out)
    st = ctx.resume_stats[kind]
    assert st["computed"] == 4 and st["reused"] == NCH - 4 and st["invalid"] == 2, st
    msgs = " ".join(r.getMessage() for r in caplog.records)
    assert "checksum mismatch" in msgs and "unreadable chunk" in msgs
    assert ctx.resume_stats[KINDS[1]]["computed"] == 0
    _identical(_read(out), reference)


def test_other_inputs_never_reuse_chunks(job, reference, tmp_path):
    out = tmp_path / "out"
    _run(job, out)
    theta2 = tmp_path / "theta2.npy"
    np.save(theta2, np.array([0.3, -0.2, 0.1, 0.4, 0.06]))
    ctx = _run({**job, "theta": str(theta2)}, out)
    assert ctx.resume_stats[KINDS[0]]["computed"] == NCH  # theta changed: all recomputed
    assert ctx.resume_stats[KINDS[0]]["reused"] == 0
    assert ctx.resume_stats[KINDS[1]]["computed"] == 0  # linear scores do not use theta
    assert not np.array_equal(_read(out)[KINDS[0]][0], reference[KINDS[0]][0])
    # and back: recomputed again, bit-identical to the clean run
    shutil.rmtree(out / "samples")
    _run(job, out)
    _identical(_read(out), reference)
