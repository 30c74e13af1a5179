"""Packaging (issue 28, item 6): the example job files ship with the package, ``nldist
example`` writes them, and the wheel works outside the repository.

The wheel test builds the wheel from a copy of the sources (nothing is written into the
checkout), creates a fresh virtual environment and installs the wheel into it with
``pip install --no-index``: pip resolves the wheel's *base* dependencies (not the test or
dataset extras) offline. They are found through one ``.pth`` line that appends this
project's ``.venv`` site-packages to the fresh environment's path; a ``.pth`` line is a
plain path entry, so the project's editable-install hook there is not run and ``nldist``
is imported from the installed wheel (checked). Then, in an empty directory outside the
repository: ``nldist --version``, ``nldist example --list``, ``nldist example california
job.yaml``, ``nldist validate job.yaml`` and ``nldist example california | nldist select -``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from nldist.example_jobs import example_names, example_summary, example_text

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "nldist" / "examples" / "jobs"


def test_example_jobs_are_the_repository_jobs():
    """nldist/examples/jobs/ holds the same files as jobs/ (copy one to the other when a job
    changes: the wheel ships the first, the README and docs cite the second)."""
    repo = {p.name: p.read_bytes() for p in (ROOT / "jobs").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in EXAMPLES.glob("*.yaml")}
    assert sorted(shipped) == sorted(repo), "copy jobs/*.yaml to nldist/examples/jobs/"
    differ = [n for n in repo if repo[n] != shipped[n]]
    assert not differ, f"nldist/examples/jobs/ differs from jobs/ in {differ}: copy them over"


def test_example_names_text_and_summary():
    assert "california" in example_names()
    assert example_text("california") == (ROOT / "jobs" / "california.yaml").read_text()
    assert example_text("california.yaml") == example_text("california")
    assert example_summary("california") == "california: glm:swish, s=500"
    from nldist.errors import NldistError

    with pytest.raises(NldistError, match="no example job 'nope'; choose one of .*california"):
        example_text("nope")


def _run(args, cwd, env=None, timeout=300):
    r = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{args}: rc {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def test_example_command_writes_the_job(tmp_path):
    nldist = [sys.executable, "-m", "nldist"]
    listed = _run([*nldist, "example", "--list"], tmp_path).stdout
    assert "california " in listed and "glm:swish" in listed
    out = _run([*nldist, "example", "california"], tmp_path).stdout
    assert out == example_text("california")
    _run([*nldist, "example", "california", "job.yaml"], tmp_path)
    assert (tmp_path / "job.yaml").read_text() == example_text("california")
    r = subprocess.run([*nldist, "example", "california", "job.yaml"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "job.yaml exists" in r.stderr and "Traceback" not in r.stderr
    _run([*nldist, "example", "california", "job.yaml", "--force"], tmp_path)


@pytest.mark.slow
def test_wheel_installs_and_runs_outside_the_repository(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "nldist", src / "nldist",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
          "-w", str(tmp_path / "dist"), str(src)], tmp_path)
    wheel, = (tmp_path / "dist").glob("nldist-*.whl")

    venv = tmp_path / "venv"
    base = getattr(sys, "_base_executable", sys.executable)
    _run([base, "-m", "venv", "--without-pip", str(venv)], tmp_path)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([py, "-c", "import sysconfig; print(sysconfig.get_paths()"
                                "['purelib'])"], capture_output=True, text=True,
                               check=True).stdout.strip())
    (site / "project-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # pip of the project venv, run by the fresh venv's python: installs into the fresh venv
    _run([py, "-m", "pip", "install", "-q", "--no-index", "--no-warn-script-location",
          str(wheel)], tmp_path, env)

    work = tmp_path / "elsewhere"
    work.mkdir()
    where = _run([py, "-c", "import nldist, sys; print(nldist.__file__)"], work, env)
    assert where.stdout.strip().startswith(str(site)), where.stdout  # the wheel, not the repo
    script = str(venv / "bin" / "nldist")
    assert _run([script, "--version"], work, env).stdout.startswith("nldist ")
    assert "california" in _run([script, "example", "--list"], work, env).stdout
    _run([script, "example", "california", "job.yaml"], work, env)
    done = _run([script, "validate", "job.yaml"], work, env)
    assert "job.yaml: ok (california: glm:swish" in done.stdout
    assert "packaged dataset 'california'" in done.stdout
    meta = _run([py, "-c", "from importlib.metadata import metadata; m = metadata('nldist'); "
                 "print(*m.get_all('Classifier'), *m.get_all('Project-URL'), sep='\\n')"],
                work, env).stdout.splitlines()
    assert "Paper, https://arxiv.org/abs/2505.12353" in meta
    assert "Programming Language :: Python :: 3 :: Only" in meta
    # and the job runs as is, piped in: `nldist example california | nldist select -` (the
    # practical path; California is in the cache: .ci/setup)
    example = subprocess.Popen([script, "example", "california"], stdout=subprocess.PIPE,
                               cwd=work, env=env)
    r = subprocess.run([script, "select", "-", "--out", "out", "--quiet"], stdin=example.stdout,
                       cwd=work, env=env, capture_output=True, text=True, timeout=600)
    example.stdout.close()
    assert example.wait(timeout=60) == 0 and r.returncode == 0, r.stdout + r.stderr
    assert (work / "out" / "metrics.json").exists() and (work / "out" / "sample.parquet").exists()


def test_project_metadata_has_classifiers_and_urls():
    """pyproject's classifiers agree with requires-python and the license, and its project
    URLs are https (the wheel test reads the same fields back from the installed wheel)."""
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    classifiers = project["classifiers"]
    assert len(set(classifiers)) == len(classifiers)
    low = tuple(map(int, re.fullmatch(r">=(\d+)\.(\d+)", project["requires-python"]).groups()))
    versions = [tuple(map(int, c.rsplit(" ", 1)[1].split(".")))
                for c in classifiers if re.fullmatch(r"Programming Language :: Python :: 3\.\d+",
                                                     c)]
    assert versions and min(versions) == low, (versions, low)
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    # PEP 639: the license is the SPDX expression; a License :: classifier beside it is an
    # error for setuptools >= 77
    assert project["license"] == "BSD-3-Clause"
    assert not [c for c in classifiers if c.startswith("License ::")]
    assert project["urls"] and all(u.startswith("https://") for u in project["urls"].values())
