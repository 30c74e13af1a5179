"""Job files: every jobs/*.yaml validates; errors name the field path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from nldist import NldistError
from nldist.jobs import load_job, set_path, validate_job

JOBS = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_file_validates(path):
    job = load_job(path)
    assert job.name and job.model and job.s > 0


def write(tmp_path, text):
    p = tmp_path / "job.yaml"
    p.write_text(text)
    return p


BASE = "dataset: {source: diabetes}\nmodel: glm:sigmoid\n"


@pytest.mark.parametrize(
    "text, match",
    [
        (BASE + "s: -5\n", r"job.yaml: s: Input should be greater than 0 \(got -5\)"),
        (BASE + "kind: leverage\n", r"kind: unknown score kind 'leverage'; use one of "),
        ("dataset: {source: diabetes}\nmodel: glm:relu6\n", "model: .*unknown activation"),
        (BASE + "dataset: {source: x, chunk_rows: 0}\n", r"dataset.chunk_rows: .*greater than 0"),
        (BASE + "sampel: 3\n", "sampel: unknown field; allowed here: name, dataset, model"),
        (BASE + "cluster: {adress: x}\n", "cluster.adress: unknown field; allowed here: address"),
        ("model: linear\n", "dataset: Field required"),
        (BASE + "s: [1, 2\n", "bad YAML at line 4, column 1: expected .,. or .]."),
        ("- a\n- b\n", "must be a YAML mapping"),
        (BASE + "experiment: {s: [0, 10]}\n", "experiment.s: .*positive integers"),
        (BASE + "device: gpu\n",
         r"job.yaml: device: .*unknown device 'gpu'; use one of numpy, cpu, cuda, cuda:N, auto"),
    ],
)
def test_job_errors_are_one_line_with_field_path(tmp_path, text, match):
    with pytest.raises(NldistError, match=match) as err:
        load_job(write(tmp_path, text))
    assert "\n" not in str(err.value)


def test_overrides(tmp_path):
    job = load_job(write(tmp_path, BASE), ["s=77", "cluster.n_workers=3", "baselines=[uniform]"])
    assert job.s == 77 and job.cluster.n_workers == 3 and job.kinds() == [
        "nonlinear-leverage", "uniform"]
    with pytest.raises(NldistError, match="field.path=value"):
        load_job(write(tmp_path, BASE), ["s"])


def test_missing_job_file(tmp_path):
    with pytest.raises(NldistError, match="not found"):
        load_job(tmp_path / "nope.yaml")


def test_yaml_is_loaded_safely(tmp_path):
    with pytest.raises(NldistError, match="bad YAML"):
        load_job(write(tmp_path, BASE + "name: !!python/object/apply:os.system ['true']\n"))


@pytest.mark.parametrize("field", ["cluster.memory_limit", "cluster.slurm.memory"])
def test_memory_sizes_are_checked_when_the_job_is_validated(field):
    """`memory_limit: lots` is refused by validate, not by a traceback at run time."""
    data = {"dataset": {"source": "california"}, "model": "linear"}
    set_path(data, field, "lots")
    with pytest.raises(NldistError, match=rf"{field}: .*memory size such as 1GiB"):
        validate_job(data)
    set_path(data, field, "512MiB")
    validate_job(data)
