"""The fault table (issue 14): every bad input a user hits in the first week, through the
command line, ends in exactly one line ``error: ...`` that names the fix, exit status 2, no
traceback, and nothing half-written (no metrics.json, no dataset left in --out)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from nldist.cli import app


def _csv(path: Path, **cols) -> Path:
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(size=60), "b": rng.normal(size=60), "y": rng.normal(size=60)}
    pd.DataFrame({**base, **cols}).to_csv(path, index=False)
    return path


def _job(tmp: Path, source: str, extra: str = "") -> Path:
    job = tmp / "job.yaml"
    job.write_text(f"name: fault\ndataset: {{source: {source}, target: y}}\nmodel: glm:sigmoid\n"
                   f"s: 20\ncluster: {{address: synchronous}}\n{extra}")
    return job


def _nan(t):
    a = np.random.default_rng(1).normal(size=60)
    a[[3, 9]] = np.nan
    return ["run", _job(t, _csv(t / "d.csv", a=a))]


def _inf(t):
    a = np.ones(60)
    a[5] = np.inf
    return ["run", _job(t, _csv(t / "d.csv", a=a))]


def _empty(t):
    (t / "d.csv").write_text("a,b,y\n")
    return ["run", _job(t, t / "d.csv")]


def _theta_len(t):
    np.save(t / "theta.npy", np.zeros(7))
    return ["run", _job(t, _csv(t / "d.csv"), f"theta: {t / 'theta.npy'}\n")]


def _out_is_file(t):
    (t / "o").write_text("x")
    return ["run", _job(t, _csv(t / "d.csv")), "--out", t / "o"]


def _ingest_exists(t):
    (t / "x.zarr").mkdir()
    return ["ingest", _csv(t / "d.csv"), t / "x.zarr", "--target", "y"]


CASES = {
    "job file missing": (lambda t: ["run", t / "nope.yaml"], r"job file .* not found"),
    "job file is a directory": (lambda t: ["run", t], r"is a directory; give a job YAML"),
    "bad YAML": (lambda t: ["run", _write(t / "j.yaml", "name: [x\n")], r"bad YAML at line"),
    "unknown model spec": (lambda t: ["run", _write(
        t / "j.yaml", "dataset: {source: california}\nmodel: glm:nosuch\n")], r"model"),
    "source missing": (lambda t: ["run", _job(t, t / "missing.csv")], r"not found"),
    "NaN in a column": (_nan, r"2 missing value\(s\).*--dropna"),
    "inf in a column": (_inf, r"inf values"),
    "empty table": (_empty, r"no rows"),
    "text target with 3 values": (lambda t: ["run", _job(t, _csv(
        t / "d.csv", y=["u", "v", "w"] * 20))], r"not numeric and has 3 values.*--classes"),
    "numbers written as text": (lambda t: ["run", _job(t, _csv(
        t / "d.csv", c=[f"{1000 + i:,}" for i in range(60)]))], r"numbers written as text"),
    "theta of the wrong length": (_theta_len, r"theta"),
    "memory_limit: lots": (lambda t: ["run", _job(t, _csv(t / "d.csv"),
                                                  "cluster: {memory_limit: lots}\n")],
                           r"memory size such as 1GiB"),
    "--out is a file": (_out_is_file, r"is a file; choose a directory"),
    "ingest onto an existing path": (_ingest_exists, r"already exists; pass --overwrite"),
    "ingest glob matching nothing": (lambda t: ["ingest", str(t / "none-*.parquet"),
                                                t / "o.zarr", "--target", "y",
                                                "--cluster", "synchronous"],
                                     r"matches no files"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_fault_table(case, tmp_path):
    make, message = CASES[case]
    args = [str(a) for a in make(tmp_path)]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(tmp_path / "out")]
    done = CliRunner().invoke(app, args)
    err = done.stderr.strip().splitlines()
    assert done.exit_code == 2, (case, done.output)
    assert len(err) == 1 and err[0].startswith("error: "), (case, done.stderr)
    assert re.search(message, err[0]), (case, err[0])
    assert "Traceback" not in done.output
    assert not (tmp_path / "out" / "metrics.json").exists()
    assert not list(tmp_path.glob("**/*.partial"))
