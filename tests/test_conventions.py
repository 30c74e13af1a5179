"""Small API conventions (issue 28, item 7): ``nldist validate`` checks the dataset source,
models and samples have readable reprs, ``get_model`` takes a live torch module like the
rest of the API."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from nldist.errors import NldistError
from nldist.jobs import check_source

ROOT = Path(__file__).resolve().parents[1]
JOB = ROOT / "jobs" / "california.yaml"


def validate(*args, cwd):
    return subprocess.run([sys.executable, "-m", "nldist", "validate", str(JOB), *args],
                          capture_output=True, text=True, cwd=cwd, timeout=300)


def test_check_source(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert check_source("california") == "packaged dataset 'california'"
    (tmp_path / "parts").mkdir()
    (tmp_path / "parts" / "a.parquet").write_bytes(b"")
    assert check_source("parts/") == "local directory parts/"
    assert check_source("parts/a.parquet") == "local file parts/a.parquet"
    assert check_source(f"file://{tmp_path}/parts") == f"local directory {tmp_path}/parts"
    assert check_source("parts/*.parquet") == "1 file(s) matching parts/*.parquet"
    assert check_source("s3://bucket/table/") == "URL s3://bucket/table/ (not contacted)"
    for bad, match in [("nope", "'nope' does not exist .*a packaged dataset"),
                       ("data/x.parquet", "'data/x.parquet' does not exist"),
                       ("parts/*.csv", "no file matches the glob"),
                       ("s3:///table", "not a valid URL"),
                       ("https://exa mple/t.csv", "not a valid URL"),  # no space in a host
                       ("file:///no/such/dir", "does not exist")]:
        with pytest.raises(NldistError, match=match):
            check_source(bad)


def test_validate_checks_the_source(tmp_path):
    ok = validate(cwd=tmp_path)
    assert ok.returncode == 0 and "source: packaged dataset 'california'" in ok.stdout
    bad = validate("--set", "dataset.source=nope", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.startswith("error: dataset.source 'nope' does not exist")
    url = validate("--set", "dataset.source=s3://bucket/t/", cwd=tmp_path)
    assert url.returncode == 0 and "(not contacted)" in url.stdout


@pytest.mark.parametrize("spec", ["glm:swish", "linear", "glm:sigmoid:nobias", "relu2:4",
                                  "relu2:4:sigmoid", "softmax:3", "mlp:8:3"])
def test_model_reprs_are_readable(spec):
    import nldist

    text = repr(nldist.get_model(spec, 8))
    assert "<function" not in text and "lambda" not in text and " at 0x" not in text, text
    assert f"spec={spec!r}" in text and "n_features=8" in text and "n_params=" in text
    if spec == "glm:swish":
        assert text == ("GLM(spec='glm:swish', n_features=8, n_params=9, "
                        "activation=Activation('swish(c1=1,c2=2,zeta=1)'), bias=True)")


def test_sample_repr(tmp_path):
    import numpy as np

    import nldist
    from nldist.store.sample_table import write_sample_table

    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(10, 3)), rng.normal(size=10)
    idx = np.array([0, 2, 2, 5])
    write_sample_table(tmp_path / "sample.parquet", idx, np.full(4, 2.5), X[idx], y[idx],
                       {"features": ["a", "b", "c"]},
                       {"kind": "nonlinear-leverage", "s": 4, "n": 10, "model": "glm:swish",
                        "seed": 3})
    S = nldist.load_sample(tmp_path)
    assert repr(S) == ("<nldist.Sample: 3 distinct rows of 10 (s=4 draws, nonlinear-leverage), "
                       "3 features, model glm:swish, seed 3; sample_weight sums to 10>")


def test_get_model_takes_a_torch_module_like_the_api():
    import numpy as np
    import torch

    import nldist

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1))
    model = nldist.get_model(net, 3)
    theta = model.initial_theta()
    assert theta.shape == (model.n_params,) == (21,)
    X = np.random.default_rng(1).normal(size=(5, 3))
    with torch.no_grad():
        want = net(torch.tensor(X, dtype=torch.float64).float()).double().numpy().ravel()
    np.testing.assert_allclose(model.predict(theta, X), want, rtol=1e-5, atol=1e-6)
    assert "torch.nn.modules.container:Sequential" in repr(model)
    # the rest of the API takes the same module: the same adjoint from either door
    np.testing.assert_allclose(nldist.adjoint(net, theta, X), nldist.adjoint(model, theta, X))
    with pytest.raises(NldistError, match="a string like 'glm:sigmoid' or a torch.nn.Module"):
        nldist.get_model(42, 3)
    with pytest.raises(NldistError, match="n_features must be a positive integer"):
        nldist.get_model(net, "3")


def test_help_uses_clean_metavars_and_starts_with_select():
    """--help of every command: no typer-style <bool>, <list[str]>, {job_file}; arguments in
    capitals; the top level starts the user with `nldist select`, as the README does."""
    from typer.testing import CliRunner

    from nldist.cli import app

    runner = CliRunner()
    top = runner.invoke(app, ["--help"], env={"COLUMNS": "100"})
    assert top.exit_code == 0
    text = " ".join(top.output.split())
    assert "Start with `nldist select jobs/california.yaml`" in text
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "nldist select jobs/california.yaml" in readme.split("```")[1]  # the first command
    commands = [line.split()[1] for line in top.output.splitlines()
                if line.startswith("│ ") and len(line.split()) > 2 and line.split()[1].isalpha()
                and line.split()[1].islower() and not line.split()[1].startswith("-")]
    assert {"select", "run", "validate", "example", "fetch", "ingest"} <= set(commands)
    for cmd in commands:
        out = runner.invoke(app, [cmd, "--help"], env={"COLUMNS": "100"}).output
        for bad in ("<bool>", "<str>", "<int>", "<list[", "<path>", "{"):
            assert bad not in out, f"nldist {cmd} --help shows {bad}:\n{out}"
    usage = runner.invoke(app, ["select", "--help"], env={"COLUMNS": "100"}).output
    assert "select [OPTIONS] JOB_FILE" in " ".join(usage.split())


def test_dashboard_tracebacks_go_to_run_log_not_the_console(tmp_path):
    """What tornado and bokeh log while a local cluster runs (a browser tab closed during a
    dashboard update: an AssertionError traceback, a closed websocket) lands in run.log as a
    DEBUG line, not on the console; anything else still reaches the console."""
    import io
    import logging

    from tornado.websocket import WebSocketClosedError

    from nldist.cluster import dashboard_to_log

    console = io.StringIO()
    handler = logging.StreamHandler(console)
    root = logging.getLogger()
    root.addHandler(handler)
    log = tmp_path / "run.log"
    # distributed's logging config (once imported by any earlier test) sets bokeh to ERROR;
    # the warning must be emitted for the test to see where it goes
    ws = logging.getLogger("bokeh.server.views.ws")
    ws_level = ws.level
    ws.setLevel(logging.DEBUG)
    try:
        with dashboard_to_log(str(log)):
            try:
                raise AssertionError("session already closed")  # bokeh's, for a closed tab
            except AssertionError:
                logging.getLogger("tornado.application").error("Uncaught exception GET "
                                                               "/status/ws", exc_info=True)
            logging.getLogger("bokeh.server.views.ws").warning(
                "Failed sending message as connection was closed")
            try:
                raise WebSocketClosedError()
            except WebSocketClosedError:
                logging.getLogger("asyncio").error("Task exception was never retrieved",
                                                   exc_info=True)
            logging.getLogger("asyncio").error("an unrelated asyncio error")
        logging.getLogger("tornado.application").error("after the cluster closed")
    finally:
        root.removeHandler(handler)
        ws.setLevel(ws_level)
    out = console.getvalue()
    for moved in ("session already closed", "Failed sending", "never retrieved", "Traceback"):
        assert moved not in out, out
    assert "an unrelated asyncio error" in out
    text = log.read_text()
    # after the block tornado logs where it did before (the console, or distributed's own
    # handler once distributed configured logging): never into run.log
    assert "after the cluster closed" not in text
    assert "DEBUG dashboard tornado.application (ERROR): Uncaught exception GET" in text
    assert "AssertionError: session already closed" in text and "Traceback" in text
    assert "DEBUG dashboard bokeh.server.views.ws (WARNING): Failed sending" in text
    assert "WebSocketClosedError" in text


def test_every_cited_math_section_exists_in_the_repository():
    """Every "MATH.md §N" cited by the package (docstrings, example jobs), README and docs/
    resolves to a section of docs/MATH.md (the shipped example jobs cited §8, which was
    missing)."""
    import re

    root = Path(__file__).resolve().parents[1]
    math = (root / "docs" / "MATH.md").read_text()
    have = set(re.findall(r"^## (\d+)\. ", math, re.M))
    files = [*root.joinpath("nldist").rglob("*.py"), *root.joinpath("nldist").rglob("*.yaml"),
             root / "README.md", *root.joinpath("docs").glob("*.md")]
    cited = {}
    for f in files:
        for m in re.finditer(r"MATH\.md[^\n§]{0,12}((?:§\s*\d+(?:\s*(?:,|and|or)\s*)?)+)",
                             f.read_text()):
            for num in re.findall(r"§\s*(\d+)", m.group(1)):
                cited.setdefault(num, str(f.relative_to(root)))
    assert cited, "no MATH.md section cited anywhere"
    missing = {n: f for n, f in cited.items() if n not in have}
    assert not missing, f"docs/MATH.md lacks the cited sections {missing}"


def test_command_summaries_are_one_line_each():
    """`nldist --help` lists each verb by its docstring's first paragraph joined into one
    line (its hard line breaks made ragged lines at 80 columns), rich wrapping it."""
    import typer

    from nldist.cli import app

    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():
        assert cmd.short_help and "\n" not in cmd.short_help, name
        assert "  " not in cmd.short_help, name
    out = subprocess.run([sys.executable, "-m", "nldist", "--help"], capture_output=True,
                         text=True, env={"COLUMNS": "80", "PATH": "/usr/bin:/bin"}).stdout
    assert "exists (a local path; a URL's syntax only)" in out
