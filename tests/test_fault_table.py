"""The fault table (issues 14 and 29): every bad input a user hits in the first week, and
what a hostile or careless user tries, through the command line, ends in exactly one line
``error: ...`` that names the fix, exit status 2, no traceback, nothing half-written (no
metrics.json, no dataset or ``*.partial`` left), and nothing written or removed outside
--out (the whole tmp directory is compared before and after, symbolic links not followed).

Below the table: the confinement rule (``--force`` removes only the previous job's outputs,
a symbolic --out is its target, links inside it never lead out of it) and the Parquet
listing / schema / fingerprint rules, with real files."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import socket
import threading
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zarr
from typer.testing import CliRunner

from nldist.cli import app


def _csv(path: Path, **cols) -> Path:
    rng = np.random.default_rng(0)
    base = {"a": rng.normal(size=60), "b": rng.normal(size=60), "y": rng.normal(size=60)}
    pd.DataFrame({**base, **cols}).to_csv(path, index=False)
    return path


def _job(tmp: Path, source: str, extra: str = "", name: str = "fault",
         model: str = "glm:sigmoid", dataset: str = "") -> Path:
    job = tmp / "job.yaml"
    job.write_text(f"name: {json.dumps(name)}\ndataset: {{source: {source}, target: y{dataset}}}"
                   f"\nmodel: {model}\ns: 20\ncluster: {{address: synchronous}}\n{extra}")
    return job


def _parquet_dir(path: Path, frames: list[pd.DataFrame]) -> Path:
    path.mkdir()
    for i, df in enumerate(frames):
        df.to_parquet(path / f"p{i}.parquet")
    return path


def _frame(n: int = 50, seed: int = 0, **cols) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n),
                         "y": rng.normal(size=n), **cols})


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


# -- issue 29: confinement -----------------------------------------------------------------
def _name(value):
    """A job named ``value`` run by ``select`` without --out (its default is runs/NAME)."""
    return lambda t: ["select", _job(t, _csv(t / "d.csv"), name=value(t) if callable(value)
                                     else value)]


def _link_out_of_out(t):
    """--out holds another job's outputs and its samples/ is a link to a directory outside
    --out: --force must neither follow it nor write through it."""
    out = t / "out"
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"identity": {"name": "other"}}))
    (t / "elsewhere").mkdir()
    (t / "elsewhere" / "keep.npz").write_text("not nldist's")
    (out / "samples").symlink_to(t / "elsewhere", target_is_directory=True)
    return ["run", _job(t, _csv(t / "d.csv")), "--force"]


def _overwrite_foreign(t):
    (t / "mine").mkdir()
    (t / "mine" / "notes.txt").write_text("a user's notes")
    return ["ingest", _csv(t / "d.csv"), t / "mine", "--target", "y", "--overwrite"]


# -- issue 29: silently wrong data --------------------------------------------------------
def _huge(n=50, seed=0):
    a = np.random.default_rng(seed).uniform(1e307, 1.7e308, size=n)
    a[::2] *= -1
    return _frame(n, seed, a=a)


def _overflow_ingest(t):
    src = _parquet_dir(t / "pq", [_huge(seed=0), _huge(seed=1)])
    return ["ingest", src, t / "o.zarr", "--target", "y", "--standardize",
            "--cluster", "synchronous"]


def _overflow_in_place(t):
    src = _parquet_dir(t / "pq", [_huge(seed=0), _huge(seed=1)])
    return ["run", _job(t, src, dataset=", format: parquet, standardize: true")]


def _float32_overflow(t):
    return ["run", _job(t, _csv(t / "d.csv", a=np.full(60, 1e300)), dataset=", dtype: float32")]


def _empty_first_text(t):
    empty = pa.table({"a": pa.array([], pa.string()), "b": pa.array([], pa.float64()),
                      "y": pa.array([], pa.float64())})
    (t / "pq").mkdir()
    pq.write_table(empty, t / "pq" / "p0.parquet")
    _frame().to_parquet(t / "pq" / "p1.parquet")
    return ["ingest", t / "pq", t / "o.zarr", "--target", "y", "--cluster", "synchronous"]


def _softmax5(t):
    y = np.arange(60) % 3
    return ["run", _job(t, _csv(t / "d.csv", y=y), "loss: cross_entropy\nkind: uniform\n"
                        "baselines: []\n", model="softmax:5")]


# -- issue 29: one line instead of a traceback -------------------------------------------
def _garbage_scheduler(t):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()

    def serve():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                try:
                    conn.sendall(b"\xff" * 64 + bytes(range(256)) * 16)
                    conn.recv(1024)
                except OSError:
                    pass

    threading.Thread(target=serve, daemon=True).start()
    return ["run", _job(t, _csv(t / "d.csv")), "--cluster",
            f"tcp://127.0.0.1:{sock.getsockname()[1]}"]


def _two_column_y(t):
    rng = np.random.default_rng(0)
    g = zarr.open_group(str(t / "two.zarr"), mode="w", zarr_format=3)
    g.create_array("X", data=rng.normal(size=(60, 3)), chunks=(30, 3))
    g.create_array("y", data=rng.normal(size=(60, 2)), chunks=(30, 2))
    return ["run", _job(t, t / "two.zarr")]


def _unstandardized(t):
    rng = np.random.default_rng(0)
    return ["run", _job(t, _csv(t / "d.csv", a=rng.normal(size=60) * 1e300,
                                b=rng.normal(size=60) * 1e300), model="linear")]


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
    # issue 29
    "job name climbing out (../../escaped_x)": (_name("../../escaped_x"),
                                                r"name: must be one path component"),
    "job name an absolute path": (_name(lambda t: str(t / "abs_escape")),
                                  r"name: must be one path component"),
    "job name empty": (_name(""), r"name: must be one path component"),
    "--force with a link out of --out": (_link_out_of_out,
                                         r"samples is a symbolic link to .*elsewhere, outside "
                                         r"the output directory"),
    "ingest --overwrite onto a user's directory": (_overwrite_foreign,
                                                   r"mine is not a dataset nldist wrote.*move "
                                                   r"its files away"),
    "standardize overflowing (Parquet ingest)": (_overflow_ingest,
                                                 r"standardizing column\(s\) a overflows"),
    "standardize overflowing (Parquet in place)": (_overflow_in_place,
                                                   r"standardizing column\(s\) a overflows"),
    "float32 overflowing (CSV)": (_float32_overflow, r"column\(s\) a are not finite in float32"),
    "empty first Parquet file declaring text": (_empty_first_text,
                                                r"column 'a' is numeric in file .*p1.parquet but "
                                                r"text in file .*p0.parquet"),
    "softmax:5 on 3 classes": (_softmax5, r"classes \[3, 4\] of the model's 5 never occur"),
    "--set with a YAML tag": (lambda t: ["run", _job(t, _csv(t / "d.csv")), "--set",
                                         "s=!!python/object/apply:os.system [echo hi]"],
                              r"override 's=.*YAML tags .* are refused"),
    "--cluster at a port answering garbage": (_garbage_scheduler,
                                              r"is not a Dask scheduler \(its answer could not "
                                              r"be read"),
    "2-column y, single-output model": (_two_column_y,
                                        r"y has 2 column\(s\) but model 'glm:sigmoid' .* takes "
                                        r"one target per row; use a 2-output model"),
    "memory_limit below the worker floor": (lambda t: ["run", _job(t, _csv(t / "d.csv")),
                                                    "--set", "cluster.memory_limit=64MiB"],
                                            r"cluster.memory_limit: 64MiB is below the 512 MiB a "
                                            r"worker needs.*use at least 512MiB"),
    "huge unstandardized features": (_unstandardized,
                                     r"(numeric breakdown|not finite).*unstandardized or huge "
                                     r"values.*standardize"),
}


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _tree(root: Path) -> set[str]:
    """Every file, directory and link under root (links not followed)."""
    found = set()
    for d, dirs, files in os.walk(root):
        found |= {str(Path(d) / n) for n in [*dirs, *files]}
    return found


def _fails_in_one_line(case: str, args: list, message: str, tmp_path: Path,
                       out: Path | None = None) -> str:
    """Run the CLI; check the fault table's rules; return the error line."""
    out = out or tmp_path / "out"
    args = [str(a) for a in args]
    if args[0] == "run" and "--out" not in args:
        args += ["--out", str(out)]
    before = _tree(tmp_path)
    done = CliRunner().invoke(app, args)
    # (a local cluster's first line says where its dashboard is: not an error line)
    err = [ln for ln in done.stderr.strip().splitlines()
           if ln.strip() and not ln.startswith("dask dashboard: ")]
    assert done.exit_code == 2, (case, done.output)
    assert len(err) == 1 and err[0].startswith("error: "), (case, done.stderr)
    assert re.search(message, err[0]), (case, err[0])
    assert "Traceback" not in done.output and "╭─" not in done.output  # rich's box too
    assert not (out / "metrics.json").exists()
    after = _tree(tmp_path)
    inside = str(out) + os.sep
    written = sorted(p for p in after - before if not (p + os.sep).startswith(inside))
    removed = sorted(p for p in before - after if not (p + os.sep).startswith(inside))
    assert not written, (case, "written outside --out", written)
    assert not removed, (case, "removed outside --out", removed)
    assert not [p for p in after if p.endswith(".partial")], case
    return err[0]


@pytest.mark.parametrize("case", list(CASES))
def test_fault_table(case, tmp_path, monkeypatch):
    make, message = CASES[case]
    args = make(tmp_path)
    cwd = tmp_path / "cwd" / "sub"  # runs/NAME lands in here: ../../ would climb to tmp_path
    cwd.mkdir(parents=True)
    monkeypatch.chdir(cwd)
    _fails_in_one_line(case, args, message, tmp_path)


# -- object storage (moto's S3 server on localhost, or no server at all) ------------------
def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_out_on_a_missing_bucket_is_refused_not_created(tmp_path, s3):
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log (stderr)
    line = _fails_in_one_line("missing bucket", ["run", _job(tmp_path, _csv(tmp_path / "d.csv")),
                                                 "--out", "s3://typo-bucket/run"],
                              r"bucket 'typo-bucket' of s3://typo-bucket/run does not exist; "
                              r"nldist never creates a bucket", tmp_path)
    assert line
    s3.invalidate_cache()
    assert not s3.exists("typo-bucket")


@pytest.mark.parametrize("what", ["endpoint refusing connections", "no credentials"])
def test_object_storage_failures_are_one_line(what, tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{_closed_port()}")
    for k in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(k, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    s3fs = pytest.importorskip("s3fs")
    s3fs.S3FileSystem.clear_instance_cache()  # no file system made with other credentials
    if what == "no credentials":
        monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
        monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
        message = (r"no valid credentials for s3://bucket/pq \(NoCredentialsError\); set the "
                   r"credentials setting \(AWS_ACCESS_KEY_ID")
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        message = (r"cannot reach the object store for s3://bucket/pq .*check the endpoint "
                   r"setting \(AWS_ENDPOINT_URL")
    job = _job(tmp_path, "s3://bucket/pq")
    _fails_in_one_line(what, ["run", job], message, tmp_path)


# -- issue 29: the confinement rule ------------------------------------------------------
def _run(args: list) -> None:
    done = CliRunner().invoke(app, [str(a) for a in args] + ["--quiet"])
    assert done.exit_code == 0, done.output


def test_force_removes_only_the_previous_jobs_outputs(tmp_path):
    """--out holds the job's own source and a user's notes: --force of another job replaces
    the first job's outputs and keeps those, and a file the user added after the run."""
    proj = tmp_path / "proj"
    proj.mkdir()
    src = _csv(proj / "data.csv")
    (proj / "notes.txt").write_text("mine")
    one = _job(tmp_path, src, name="one")
    _run(["run", one, "--out", proj])
    man = json.loads((proj / "run.json").read_text())
    assert {"data.csv", "notes.txt"} <= set(man["foreign"])
    assert "metrics.json" in man["outputs"] and "notes.txt" not in man["outputs"]
    (proj / "later.txt").write_text("added after the run")
    (tmp_path / "outside.txt").write_text("outside")
    (proj / "link.txt").symlink_to(tmp_path / "outside.txt")
    theirs = {p.name for p in proj.iterdir()} - {"data.csv", "notes.txt", "later.txt",
                                                  "link.txt"}
    two = tmp_path / "two.yaml"
    two.write_text(one.read_text().replace("name: \"one\"", "name: two").replace(
        "glm:sigmoid", "linear"))
    done = CliRunner().invoke(app, ["run", str(two), "--out", str(proj), "--quiet"])
    assert done.exit_code == 2 and "--force" in done.stderr
    _run(["run", two, "--out", proj, "--force"])
    assert (proj / "data.csv").exists() and (proj / "notes.txt").read_text() == "mine"
    assert (proj / "later.txt").exists() and (proj / "link.txt").is_symlink()
    assert (tmp_path / "outside.txt").read_text() == "outside"
    assert json.loads((proj / "metrics.json").read_text())["name"] == "two"
    assert json.loads((proj / "run.json").read_text())["identity"]["name"] == "two"
    assert theirs <= {p.name for p in proj.iterdir()} | {"theta_star.npz"}


def test_force_in_a_bucket_keeps_the_source_and_unknown_objects(tmp_path, s3):
    """The same rule on object storage: --out s3://bucket/proj holds the job's source and a
    user's notes; --force of another job keeps both."""
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    s3.put(str(_csv(tmp_path / "d.csv")), "bucket/proj/data.csv")
    s3.pipe("bucket/proj/notes.txt", b"mine")
    one = _job(tmp_path, "s3://bucket/proj/data.csv", name="one")
    _run(["sample", one, "--out", "s3://bucket/proj"])  # (sample: no report)
    s3.invalidate_cache()
    assert s3.exists("bucket/proj/samples/nonlinear-leverage.npz")
    two = tmp_path / "two.yaml"
    two.write_text(one.read_text().replace("name: \"one\"", "name: two").replace(
        "glm:sigmoid", "linear"))
    _run(["sample", two, "--out", "s3://bucket/proj", "--force"])
    s3.invalidate_cache()
    assert s3.cat("bucket/proj/notes.txt") == b"mine"
    assert s3.exists("bucket/proj/data.csv")
    assert json.loads(s3.cat("bucket/proj/run.json"))["identity"]["name"] == "two"


def test_a_zarr_source_named_like_an_output_is_never_replaced(tmp_path):
    """--out proj holds the job's own Zarr source at proj/dataset.zarr (written by `nldist
    ingest`, so without the key of a job's ingest): a run uses it in place, and a re-run
    with other settings does not delete it as a stale ingest."""
    proj = tmp_path / "proj"
    proj.mkdir()
    _run(["ingest", _csv(tmp_path / "d.csv"), proj / "dataset.zarr", "--target", "y"])
    job = _job(tmp_path, proj / "dataset.zarr")
    _run(["run", job, "--out", proj])
    _run(["run", job, "--out", proj, "--set", "s=30", "--set", "dataset.standardize=true"])
    attrs = zarr.open_group(str(proj / "dataset.zarr"), mode="r").attrs
    assert attrs["n_rows"] == 60 and "ingest_key" not in attrs


def test_a_symlinked_out_is_its_target(tmp_path):
    """The rule: --out may itself be a symbolic link; its target is the output directory,
    and every file the job writes resolves inside it (nothing beside the link)."""
    real = tmp_path / "disk" / "real"
    real.mkdir(parents=True)
    (tmp_path / "work").mkdir()
    link = tmp_path / "work" / "out"
    link.symlink_to(real, target_is_directory=True)
    job = _job(tmp_path, _csv(tmp_path / "d.csv"))
    before = _tree(tmp_path)
    _run(["run", job, "--out", link])
    new = _tree(tmp_path) - before
    assert (real / "metrics.json").exists() and link.is_symlink()
    assert all(p.startswith(str(real) + os.sep) for p in new), sorted(new)[:5]
    m = json.loads((real / "metrics.json").read_text())
    assert m["dataset"].startswith(str(real))


# -- issue 29: Parquet listing, schema and fingerprint -----------------------------------
def test_hidden_and_underscore_parquet_files_are_not_read(tmp_path, sync_scheduler):
    from nldist.ingest import ingest_table

    src = _parquet_dir(tmp_path / "pq", [_frame(seed=0), _frame(seed=1)])
    _frame(seed=2).to_parquet(src / "_x.parquet")
    _frame(seed=3).to_parquet(src / ".x.parquet")
    (src / "_backup").mkdir()
    _frame(500, seed=4).to_parquet(src / "_backup" / "p0.parquet")
    out = ingest_table(str(src), tmp_path / "o.zarr", target="y")
    assert zarr.open_group(str(out), mode="r").attrs["n_rows"] == 100


def test_an_empty_first_parquet_file_does_not_make_a_numeric_column_text(tmp_path,
                                                                         sync_scheduler):
    from nldist.ingest import ingest_table

    (tmp_path / "pq").mkdir()
    _frame(0).astype({"a": object}).to_parquet(tmp_path / "pq" / "p0.parquet")  # a: null type
    _frame().to_parquet(tmp_path / "pq" / "p1.parquet")
    out = ingest_table(str(tmp_path / "pq"), tmp_path / "o.zarr", target="y")
    attrs = zarr.open_group(str(out), mode="r").attrs
    assert attrs["n_rows"] == 50 and attrs["features"] == ["a", "b"]


def test_parquet_fingerprints_see_a_same_size_same_mtime_rewrite(tmp_path):
    from nldist.ingest import source_fingerprint

    src = _parquet_dir(tmp_path / "pq", [_frame(seed=0), _frame(seed=1)])
    f = src / "p1.parquet"
    st = f.stat()
    before = source_fingerprint(str(src))
    _frame(seed=7).to_parquet(f)  # same shape: same size here, other values
    assert f.stat().st_size == st.st_size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert source_fingerprint(str(src)) != before


# -- issue 29: a failed task on a local worker is not printed by the worker ---------------
def _fails() -> None:
    raise ValueError("a task that fails")


def test_worker_task_errors_go_to_run_log_not_the_console(tmp_path, capfd):
    from nldist.cluster import connect
    from nldist.jobs import ClusterConfig

    log = tmp_path / "run.log"
    cfg = ClusterConfig(address="local", n_workers=1)
    with connect(cfg, log_file=str(log)) as client:
        with pytest.raises(ValueError, match="a task that fails"):
            client.submit(_fails, pure=False).result()
        client.restart()  # as the nanny restarts a worker over its memory limit
        with pytest.raises(ValueError, match="a task that fails"):
            client.submit(_fails, pure=False).result()
    err = capfd.readouterr().err
    assert "Compute Failed" not in err and "Traceback" not in err, err[-2000:]
    assert log.read_text().count("Compute Failed") == 2, log.read_text()[-2000:]
    assert "a task that fails" in log.read_text()


@pytest.mark.parametrize("damage", ["metadata not JSON", "a column missing"])
def test_a_damaged_sample_table_is_one_line(tmp_path, damage):
    from nldist import load_sample
    from nldist.errors import NldistError

    meta = b"{not json" if damage == "metadata not JSON" else json.dumps(
        {"features": ["a"]}).encode()
    table = pa.table({"a": [1.0], "y": [0.0]}).replace_schema_metadata({b"nldist": meta})
    pq.write_table(table, tmp_path / "sample.parquet")
    with pytest.raises(NldistError, match=r"is a damaged nldist sample .*run "
                                          r"the job again"):
        load_sample(tmp_path)


# -- issue 29: resources, on real LocalCluster worker processes ------------------------------
#: the dry-run's memory bound, enforced before any pass: one line naming the bytes, the
#: chunk_rows and the memory_limit, instead of minutes of worker restarts and a KilledWorker
#: traceback (relu2:100000 on 2 features: p = 300,000, an R of 300,001^2 float64)
TOO_BIG = r"model 'relu2:100000' \(p = 300,000\) does not fit the workers: one " \
    r"nonlinear-leverage scores task needs 2.62 TiB \(its \(300,001, 300,001\) matrices " \
    r"alone take 2.62 TiB, whatever the chunk_rows \(60\)\), over the workers' memory_limit " \
    r"of 1.00 GiB; sketch the dual rows"


@pytest.mark.parametrize("verb", ["run", "select"])
def test_a_task_over_the_memory_limit_is_one_line_before_any_pass(verb, tmp_path):
    import time

    job = _job(tmp_path, _csv(tmp_path / "d.csv"), model="relu2:100000")
    t0 = time.perf_counter()
    _fails_in_one_line(verb, [verb, job, "--cluster", "local", "--set", "cluster.n_workers=1",
                              "--out", tmp_path / "out"], TOO_BIG, tmp_path)
    assert time.perf_counter() - t0 < 60  # (no pass ran: ~5 s on an idle machine)
    assert not (tmp_path / "out" / "scores").exists()


def test_the_dry_run_prints_the_bound_that_is_enforced(tmp_path):
    """--dry-run reports the bound the run refuses by, and a column sketch bounds the
    factored matrices by k (a relu2:1350 on 74 features runs on 1 GiB workers sketched)."""
    from types import SimpleNamespace

    from nldist.models import get_model
    from nldist.pipeline.budget import kind_task

    job = _job(tmp_path, _csv(tmp_path / "d.csv"), model="relu2:100000")
    done = CliRunner().invoke(app, ["run", str(job), "--dry-run", "--out",
                                    str(tmp_path / "out"), "--cluster", "local"])
    assert done.exit_code == 0, done.output
    plan = json.loads(done.stdout)
    assert plan["fits_memory_limit"] is False
    assert "OVER THE LIMIT: the run will refuse it" in done.stderr
    assert plan["memory_per_task_bytes"] == 32 * 300_001**2 + 20 * (2 * 8 + 2 * 8
                                                                     + 24 * 300_001 + 16)
    m = get_model("relu2:1350", 74)
    sketched = SimpleNamespace(kind="nonlinear-leverage", sketch=SimpleNamespace(cols=512))
    exact = SimpleNamespace(kind="nonlinear-leverage", sketch=None)
    task = kind_task(sketched, m, "nonlinear-leverage", 20_000, 74, 8)
    assert task["q"] == 513 and task["bytes"] < 2**30 / 2  # the sketched job fits 1 GiB
    assert kind_task(exact, m, "nonlinear-leverage", 20_000, 74, 8)["bytes"] > 300e9
    assert kind_task(exact, m, "nonlinear-norm", 20_000, 74, 8)["q"] == 0
    assert kind_task(exact, m, "linear-leverage", 20_000, 74, 8)["q"] == 75


def _exit_worker() -> None:
    os._exit(1)  # what the nanny's kill of a worker over its memory limit looks like


def _grow_memory() -> None:
    import time

    held = []
    while True:  # until the nanny kills this worker at 95 % of its limit
        held.append(np.ones(8 * 2**20 // 8))
        time.sleep(0.01)


def test_workers_over_their_memory_limit_are_one_line_and_run_log(tmp_path, capfd):
    """A task that takes more memory than memory_limit: its worker is paused, killed and
    restarted by its nanny, twice, and the scheduler gives the task up — what distributed
    logs about it (in the workers and in the driver) goes to run.log; the console gets
    only the one line of the KilledWorker."""
    import dask
    from distributed import KilledWorker

    from nldist.cluster import connect
    from nldist.errors import out_of_memory
    from nldist.jobs import ClusterConfig

    log = tmp_path / "run.log"
    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            connect(ClusterConfig(address="local", n_workers=1, memory_limit="512MiB"),
                    log_file=str(log)) as client:
        with pytest.raises(KilledWorker) as got:
            client.submit(_grow_memory, pure=False).result(timeout=120)
    assert out_of_memory(got.value).startswith("the workers died running task _grow_memory ")
    err = capfd.readouterr().err
    assert not [ln for ln in err.splitlines() if "memory" in ln or "Restarting" in ln
                or "died" in ln], err[-3000:]
    text = log.read_text()
    assert "exceeded 95% memory budget" in text and "marked as failed" in text, text[-3000:]


def test_a_task_that_kills_its_workers_is_one_line(tmp_path):
    """A task every worker dies running (a worker over its memory limit is killed by its
    nanny) ends in distributed's KilledWorker after 2 tries here: one line naming
    memory_limit and chunk_rows, bounded by the allowed failures, not a traceback."""
    import dask
    from distributed import KilledWorker

    from nldist.cluster import connect
    from nldist.errors import out_of_memory
    from nldist.jobs import ClusterConfig

    with dask.config.set({"distributed.scheduler.allowed-failures": 1}), \
            connect(ClusterConfig(address="local", n_workers=1),
                    log_file=str(tmp_path / "run.log")) as client:
        with pytest.raises(KilledWorker) as got:
            client.submit(_exit_worker, pure=False).result(timeout=60)
    line = out_of_memory(got.value)
    assert line is not None and "\n" not in line, line
    assert re.match(r"the workers died running task _exit_worker \(each .*raise "
                    r"cluster.memory_limit, lower dataset.chunk_rows", line), line
    assert out_of_memory(MemoryError("Unable to allocate 2.62 TiB")).startswith(
        "out of memory (Unable to allocate 2.62 TiB); raise cluster.memory_limit")


def test_ctrl_c_while_the_local_cluster_starts_is_one_line(tmp_path):
    """Ctrl-C (SIGINT to the whole foreground process group) the moment the first worker
    process of the local cluster exists — Python still starting in it: exit 130 (as a shell
    reports a process ended by SIGINT) and the one 'interrupted' line; not the workers'
    "Fatal Python error: init_import_site" tracebacks nor the half-started cluster's
    AssertionError (135 lines before)."""
    import signal
    import subprocess
    import sys
    import time

    import psutil

    job = _job(tmp_path, _csv(tmp_path / "d.csv"), "cache_x: never\n")
    # as from a terminal: SIGINT at its default (a background test session may ignore it)
    proc = subprocess.Popen([sys.executable, "-m", "nldist", "run", str(job), "--cluster",
                             "local", "--out", str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    driver, t0 = psutil.Process(proc.pid), time.monotonic()
    while time.monotonic() - t0 < 120 and proc.poll() is None:
        try:
            spawned = [c for c in driver.children() if "spawn_main" in " ".join(c.cmdline())
                       and "resource_tracker" not in " ".join(c.cmdline())]
        except psutil.Error:
            spawned = []
        if spawned:
            break
        time.sleep(0.01)
    time.sleep(0.3)  # Python is starting in the worker: its SIGINT handler is installed
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGINT), err[-2000:]
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["error: interrupted; re-run the same command to resume"], err[-3000:]


#: a sitecustomize that breaks the worker processes (multiprocessing's spawned children:
#: ``python -c ... --multiprocessing-fork``) and nothing else: they exit at once, or hang
#: while starting
_BREAK = '''import os, sys, time
if sys.argv[1:] == ["--multiprocessing-fork"] and "NLDIST_TEST_BREAK" in os.environ:
    if os.environ["NLDIST_TEST_BREAK"] == "exit":
        os._exit(3)
    time.sleep(600)
'''


@pytest.mark.parametrize("how", ["exit", "hang"])
def test_workers_that_cannot_start_are_one_line_in_a_stated_time(how, tmp_path):
    """Local worker processes that die while starting (distributed: 'Nanny failed to
    start', 240 lines) or hang while starting (distributed waits forever): one line within
    cluster.start_timeout (+ the teardown), exit 2."""
    import signal
    import subprocess
    import sys
    import time

    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(_BREAK)
    env = {**os.environ, "NLDIST_TEST_BREAK": how, "PYTHONPATH": str(tmp_path / "site")}
    job = _job(tmp_path, _csv(tmp_path / "d.csv"))
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "nldist", "run", str(job), "--cluster",
                             "local", "--set", "cluster.start_timeout=4", "--out",
                             str(tmp_path / "out")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # a worker still hanging
    took = time.monotonic() - t0
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert proc.returncode == 2, err[-3000:]
    assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
    want = (r"within 4 s \(cluster.start_timeout\); check that this Python starts a worker"
            if how == "hang" else r"did not start \(RuntimeError: Nanny failed to start")
    assert re.match(r"error: the local cluster's 2 worker process\(es\) ", lines[0]), lines[0]
    assert re.search(want, lines[0]), lines[0]
    assert took < 90, took
