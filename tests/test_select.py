"""The practical path (issue 12): the fused pass, chunk masses, pilots that cost no pass,
the evaluation estimate, the sampling-grade adjoint, and ``nldist select`` end to end."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import dask.array as da
import numpy as np
import pytest

import nldist
from nldist import graph
from nldist.errors import NldistError
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, select, stages
from nldist.scores.kinds import get_kind
from nldist.scores.sampling import bernoulli_index
from nldist.scores.spec import make_spec
from nldist.train import estimate_losses

ROOT = Path(__file__).resolve().parents[1]
KINDS = ["nonlinear-leverage", "linear-leverage", "nonlinear-norm", "ridge-leverage",
         "uniform"]


@pytest.fixture(scope="module")
def data():
    """sklearn's diabetes table (442 x 10, real), standardized, tiled with noise to 3,000
    rows so that chunkings have many blocks."""
    from sklearn.datasets import load_diabetes

    X, y = load_diabetes(return_X_y=True)
    X = (X - X.mean(0)) / X.std(0)
    y = (y - y.mean()) / y.std()
    rng = np.random.default_rng(0)
    reps = -(-3000 // X.shape[0])
    X = np.tile(X, (reps, 1))[:3000] + 0.05 * rng.normal(size=(3000, X.shape[1]))
    y = np.tile(y, reps)[:3000]
    return X, y


def _spec(kind, m, theta, d):
    return make_spec(get_kind(kind), m, theta, d, True, False, loss="squared")


@pytest.mark.parametrize("kind", KINDS)
def test_chunk_masses_are_the_chunk_sums_of_pass_2(data, kind, sync_scheduler):
    X, y = data
    m = nldist.get_model("glm:sigmoid", n_features=X.shape[1])
    theta = np.linspace(-0.4, 0.4, m.n_params)
    Xd, yd = da.from_array(X, chunks=(450, -1)), da.from_array(y, chunks=450)
    spec = _spec(kind, m, theta, X.shape[1])
    norm = graph.passes.pass1(Xd, yd, spec, ridge=0.3 if kind == "ridge-leverage" else 0.0,
                       masses=True)
    p = graph.passes.pass2(Xd, yd, spec, norm).compute()
    sums = np.add.reduceat(p, np.r_[0, np.cumsum(Xd.chunks[0])[:-1]])
    np.testing.assert_allclose(norm.masses, sums, rtol=1e-11, atol=1e-15)
    assert norm.masses.sum() == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("alpha", [0.0, 0.2])
def test_fused_pass_is_the_two_step_sample_for_any_chunking(data, kind, alpha,
                                                            sync_scheduler):
    """Fused pass 2 + sample + gather = pass 2, then sampling the scores, then a gather:
    same indices for every chunking, weights to rounding, the rows themselves; routed by
    the same pass-1 masses, the two-step sample is the fused one bit for bit."""
    X, y = data
    m = nldist.get_model("glm:tanh", n_features=X.shape[1])
    theta = np.linspace(0.3, -0.3, m.n_params)
    ref = None
    for chunks in (3000, 1000, 377, 128):
        Xd, yd = da.from_array(X, chunks=(chunks, -1)), da.from_array(y, chunks=chunks)
        spec = _spec(kind, m, theta, X.shape[1])
        norm = graph.passes.pass1(Xd, yd, spec, ridge=0.3 if kind == "ridge-leverage" else 0.0,
                           masses=True)
        got = graph.draws.sample_pass(Xd, yd, spec, norm, [(400, 7), (50, 8)], alpha,
                                eval_rate=0.05, eval_seed=11)
        (idx, w, Xs, ys), (idx2, _, _, _) = got["draws"]
        np.testing.assert_array_equal(Xs, X[idx])
        np.testing.assert_array_equal(ys, y[idx])
        probs = graph.passes.pass2(Xd, yd, spec, norm)
        i0, w0 = graph.draws.sample_many(probs, [(400, 7)], alpha)[0]
        np.testing.assert_array_equal(idx, i0)
        np.testing.assert_allclose(w, w0, rtol=1e-12)
        i1, w1 = graph.draws.sample_many(probs, [(400, 7)], alpha, masses=norm.masses)[0]
        assert i1.tobytes() == idx.tobytes() and w1.tobytes() == w.tobytes()
        ev = got["eval"]
        np.testing.assert_array_equal(ev[1], X[ev[0]])
        if ref is None:
            ref = (idx, w, idx2, ev[0])
            assert 50 < ev[0].size < 250  # Bernoulli(0.05) of 3,000 rows
        else:
            np.testing.assert_array_equal(idx, ref[0])
            np.testing.assert_allclose(w, ref[1], rtol=1e-12)
            np.testing.assert_array_equal(idx2, ref[2])
            np.testing.assert_array_equal(ev[0], ref[3])


def test_fused_draws_follow_the_scores(data, sync_scheduler):
    X, y = data
    m = nldist.get_model("glm:sigmoid", n_features=X.shape[1])
    theta = np.full(m.n_params, 0.2)
    Xd, yd = da.from_array(X, chunks=(500, -1)), da.from_array(y, chunks=500)
    spec = _spec("nonlinear-leverage", m, theta, X.shape[1])
    norm = graph.passes.pass1(Xd, yd, spec, masses=True)
    p = graph.passes.pass2(Xd, yd, spec, norm).compute()
    idx = graph.draws.sample_pass(Xd, yd, spec, norm, [(200_000, 0)])["draws"][0][0]
    freq = np.bincount(idx, minlength=X.shape[0]) / idx.size
    top = np.argsort(p)[-20:]  # the heaviest rows: frequencies within 5 sigma
    sd = np.sqrt(p[top] * (1 - p[top]) / idx.size)
    assert np.all(np.abs(freq[top] - p[top]) < 5 * sd)


def test_fused_pass_without_masses_is_refused(data, sync_scheduler):
    X, y = data
    m = nldist.get_model("linear", n_features=X.shape[1])
    Xd, yd = da.from_array(X, chunks=(500, -1)), da.from_array(y, chunks=500)
    spec = _spec("linear-leverage", m, np.zeros(m.n_params), X.shape[1])
    norm = graph.passes.pass1(Xd, yd, spec)
    with pytest.raises(NldistError, match="masses=True"):
        graph.draws.sample_pass(Xd, yd, spec, norm, [(10, 0)])


def test_horvitz_thompson_estimate_is_unbiased(data):
    X, y = data
    m = nldist.get_model("glm:sigmoid", n_features=X.shape[1])
    th = np.vstack([np.zeros(m.n_params), np.full(m.n_params, 0.1)])
    exact = np.array([np.sum((m.predict(t, X) - y) ** 2) for t in th])
    est, se = estimate_losses(m, th, X, y, 1.0)
    np.testing.assert_allclose(est, exact, rtol=1e-12)
    assert np.all(se == 0)
    rate, vals, ses = 0.1, [], []
    for seed in range(300):
        sel = bernoulli_index(0, len(y), rate, seed)
        e, s = estimate_losses(m, th, X[sel], y[sel], rate)
        vals.append(e)
        ses.append(s)
    vals = np.array(vals)
    # the mean of 300 estimates within 4 standard errors of the mean; the reported se is
    # the spread of the estimates
    np.testing.assert_array_less(np.abs(vals.mean(0) - exact), 4 * vals.std(0) / np.sqrt(300))
    np.testing.assert_allclose(np.mean(ses, 0), vals.std(0), rtol=0.15)


def _job(src: Path, **kw):
    data = {"name": "sel", "dataset": {"source": str(src), "chunk_rows": 400},
            "model": "glm:sigmoid", "s": 300, "radius": 10.0, "pilot_s": 300,
            "pilot_factor_s": 600,
            "eval_s": 1000, "cluster": {"address": "synchronous"}, **kw}
    return validate_job(data)


@pytest.fixture()
def npz(data, tmp_path):
    X, y = data
    path = tmp_path / "diab.npz"
    np.savez(path, X=X, y=y)
    return path


def test_select_reads_x_once_and_its_interval_covers_the_exact_loss(npz, tmp_path,
                                                                    sync_scheduler):
    ctx = RunContext(_job(npz, cache_x="never"), tmp_path / "o")
    m = select(ctx, compare_full=True)
    assert m["mode"] == "select" and m["theta_source"] == "pilot"
    assert m["pilot"]["from"] == "reservoir" and m["pilot"]["fraction_read"] == 0.0
    c = m["cost"]
    assert c["by"] == {"pilot": 0.0, "one read: scores + sample + evaluation rows": 1.0}
    # counted by the store itself: every chunk of X read exactly once by the path
    counted = c["store_reads_counted"]
    assert counted["x_chunks"] == 8 and counted["chunk_reads"] == 8 and counted["passes"] == 1
    r = m["kinds"]["nonlinear-leverage"]
    lo, hi = r["loss_ci95"]
    assert lo <= r["loss_full"] <= hi
    assert r["rel_error"] >= -1e-9 and r["rel_error"] < r["rel_error_theta0"]
    assert m["full_fit"]["measured"]["passes_over_x"] >= 1
    assert m["full_fit"]["estimated"]["passes_over_x"] >= 1
    smp = m["sampling"]
    assert smp["kind"] == "nonlinear-leverage" and smp["size"] == m["s"] == 300
    assert set(smp["predicted"]) == {"uniform", "nonlinear-leverage", "influence",
                                     "influence-mix"}
    saved = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert saved["loss_estimate"] == m["loss_estimate"]
    # the same job again: the same sample bit for bit, the same trained theta
    theta = np.load(tmp_path / "o" / "theta.npy")
    s1 = np.load(tmp_path / "o" / "samples" / "nonlinear-leverage.npz")
    ctx2 = RunContext(_job(npz, cache_x="never", dataset={"source": str(npz),
                                                          "chunk_rows": 170}),
                      tmp_path / "o2")
    select(ctx2)
    s2 = np.load(tmp_path / "o2" / "samples" / "nonlinear-leverage.npz")
    # another chunking (170-row chunks): the same rows, the same weights to rounding
    assert s1["indices"].tolist() == s2["indices"].tolist()
    np.testing.assert_allclose(s1["weights"], s2["weights"], rtol=1e-9)
    np.testing.assert_allclose(np.load(tmp_path / "o2" / "theta.npy"), theta, rtol=1e-7,
                               atol=1e-9)


def test_full_fit_cost_model_against_the_measured_fit(npz, tmp_path, sync_scheduler):
    """The full-data fit's cost (issue 28 item 2): the model's passes are the pilot fit's
    iterations, within 2 of the Gauss-Newton iterations the measured fit takes; its
    seconds are passes x one timed pass; a second run reuses theta* and says so, with
    the cost of computing it, not "0.0 s (measured)"."""
    from nldist.report import full_fit_text

    m = select(RunContext(_job(npz, model="glm:swish"), tmp_path / "o"), compare_full=True)
    full = m["full_fit"]
    est, meas = full["estimated"], full["measured"]
    assert est["passes_over_x"] == m["pilot"]["iterations"] >= 1
    assert est["seconds"] == pytest.approx(est["passes_over_x"] * est["seconds_per_pass"],
                                           abs=2e-3)
    assert "pilot fit's iterations" in full["model"]["passes"]
    assert full["model"]["seconds_per_pass"] == "one Gauss-Newton pass at theta_0, timed"
    assert not meas["reused"] and full["why"] == "--compare-full"
    assert meas["iterations"] == m["theta_star"]["iterations"]
    assert meas["passes_over_x"] == meas["iterations"] and meas["seconds"] > 0
    # the model's stated accuracy (bench/RESULTS.md: within 1.5x on six real cases)
    assert abs(est["passes_over_x"] - meas["iterations"]) <= max(2, meas["iterations"] / 2)
    assert full_fit_text(full)[0] == f"{meas['seconds']:.3g} s (measured)"

    again = select(RunContext(_job(npz, model="glm:swish"), tmp_path / "o"),
                   compare_full=True)["full_fit"]
    assert again["measured"]["reused"]
    assert (again["measured"]["seconds"], again["measured"]["passes_over_x"]) == (
        meas["seconds"], meas["passes_over_x"])
    seconds, passes, note = full_fit_text(again)
    assert "reused" in seconds and f"{meas['seconds']:.3g} s" in seconds
    assert passes.startswith(f"{meas['passes_over_x']:g} ") and "reused" in note


def test_full_fit_measured_when_cheap_else_estimated(npz, tmp_path, sync_scheduler,
                                                     monkeypatch):
    """Without --compare-full: a fit estimated at most CHEAP_FRACTION of the path's time
    is run and timed (with the exact relative error); otherwise estimated and labelled so,
    where X is large and streamed from this run's read of X (no extra pass)."""
    from nldist.report import full_fit_text

    monkeypatch.setattr(stages.theta, "CHEAP_FRACTION", 1e6)
    m = select(RunContext(_job(npz, model="glm:swish"), tmp_path / "cheap"))
    assert m["full_fit"]["why"].startswith("cheap: estimated ")
    assert m["full_fit"]["measured"]["passes_over_x"] >= 1 and m["rel_error"] is not None

    monkeypatch.setattr(stages.theta, "CHEAP_FRACTION", 0.0)
    monkeypatch.setattr(stages.theta, "SMALL_X_BYTES", 0)  # as if X were large
    ctx = RunContext(_job(npz, cache_x="never"), tmp_path / "big")
    m = select(ctx)
    full = m["full_fit"]
    assert "measured" not in full and m["loss_opt"] is None and m["rel_error"] is None
    assert full["estimated"]["seconds_per_pass"] == pytest.approx(ctx.pass1_s, abs=1e-4)
    assert full["model"]["seconds_per_pass"].startswith("this run's read of X")
    assert m["cost"]["by"] == {"pilot": 0.0, "one read: scores + sample + evaluation rows": 1.0}
    seconds, passes, note = full_fit_text(full)
    assert seconds == f"≈ {full['estimated']['seconds']:.3g} s (estimated)"
    assert passes == f"≈ {m['pilot']['iterations']} (estimated)"
    assert note.startswith("Full-data fit estimated: ") and "--compare-full" in note


def test_select_exact_factor_reads_twice(npz, tmp_path, sync_scheduler):
    m = select(RunContext(_job(npz, cache_x="never", one_read=False, kind="influence"),
                          tmp_path / "o"))
    assert m["cost"]["store_reads_counted"]["passes"] == 2
    assert m["sampling"]["exact_factor"] and m["sampling"]["kind"] == "influence"


@pytest.mark.parametrize("source", ["chunks", "gather"])
def test_pilot_sources_and_their_cost(npz, tmp_path, source, sync_scheduler):
    ctx = RunContext(_job(npz, pilot_from=source, cache_x="never"), tmp_path / source)
    stages.data.ingest(ctx)
    Xs, ys, idx, prov = stages.theta.pilot_rows(ctx)
    X, y = np.load(npz)["X"], np.load(npz)["y"]
    np.testing.assert_array_equal(Xs, X[idx])
    np.testing.assert_array_equal(ys, y[idx])
    assert prov["from"] == source and len(idx) == 300
    if source == "chunks":  # 4 of 8 chunks of 400 rows (3,000 rows)
        assert len(prov["chunks"]) == 4 and prov["fraction_read"] <= 4 * 400 / 3000
        assert len(np.unique(idx)) == 300
    else:
        assert prov["fraction_read"] == 1.0


def test_a_reservoir_pilot_needs_a_reservoir(tmp_path, sync_scheduler, data):
    from nldist.store.dataset import write_dataset

    X, y = data
    store = write_dataset(tmp_path / "bare.zarr", X, y, {}, chunk_rows=500, reservoir=0)
    ctx = RunContext(_job(store, pilot_from="reservoir"), tmp_path / "o")
    stages.data.ingest(ctx)
    with pytest.raises(NldistError, match="pilot_from: chunks"):
        stages.theta.pilot(ctx)
    ctx = RunContext(_job(store), tmp_path / "o2")  # auto: whole chunks instead
    stages.data.ingest(ctx)
    stages.theta.pilot(ctx)
    assert ctx.pilot_info["from"] == "chunks"


def test_sampling_accuracy_is_chunking_free_and_close_to_exact(data, sync_scheduler):
    X, y = data[0][:600, :4], data[1][:600]
    spec = "torch:nldist.examples.nets:mlp(hidden=8,depth=2,act=tanh)"
    m = nldist.get_model(spec, n_features=4)
    theta = m.initial_theta() * 2
    exact = nldist.scores(X, y, model=m, theta=theta)
    m.configure(accuracy="sampling")
    got = [np.asarray(nldist.scores(da.from_array(X, chunks=(c, -1)),
                                    da.from_array(y, chunks=c), model=m, theta=theta))
           for c in (600, 250, 77)]
    for g in got[1:]:  # one fixed rule for every batch: the R tree's rounding only
        np.testing.assert_allclose(g, got[0], rtol=1e-10)
    ratio = got[0] / exact
    assert 0.8 < ratio.min() and ratio.max() < 1.25


def test_select_on_the_command_line(npz, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(f"name: cli\ndataset: {{source: {npz}, chunk_rows: 500}}\n"
                   "model: glm:sigmoid\ns: 200\npilot_s: 200\npilot_factor_s: 600\n"
                   "eval_s: 500\n"
                   "cluster: {address: synchronous}\n")
    r = subprocess.run([sys.executable, "-m", "nldist", "select", str(job), "--out",
                        str(tmp_path / "o")], cwd=ROOT, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "sampling path" in r.stdout and "reads of X" in r.stdout
    assert "estimated" in r.stdout
    assert (tmp_path / "o" / "report.html").read_text().rstrip().endswith("</html>")
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["mode"] == "select" and m["cost"]["passes_over_x"] == 1.0
    assert m["cost"]["store_reads_counted"]["passes"] <= 1.1  # the cache copy, if any
    log = (tmp_path / "o" / "run.log").read_text().splitlines()  # one line per stage
    assert any("cli: ingest into Zarr end" in ln for ln in log)
    assert any("one read (nonlinear-leverage) end" in ln for ln in log)
    assert any("training on the sample (nonlinear-leverage) end" in ln for ln in log)


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    assert title in text, f"README.md lost its section {title!r}"
    return text.split(title, 1)[1].split("\n## ", 1)[0]


def _fenced(section: str, lang: str) -> list[str]:
    import re

    return re.findall(rf"```{lang}\n(.*?)```", section, re.S)


def test_the_readme_first_section_runs_as_written(tmp_path, monkeypatch):
    """README 'Your own data', as written, in a fresh directory: Diamonds written as a
    directory of 8 Parquet files, the job file, `nldist select` on it (out-of-core ingest on
    the default LocalCluster, then the practical path), then the hand-off to scikit-learn and
    torch on runs/my-table."""
    section = _readme_section("### Your own data: a directory of Parquet files")
    bash, select = _fenced(section, "bash")
    (yaml_text,) = _fenced(section, "yaml")
    (code,) = _fenced(section, "python")
    assert bash.startswith(".venv/bin/python -c ")
    r = subprocess.run([sys.executable, "-c", shlex.split(bash)[2]], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "data" / "parts").glob("*.parquet"))) == 8
    (tmp_path / "my-table.yaml").write_text(yaml_text)
    argv = shlex.split(select.split("#")[0])
    assert argv[0] == ".venv/bin/nldist" and argv[1:] == ["select", "my-table.yaml"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "nldist", *argv[1:], "--quiet"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=900, env=env)
    assert r.returncode == 0, r.stderr
    out = tmp_path / "runs" / "my-table"
    m = json.loads((out / "metrics.json").read_text())
    assert m["mode"] == "select" and m["n_rows"] == 53_940
    monkeypatch.chdir(tmp_path)
    assert 'nldist.load_sample("runs/my-table")' in code
    exec(compile(code, "README.md", "exec"), {})
    S = nldist.load_sample(out)
    assert S.multiplicity.sum() == m["s"] == 2000
    assert len(S) == m["kinds"][m["kind"]]["unique_rows"]
    draws = np.load(out / "samples" / "nonlinear-leverage.npz")
    assert set(S.row) == set(draws["indices"].tolist())
    # sum of sample_weight = sum over draws of 1/(s pi): the weighted loss is the draws' loss
    assert np.isclose(S.sample_weight.sum(), draws["weights"].sum())
    # original units: the raw Diamonds rows themselves (numeric columns; text ones one-hot)
    from nldist.datasets import load

    raw, info = load("diamonds")
    numeric = [c for c in S.features if c in raw.columns]
    assert len(numeric) == 6 and len(S.features) > 6
    orig = S.original[:, [S.features.index(c) for c in numeric]]
    np.testing.assert_allclose(orig, raw[numeric].to_numpy(float)[S.row], rtol=1e-9, atol=1e-9)
    # Diamonds has a feature named y: the target's columns move aside, the feature keeps its name
    assert S.meta["columns"]["y"] == "y_target" and "y" in S.features
    np.testing.assert_allclose(S.frame["y_target__orig"], raw[info.target].to_numpy(float)[S.row],
                               rtol=1e-9)
    ds = nldist.to_torch(out)
    assert len(ds) == len(S) and len(ds[0]) == 3


def test_the_readme_python_api_snippet_runs(tmp_path):
    """README 'Python API', as written, on the OUT of `nldist select` of the default job
    (California Housing)."""
    out = tmp_path / "california"
    r = subprocess.run([sys.executable, "-m", "nldist", "select", "jobs/california.yaml",
                        "--out", str(out), "--quiet", "--cluster", "synchronous"], cwd=ROOT,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    api = _fenced(_readme_section("## Python API"), "python")[0]
    ns: dict = {}
    exec(compile(api.replace('"runs/california/', f'"{out}/'), "README.md", "exec"), ns)
    assert np.isclose(ns["lev"].sum(), 10) and np.isclose(float(ns["p"].sum().compute()), 1)
