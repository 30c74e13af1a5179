"""Distributed, out-of-core ingest (issue 16): directories, globs and URLs of Parquet / CSV
files read by the workers, statistics merged from partitions, chunks written by one task
each — the same dataset as the in-memory ingest of the same table."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from nldist.errors import NldistError
from nldist.ingest import ingest, ingest_table, table_format
from nldist.jobs import validate_job
from nldist.pipeline import RunContext, stages


@pytest.fixture(scope="module")
def diamonds(tmp_path_factory):
    """The real Diamonds table (53,940 rows, 3 text columns) as 7 Parquet files, 5 CSV files
    and one CSV."""
    from nldist.datasets import load

    df, info = load("diamonds")
    d = tmp_path_factory.mktemp("diamonds")
    (d / "pq").mkdir()
    (d / "csv").mkdir()
    for i, part in enumerate(np.array_split(np.arange(len(df)), 7)):
        df.iloc[part].to_parquet(d / "pq" / f"part-{i}.parquet")
    for i, part in enumerate(np.array_split(np.arange(len(df)), 5)):
        df.iloc[part].to_csv(d / "csv" / f"part-{i}.csv", index=False)
    df.to_csv(d / "all.csv", index=False)
    return d, info.target


def _same_dataset(a, b, rtol=1e-12):
    ga, gb = zarr.open_group(str(a), mode="r"), zarr.open_group(str(b), mode="r")
    assert ga["X"].shape == gb["X"].shape and ga["X"].chunks == gb["X"].chunks
    np.testing.assert_allclose(gb["X"][:], ga["X"][:], rtol=rtol, atol=1e-12)
    np.testing.assert_allclose(gb["y"][:], ga["y"][:], rtol=rtol, atol=1e-12)  # moments merged
    assert ga.attrs["features"] == gb.attrs["features"]
    for key in ("standardize", "standardize_target"):
        if key in ga.attrs:
            np.testing.assert_allclose(np.asarray(gb.attrs[key]["mean"]),
                                       np.asarray(ga.attrs[key]["mean"]), rtol=1e-12)
    res = gb["reservoir"]
    np.testing.assert_array_equal(res["X"][:], gb["X"][:][res["index"][:]])
    np.testing.assert_array_equal(res["y"][:], gb["y"][:][res["index"][:]])
    return gb


def test_formats_are_recognised(diamonds, tmp_path):
    d, _ = diamonds
    assert table_format(str(d / "pq")) == "parquet"
    assert table_format(str(d / "csv" / "*.csv")) == "csv"
    assert table_format(f"file://{d}/pq") == "parquet"
    assert table_format(str(d / "all.csv")) is None  # one local file: in memory
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("x")
    with pytest.raises(NldistError, match="no .csv, .tsv or .parquet"):
        table_format(str(tmp_path / "empty"))


def test_parquet_directory_on_a_local_cluster_equals_the_in_memory_ingest(diamonds, tmp_path,
                                                                          local_client):
    d, target = diamonds
    opts = {"target": target, "standardize": True, "standardize_target": True,
            "chunk_rows": 4000}
    ref = ingest(d / "all.csv", tmp_path / "ref.zarr", **opts)
    got = ingest_table(str(d / "pq"), tmp_path / "got.zarr", **opts)
    g = _same_dataset(ref, got)
    assert g.attrs["partitions"] >= 7 and g.attrs["format"] == "parquet"
    assert g.attrs["n_rows"] == 53_940 and g.attrs["content_sha256"]
    assert not (tmp_path / "got.zarr.partial").exists()


@pytest.mark.parametrize("src", ["csv/*.csv", "file://{d}/csv"])
def test_csv_glob_and_file_url(diamonds, tmp_path, src, sync_scheduler):
    d, target = diamonds
    ref = ingest(d / "all.csv", tmp_path / "ref.zarr", target=target, chunk_rows=10_000)
    source = src.format(d=d) if "://" in src else str(d / src)
    got = ingest_table(source, tmp_path / "got.zarr", target=target, chunk_rows=10_000)
    _same_dataset(ref, got)


def test_missing_values_are_counted_across_partitions(tmp_path, sync_scheduler):
    rng = np.random.default_rng(0)
    (tmp_path / "t").mkdir()
    for i in range(4):
        df = pd.DataFrame({"a": rng.normal(size=100), "b": rng.normal(size=100),
                           "y": rng.normal(size=100)})
        df.loc[: i, "a"] = np.nan  # 1 + 2 + 3 + 4 = 10 missing in a, across 4 files
        df.loc[0, "b"] = np.nan if i == 3 else df.loc[0, "b"]
        df.to_parquet(tmp_path / "t" / f"p{i}.parquet")
    with pytest.raises(NldistError, match=r"11 missing value\(s\) across all partitions: "
                       r"a \(10\), b \(1\); pass --dropna"):
        ingest_table(str(tmp_path / "t"), tmp_path / "o.zarr", target="y")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()
    got = ingest_table(str(tmp_path / "t"), tmp_path / "o.zarr", target="y", dropna=True)
    g = zarr.open_group(str(got), mode="r")
    assert g.attrs["n_rows"] == 390 and g.attrs["dropped_rows"] == 10
    assert np.isfinite(g["X"][:]).all()


def test_a_job_with_a_parquet_directory_ingests_it_out_of_core(diamonds, tmp_path,
                                                               sync_scheduler):
    d, target = diamonds
    job = validate_job({"name": "pq", "model": "linear", "cluster": {"address": "synchronous"},
                        "dataset": {"source": str(d / "pq"), "target": target,
                                    "standardize": True, "chunk_rows": 8000}})
    ctx = RunContext(job, tmp_path / "o")
    path = stages.ingest(ctx)
    ref = ingest(d / "all.csv", tmp_path / "ref.zarr", target=target, standardize=True,
                 chunk_rows=8000)
    _same_dataset(ref, path)
    ctx2 = RunContext(job, tmp_path / "o")  # the same job again: reused, said so
    stages.ingest(ctx2)
    assert ("ingest", "reused", None) in ctx2.reuse


def test_ingest_verb_runs_a_directory_on_a_cluster(diamonds, tmp_path):
    from typer.testing import CliRunner

    from nldist.cli import app

    d, target = diamonds
    done = CliRunner().invoke(app, ["ingest", str(d / "pq"), str(tmp_path / "o.zarr"),
                                    "--target", target, "--features", "carat,cut,depth",
                                    "--cluster", "synchronous", "--reservoir", "500"])
    assert done.exit_code == 0, done.output
    g = zarr.open_group(str(tmp_path / "o.zarr"), mode="r")
    assert g.attrs["features"][:2] == ["carat", "depth"] and g["reservoir"]["X"].shape[0] == 500
    assert "53940 rows" in done.output


@pytest.fixture()
def s3(monkeypatch):
    """An S3-compatible server on localhost (moto's ThreadedMotoServer, as zarr-python and
    s3fs test themselves), reached through s3fs by the standard AWS_* variables."""
    moto_server = pytest.importorskip("moto.server")
    s3fs = pytest.importorskip("s3fs")
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
        monkeypatch.setenv(k, v)
    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": endpoint})
    fs.mkdir("bucket")
    s3fs.S3FileSystem.clear_instance_cache()
    yield fs
    server.stop()


def test_parquet_on_object_storage(diamonds, tmp_path, s3, sync_scheduler):
    """s3:// sources: listed, fingerprinted and read through fsspec; credentials and the
    endpoint come from the environment and are written nowhere."""
    from nldist.ingest import source_fingerprint

    d, target = diamonds
    for f in sorted((d / "pq").iterdir()):
        s3.put(str(f), f"bucket/pq/{f.name}")
    assert table_format("s3://bucket/pq") == "parquet"
    fp = source_fingerprint("s3://bucket/pq")
    assert len(fp["files"]) == 7
    ref = ingest(d / "all.csv", tmp_path / "ref.zarr", target=target, chunk_rows=10_000)
    got = ingest_table("s3://bucket/pq", tmp_path / "got.zarr", target=target, chunk_rows=10_000)
    g = _same_dataset(ref, got)
    text = (tmp_path / "got.zarr" / "zarr.json").read_text()
    assert "testing" not in text and "127.0.0.1" not in text
    assert g.attrs["source"] == "s3://bucket/pq"
    with pytest.raises(NldistError, match="matches no files|cannot list"):
        source_fingerprint("s3://bucket/nothing/*.parquet")
    with pytest.raises(NldistError, match="matches no files|cannot list"):  # no such bucket
        ingest_table("s3://no-such-bucket/pq", tmp_path / "nb.zarr", target=target)
    assert not (tmp_path / "nb.zarr").exists()


def _files(d, frames):
    d.mkdir()
    for i, f in enumerate(frames):
        f.to_parquet(d / f"p{i}.parquet")
    return str(d)


@pytest.mark.parametrize("case, message", [
    ("schema", r"file .*p1.parquet has column\(s\) c that .*p0.parquet lacks"),
    ("target", r"file .*p1.parquet lacks column\(s\) y"),
    ("text", r"column 'a' is text in file .*p2.parquet but numeric in file .*p0.parquet"),
])
def test_bad_multi_file_tables_name_the_file(tmp_path, case, message, sync_scheduler):
    """One line naming the file and the column; nothing written."""
    rng = np.random.default_rng(0)

    def frame(**extra):
        return pd.DataFrame({"a": rng.normal(size=50), "y": rng.normal(size=50), **extra})

    frames = [frame(), frame(), frame()]
    if case == "schema":
        frames[1] = frame(c=rng.normal(size=50))
    elif case == "target":
        frames[1] = frames[1].drop(columns="y")
    else:
        frames[2] = frames[2].assign(a=["1.5x"] * 50)
    src = _files(tmp_path / "t", frames)
    with pytest.raises(NldistError, match=message):
        ingest_table(src, tmp_path / "o.zarr", target="y")
    assert not (tmp_path / "o.zarr").exists() and not (tmp_path / "o.zarr.partial").exists()


def test_a_glob_that_matches_nothing(tmp_path, sync_scheduler):
    with pytest.raises(NldistError, match="matches no files"):
        ingest_table(str(tmp_path / "none-*.parquet"), tmp_path / "o.zarr", target="y")
