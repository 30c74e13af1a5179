"""nldist.cluster.connect: every way to reach a cluster, against real Dask processes.

LocalCluster, an existing scheduler by tcp:// address and by scheduler file (``dask
scheduler`` / ``dask worker`` CLI processes), the DaskJob-pod path of ``k8s``, TLS with
certificates made at test time, and the one-line errors of missing backends.
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from clusterkit import (
    PYTHON,
    ROOT,
    CliCluster,
    job_dict,
    make_certs,
    make_dataset,
    outputs,
    write_job,
)

from nldist import _budget, pipeline
from nldist.cluster import connect, require
from nldist.errors import NldistError
from nldist.jobs import ClusterConfig, validate_job
from nldist.pipeline import RunContext, stages

KINDS = ["nonlinear-leverage", "linear-leverage", "uniform"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("cdata") / "d.zarr", n=2000, chunk_rows=250)


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref")
    job = validate_job(job_dict(data, address="synchronous"))
    with connect(job.cluster):
        pipeline.run(RunContext(job, out), stop_after="sample")
    return outputs(out, KINDS)


@pytest.fixture(scope="module")
def cli_cluster(tmp_path_factory):
    c = CliCluster(tmp_path_factory.mktemp("cli"), n_workers=2)
    yield c
    c.stop()


def _run(job_dict_, out):
    job = validate_job(job_dict_)
    with connect(job.cluster, name=job.name) as client:
        pipeline.run(RunContext(job, out), stop_after="sample")
        return client


def _same(got, ref):
    for kind in KINDS:
        np.testing.assert_allclose(got[kind][0], ref[kind][0], rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(got[kind][1], ref[kind][1])


def test_local_cluster_equals_synchronous(data, reference, tmp_path):
    client = _run(job_dict(data), tmp_path)
    assert client.status == "closed"
    _same(outputs(tmp_path, KINDS), reference)


def test_tcp_address_and_scheduler_file(cli_cluster, data, reference, tmp_path):
    _run(job_dict(data, address=cli_cluster.address), tmp_path / "a")
    _same(outputs(tmp_path / "a", KINDS), reference)
    # the CLI, by scheduler file: the same job file, only --cluster differs
    job_file = write_job(tmp_path / "job.yaml", job_dict(data))
    proc = subprocess.run([PYTHON, "-m", "nldist.cli", "sample", str(job_file), "--cluster",
                           str(cli_cluster.file), "--out", str(tmp_path / "b"), "--quiet"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    _same(outputs(tmp_path / "b", KINDS), reference)


def test_k8s_inside_a_daskjob_pod_uses_the_operator_scheduler(cli_cluster, monkeypatch):
    """In a DaskJob's job pod the operator sets DASK_SCHEDULER_ADDRESS; --cluster k8s uses it."""
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cli_cluster.address)
    with connect(ClusterConfig(address="k8s")) as client:
        assert client.scheduler.address == cli_cluster.address
        assert client.submit(sum, [1, 2]).result() == 3


def test_k8s_without_an_api_is_one_line(monkeypatch, tmp_path):
    pytest.importorskip("dask_kubernetes.operator")
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "none"))
    with pytest.raises(NldistError, match="Kubernetes API.*KUBECONFIG") as e:
        with connect(ClusterConfig(address="k8s")):
            pass
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(("module", "extra"), [("dask_jobqueue", "slurm"),
                                                ("dask_kubernetes.operator", "k8s")])
def test_missing_backend_gives_install_hint(module, extra, monkeypatch):
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(NldistError, match=rf"pip install 'nldist\[{extra}\]'"):
        require(module)
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS", raising=False)
    with pytest.raises(NldistError, match=rf"nldist\[{extra}\]"):
        with connect(ClusterConfig(address=extra)):
            pass


def test_cli_missing_backend_is_one_line_exit_2(data, tmp_path):
    job_file = write_job(tmp_path / "job.yaml", job_dict(data))
    code = ("import sys; sys.modules['dask_jobqueue'] = None; from nldist.cli import app; "
            "app()")
    proc = subprocess.run([PYTHON, "-c", code, "run", str(job_file), "--cluster", "slurm",
                           "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "pip install 'nldist[slurm]'" in lines[0], proc.stderr


def test_bad_addresses():
    with pytest.raises(NldistError, match="cluster.address"):
        validate_job({"dataset": {"source": "x"}, "model": "linear",
                      "cluster": {"address": "sluurm"}})
    with pytest.raises(NldistError, match="scheduler file"):
        with connect(ClusterConfig(address="/nonexistent/scheduler.json")):
            pass
    with pytest.raises(NldistError, match="cannot reach the Dask scheduler"):
        with connect(ClusterConfig(address="tcp://127.0.0.1:9", connect_timeout=2)):
            pass
    with pytest.raises(NldistError, match="set cluster.tls"):
        with connect(ClusterConfig(address="tls://127.0.0.1:9")):
            pass


def test_tls_local_cluster_and_tls_address(data, reference, tmp_path):
    pytest.importorskip("cryptography")
    tls = make_certs(tmp_path)
    job = validate_job(job_dict(data, tls=tls))
    with connect(job.cluster, name=job.name) as client:
        addr = client.scheduler.address
        assert addr.startswith("tls://127.0.0.1:")
        assert all(w.startswith("tls://") for w in client.scheduler_info()["workers"])
        pipeline.run(RunContext(job, tmp_path / "out"), stop_after="sample")
        # a second client by tls:// address with the same certificates works ...
        with connect(ClusterConfig(address=addr, tls=tls)) as other:
            assert other.submit(sum, [1, 2]).result() == 3
        # ... one without certificates is refused on one line
        with pytest.raises(NldistError, match="set cluster.tls"):
            with connect(ClusterConfig(address=addr)):
                pass
        # and a plain TCP connection to the TLS port does not get through
        from distributed import Client

        with pytest.raises((OSError, TimeoutError)):
            Client(addr.replace("tls://", "tcp://"), timeout="3s")
    _same(outputs(tmp_path / "out", KINDS), reference)
    assert json.loads(json.dumps(tls))  # certificates were made here, not shipped


def test_tls_missing_file_is_one_line(tmp_path):
    cfg = ClusterConfig(tls={"ca_file": str(tmp_path / "no.pem"), "cert": str(tmp_path / "c")})
    with pytest.raises(NldistError, match="cluster.tls.ca_file"):
        with connect(cfg):
            pass


def test_cache_x_reads_once_same_results(data, reference, tmp_path, monkeypatch):
    """cache_x: X, y persisted in worker memory (auto: they fit) give the same scores,
    samples, theta* and relative errors as reading the store every pass."""
    from distributed import Future

    got = {}
    for mode, fraction, cached in (("auto", _budget.CACHE_FRACTION, True), ("never", 1.0, False),
                                   ("auto", 1e-9, False)):  # budget too small: not cached
        monkeypatch.setattr(_budget, "CACHE_FRACTION", fraction)
        job = validate_job({**job_dict(data), "cache_x": mode})
        out = tmp_path / f"{mode}-{fraction}"
        with connect(job.cluster) as client:
            ctx = RunContext(job, out)
            pipeline.run(ctx)
            assert ctx.cached_x is cached
            X, _ = stages.data.xy(ctx)
            tasks = dict(X.__dask_graph__()).values()  # persisted: futures on the workers
            assert all(isinstance(t, Future) for t in tasks) is cached
            assert client.status == "running"
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["cached_x"] is cached and ("cache" in metrics["timings"]) is cached
        _same(outputs(out, KINDS), reference)
        got[(mode, fraction)] = metrics
    a, b, c = got.values()
    for m in (b, c):
        assert m["loss_opt"] == a["loss_opt"]
        assert [k["rel_error"] for k in m["kinds"].values()] == \
               [k["rel_error"] for k in a["kinds"].values()]


def test_cache_x_without_a_distributed_client(data, tmp_path):
    for mode, cached in (("auto", False), ("always", True)):
        job = validate_job({**job_dict(data, address="synchronous"), "cache_x": mode})
        with connect(job.cluster):
            ctx = RunContext(job, tmp_path / mode)
            pipeline.run(ctx, stop_after="score")
            assert ctx.cached_x is cached
