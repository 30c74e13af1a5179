"""The command line's console (issue 28 items 5 and 6): tables wrap instead of cutting at
80 columns, commands to copy stay whole; a job is read from standard input with ``-``."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest
from rich.console import Console
from typer.testing import CliRunner

from nldist import cli, datasets
from nldist.report import experiment_table

KINDS = ["nonlinear-leverage", "nonlinear-norm", "linear-leverage", "linear-norm", "uniform"]


def _render(text: str, width: int) -> str:
    buf = io.StringIO()
    cli._print_md(text, Console(file=buf, width=width, color_system=None))
    return buf.getvalue()


def _fits(out: str, width: int) -> None:
    assert "…" not in out, out
    assert max(map(len, out.splitlines())) <= width, out


def _experiment(kinds: list[str]) -> dict:
    s = [100, 400, 1600]
    return {"s": s, "summary": {k: {str(v): {"median": 1.2345e-3 * (i + 1) / v}
                                    for v in s} for i, k in enumerate(kinds)}}


@pytest.mark.parametrize("width", [80, 70])
def test_experiment_table_wraps_headers_at_80_columns(width):
    """The five kinds of the shipped jobs do not fit in 80 columns on one header line: each
    name is broken after a hyphen (``nonlinear-`` / ``leverage``), never cut to
    ``nonlinear-leve…``, and every median is shown whole."""
    res = _experiment(KINDS)
    out = _render(experiment_table(res), width)
    _fits(out, width)
    lines = out.splitlines()
    head = lines[:next(i for i, line in enumerate(lines) if set(line.strip()) == {"─"})]
    words = " ".join(head).split()
    for kind in KINDS:
        parts = [p + "-" for p in kind.split("-")[:-1]] + [kind.split("-")[-1]]
        assert all(p in words for p in parts), (kind, head)
    for k in KINDS:
        for v in res["s"]:
            assert f"{res['summary'][k][str(v)]['median']:.3e}" in out


def test_wide_terminal_keeps_one_header_line():
    out = _render(experiment_table(_experiment(KINDS)), 200)
    assert all(k in out.splitlines()[0] for k in KINDS)


def test_diagnose_table_wraps_at_80_columns():
    names = ["nonlinear-leverage", "linear-leverage", "linear-leverage+y", "loss"]
    md = "\n".join(["| k | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
                   + [f"| {k} | " + " | ".join(f"{0.1234 * i:.3f}" for i in range(4)) + " |"
                      for k in (10, 100, 2500)])
    out = _render(md, 40)
    _fits(out, 40)
    assert "2500" in out and "0.370" in out


def _fetch_commands() -> list[str]:
    return re.findall(r"\| `([^`]+)` \|$", datasets.listing(), re.M)


@pytest.mark.parametrize("columns", ["80", "120"])
def test_fetch_list_keeps_every_command_whole(columns):
    """``nldist fetch --list`` at 80 (and 120) columns: no cell is cut, and each dataset's
    fetch command is on one line, as a user would copy it."""
    r = CliRunner().invoke(cli.app, ["fetch", "--list"], env={"COLUMNS": columns})
    assert r.exit_code == 0, r.output
    _fits(r.output, int(columns))
    commands = _fetch_commands()
    assert len(commands) == len(datasets.DATASETS)
    lines = r.output.splitlines()
    for command in commands:
        assert any(command in line for line in lines), command
    for name in datasets.DATASETS:
        assert any(line.split()[:1] == [name] for line in lines), name


def test_fetch_list_is_a_table_where_it_fits():
    r = CliRunner().invoke(cli.app, ["fetch", "--list"], env={"COLUMNS": "250"})
    assert r.exit_code == 0
    assert r.output.split()[:6] == ["name", "task", "rows", "x", "cols", "source"]


NLDIST = [sys.executable, "-m", "nldist"]


def test_example_pipes_into_validate():
    """``nldist example california | nldist validate -`` through a real OS pipe."""
    ex = subprocess.Popen([*NLDIST, "example", "california"], stdout=subprocess.PIPE)
    r = subprocess.run([*NLDIST, "validate", "-"], stdin=ex.stdout, capture_output=True,
                       text=True, timeout=120)
    ex.stdout.close()
    assert ex.wait(timeout=60) == 0
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("-: ok (california: glm:swish"), r.stdout


def test_a_reader_that_goes_away_is_not_an_error():
    """``nldist example --list | head -1``: the pipe closes before nldist writes; it stops
    quietly with status 141 (as a process killed by SIGPIPE), no error line, no traceback."""
    ex = subprocess.Popen([*NLDIST, "example", "--list"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE)
    ex.stdout.close()  # before the interpreter has started: the first write fails
    err = ex.stderr.read().decode()
    assert ex.wait(timeout=120) == 141
    assert err == "", err


def test_select_reads_the_job_from_stdin(tmp_path):
    """``nldist example california | nldist select -`` (on the small diabetes table, one
    process): the piped job runs, with overrides applied on top of it."""
    from nldist.example_jobs import example_text

    out = tmp_path / "run"
    r = CliRunner().invoke(cli.app, [
        "select", "-", "--set", "dataset.source=diabetes", "--set", "s=100",
        "--set", "name=piped", "--cluster", "synchronous", "--out", str(out), "-q"],
        input=example_text("california"))
    assert r.exit_code == 0, r.output
    m = json.loads((out / "metrics.json").read_text())
    assert (m["name"], m["n_rows"], m["s"]) == ("piped", 442, 100)


@pytest.mark.parametrize("text, match", [
    ("", "none was piped in"),
    ("   \n", "none was piped in"),
    ("name: [\n", "<stdin>: bad YAML at line 2"),
    ("- a\n- b\n", "<stdin>: a job file must be a YAML mapping"),
    ("name: x\n", "<stdin>: "),
])
def test_bad_job_on_stdin_is_one_line(text, match):
    r = CliRunner().invoke(cli.app, ["validate", "-"], input=text)
    assert r.exit_code == 2
    assert r.output.startswith("error: ") and match in r.output
    assert len(r.output.strip().splitlines()) == 1
