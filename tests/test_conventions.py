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
