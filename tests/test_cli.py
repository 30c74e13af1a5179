"""End to end: the CLI on real LocalClusters (worker processes) over real Zarr stores."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

import nldist

NLDIST = [sys.executable, "-m", "nldist.cli"]


def cli(*args, cwd=None):
    return subprocess.run([*NLDIST, *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          timeout=300)


JOB = """
name: diab
dataset: {source: diabetes, standardize: true, standardize_target: true, chunk_rows: 40}
model: glm:swish
theta: optimum
kind: nonlinear-leverage
baselines: [linear-leverage, uniform]
s: 120
radius: 5
seed: 11
cluster: {address: local, n_workers: 2, memory_limit: 1GiB}
experiment: {s: [40, 160], repeats: 4, kinds: [nonlinear-leverage, uniform]}
"""


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("run")
    (d / "job.yaml").write_text(JOB)
    done = cli("run", d / "job.yaml", "--out", d / "out", "--experiment")
    assert done.returncode == 0, done.stderr
    return d, done


def test_run_writes_every_output(finished_run):
    d, done = finished_run
    out = d / "out"
    m = json.loads((out / "metrics.json").read_text())
    for key in ("n_rows", "n_params", "kind", "rank", "s", "seed", "loss_full", "loss_opt",
                "rel_error", "timings"):
        assert key in m
    assert m["n_rows"] == 442 and m["n_params"] == 11 and m["rank"] == 12 and m["s"] == 120
    assert set(m["kinds"]) == {"nonlinear-leverage", "linear-leverage", "uniform"}
    assert all(r["rel_error"] >= -1e-9 for r in m["kinds"].values())
    assert m["theta_star"]["converged"]
    for stage in ("ingest", "optimum", "score:nonlinear-leverage", "train", "evaluate",
                  "total"):
        assert stage in m["timings"]
    assert "nonlinear-leverage" in done.stdout and "rel. error" in done.stdout
    g = zarr.open_group(str(out / "scores.zarr"), mode="r")
    attrs = dict(g["nonlinear-leverage"].attrs)
    assert attrs["complete"] and attrs["rank"] == 12 and attrs["model"] == "glm:swish"
    assert attrs["theta_sha"] and attrs["nldist_version"] == nldist.__version__
    assert (out / "samples" / "uniform.npz").exists() and (out / "theta.npy").exists()
    assert (out / "report.md").exists() and (out / "experiment.png").exists()
    e = json.loads((out / "experiment.json").read_text())
    assert set(e["summary"]) == {"nonlinear-leverage", "uniform"}
    assert np.array(e["rel_error"]["uniform"]).shape == (2, 4)


def test_run_matches_the_in_memory_api(finished_run):
    """Scores from the cluster run equal the dense reference; the sample equals nldist.sample."""
    d, _ = finished_run
    out = d / "out"
    g = zarr.open_group(str(out / "dataset.zarr"), mode="r")
    X, y = g["X"][:], g["y"][:]
    theta = np.load(out / "theta_star.npz")["theta"]
    m = nldist.get_model("glm:swish", X.shape[1])
    ref = nldist.scores(X, y, model=m, theta=theta)
    got = zarr.open_group(str(out / "scores.zarr"), mode="r")["nonlinear-leverage"][:]
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-15)
    smp = np.load(out / "samples" / "nonlinear-leverage.npz")
    idx, w = nldist.sample(ref, 120, random_state=11)
    np.testing.assert_array_equal(smp["indices"], idx)
    np.testing.assert_allclose(smp["weights"], w, rtol=1e-9)


def test_rerun_reuses_finished_outputs(finished_run):
    d, _ = finished_run
    done = cli("run", d / "job.yaml", "--out", d / "out", "-q")
    assert done.returncode == 0, done.stderr
    m = json.loads((d / "out" / "metrics.json").read_text())
    assert not any(k.startswith(("score:", "ingest", "optimum")) for k in m["timings"])


def test_stage_verbs_validate_and_dry_run(finished_run, tmp_path):
    d, _ = finished_run
    done = cli("validate", d / "job.yaml")
    assert done.returncode == 0 and "ok" in done.stdout
    done = cli("run", d / "job.yaml", "--out", tmp_path / "dry", "--dry-run")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["n_rows"] == 442 and plan["chunks"] == 12 and plan["memory_per_worker_bytes"] > 0
    assert plan["cache_x"].startswith("auto") and "read once" in plan["cache_x"]
    assert "cache_x auto" in done.stderr
    assert not (tmp_path / "dry").exists()  # a dry run writes nothing, not even dataset.zarr
    done = cli("select", d / "job.yaml", "--out", tmp_path / "dry", "--dry-run")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["passes_over_X"].startswith("2 (+ the pilot")
    assert not (tmp_path / "dry").exists()
    done = cli("run", d / "job.yaml", "--out", tmp_path / "dry", "--dry-run",
               "--set", "cache_x=never")
    assert json.loads(done.stdout)["cache_x"].startswith("never")
    done = cli("run", d / "job.yaml", "--out", tmp_path / "dry", "--dry-run",
               "--set", "cluster.memory_limit=auto")  # dask's own limit: known at run time
    assert done.returncode == 0 and "at run time" in json.loads(done.stdout)["cache_x"]
    done = cli("score", d / "job.yaml", "--out", tmp_path / "sc", "--cluster", "synchronous")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "sc" / "scores.zarr").exists()
    assert not (tmp_path / "sc" / "samples").exists()


def test_ingest_and_report_commands(tmp_path, finished_run):
    done = cli("ingest", "diabetes", tmp_path / "d.zarr", "--chunk-rows", "100")
    assert done.returncode == 0, done.stderr and "442 rows" in done.stdout
    done = cli("report", finished_run[0] / "out")
    assert done.returncode == 0 and "report.md" in done.stdout


@pytest.mark.parametrize(
    "args, match",
    [
        (["run", "missing.yaml"], "job file 'missing.yaml' not found"),
        (["ingest", "nope.csv", "o.zarr"], "source 'nope.csv' not found"),
        (["report", "empty"], "no metrics.json"),
        (["run", "job.yaml", "--set", "model=glm:relu6"], "unknown activation"),
        (["run", "job.yaml", "--set", "theta=th.npy"], "theta file 'th.npy' not found"),
        (["run", "job.yaml", "--set", "dataset.source=nan.npz"], "1 missing value.*--dropna"),
        (["run", "job.yaml", "--set", "dataset.source=nan.zarr"], "NaN or inf in 1 row.*row 4"),
        (["run", "job.yaml", "--cluster", "tcp://127.0.0.1:9",
          "--set", "cluster.connect_timeout=2"], "cannot reach the Dask scheduler"),
    ],
)
def test_bad_input_exits_nonzero_with_one_line(tmp_path, args, match):
    (tmp_path / "empty").mkdir()
    (tmp_path / "job.yaml").write_text(JOB.replace("local", "synchronous"))
    X = np.ones((10, 2))
    X[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.ones(10))
    from nldist.store.dataset import write_dataset

    write_dataset(tmp_path / "nan.zarr", X, np.ones(10), {}, chunk_rows=3)
    extra = ["--out", "o"] if args[0] == "run" else []
    done = cli(*args, *extra, cwd=tmp_path)
    assert done.returncode == 2, (done.stdout, done.stderr)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert re.search(match, lines[0]), lines[0]
    assert not (Path(tmp_path) / "o" / "metrics.json").exists()


def test_api_on_a_real_local_cluster(local_client, tmp_path, diabetes):
    """Public API with Dask input on worker processes: same scores and sample as in memory."""
    from nldist.store.dataset import write_dataset

    X, y = diabetes
    path = write_dataset(tmp_path / "d.zarr", X, y, {}, chunk_rows=37)
    theta = np.linspace(-0.4, 0.4, 11)
    got = nldist.scores(str(path), model="glm:sigmoid", theta=theta)
    ref = nldist.scores(X, y, model="glm:sigmoid", theta=theta)
    np.testing.assert_allclose(got.compute(), ref, rtol=1e-10)
    np.testing.assert_array_equal(nldist.sample(got, 64, 5)[0], nldist.sample(ref, 64, 5)[0])


def test_the_printed_dashboard_link_serves_the_dashboard(local_client):
    """bokeh is a base dependency: the link the CLI prints is a working dashboard."""
    import urllib.request

    with urllib.request.urlopen(local_client.dashboard_link, timeout=20) as r:
        assert r.status == 200 and b"bokeh" in r.read().lower()
