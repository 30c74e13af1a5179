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
    drop = {"timings", "dataset", "resume", "reuse"}

    def clean(m: dict) -> dict:
        m = {k: v for k, v in m.items() if k not in drop}
        m["kinds"] = {k: {f: v for f, v in r.items() if f != "persist"}
                      for k, r in m["kinds"].items()}
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
