"""Worker faults: SIGKILL a ``dask worker`` process during pass 1 and during pass 2.

The cluster is real (``dask scheduler`` + two ``dask worker --no-nanny`` CLI processes on
127.0.0.1); the kill is a real SIGKILL of the worker's pid, so its in-memory results are lost
and the scheduler must recompute them elsewhere. Every X block passes through a slow
identity that records (block, pid) in a marker file: that is how the test knows the pass is
running (and on which worker) when it kills, and that work went on after the kill. The scores
must be bit-for-bit those of an undisturbed run.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from clusterkit import CliCluster, make_dataset, wait_for

from nldist import graph
from nldist.models import get_model
from nldist.scores.spec import make_spec

pytestmark = pytest.mark.slow

N, CHUNK = 4000, 250
BLOCKS = N // CHUNK


@pytest.fixture(scope="module")
def xy(tmp_path_factory):
    path = make_dataset(tmp_path_factory.mktemp("fdata") / "d.zarr", n=N, chunk_rows=CHUNK)
    return graph.inputs.as_dask_xy(*graph.inputs.open_zarr_xy(path))


@pytest.fixture(scope="module")
def spec(xy):
    X, _ = xy
    m = get_model("glm:swish", X.shape[1])
    theta = np.linspace(-0.5, 0.5, m.n_params)
    return make_spec("nonlinear-leverage", m, theta, X.shape[1], True, False)


@pytest.fixture(scope="module")
def undisturbed(xy, spec):
    X, y = xy
    with dask.config.set(scheduler="synchronous"):
        norm = graph.passes.pass1(X, y, spec)
        return norm, graph.passes.pass2(X, y, spec, norm).compute()


def _slow(X, marks: Path, delay: float = 0.12):
    """X with every block delayed and recorded as ``marks/<first row>-<pid>``."""

    def slow_identity(block, block_info=None):
        import os
        import time as _t

        start = block_info[0]["array-location"][0][0]
        (marks / f"{start}-{os.getpid()}").touch()
        _t.sleep(delay)
        return block

    return X.map_blocks(slow_identity, dtype=X.dtype)


def _marks(d: Path) -> list[tuple[int, int, float]]:
    out = []
    for p in d.iterdir():
        start, pid = p.name.split("-")
        out.append((int(start), int(pid), p.stat().st_mtime))
    return out


def _kill_when_running(cluster: CliCluster, client, marks: Path, name: str,
                       result: dict) -> threading.Thread:
    """A thread that SIGKILLs worker ``name`` once it has done a block and the pass is busy."""
    pid = cluster.workers[name].pid

    def go():
        try:
            wait_for(lambda: len({s for s, p, _ in _marks(marks) if p == pid}) >= 1
                     and len(_marks(marks)) >= 4, 120, f"{name} to work on the pass")
            result["done_before"] = len({s for s, _, _ in _marks(marks)})
            result["t_kill"] = time.time()
            cluster.kill_worker(name)
        except BaseException as exc:  # surfaced by the test
            result["error"] = exc

    t = threading.Thread(target=go, daemon=True)
    t.start()
    return t


def test_sigkill_worker_in_pass1_and_pass2(xy, spec, undisturbed, tmp_path):
    from distributed import Client

    X, y = xy
    ref_norm, ref_probs = undisturbed
    cluster = CliCluster(tmp_path, n_workers=2)
    try:
        with Client(cluster.address, timeout="30s") as client:
            cluster.wait_workers(client, 2)
            # pass 1: kill w1 while the per-block R tasks run
            m1 = tmp_path / "marks1"
            r1: dict = {}
            m1.mkdir()
            t = _kill_when_running(cluster, client, m1, "w1", r1)
            norm = graph.passes.pass1(_slow(X, m1), y, spec)
            t.join(30)
            assert "error" not in r1, r1.get("error")
            assert r1["done_before"] < BLOCKS, "pass 1 had finished before the kill"
            assert len(client.scheduler_info()["workers"]) == 1
            assert any(mt >= r1["t_kill"] for _, _, mt in _marks(m1))  # went on without w1
            # a replacement joins; pass 2: kill w2 while the per-row score tasks run
            cluster.add_worker()
            cluster.wait_workers(client, 2)
            m2 = tmp_path / "marks2"
            r2: dict = {}
            m2.mkdir()
            t = _kill_when_running(cluster, client, m2, "w2", r2)
            probs = graph.passes.pass2(_slow(X, m2), y, spec, norm).compute()
            t.join(30)
            assert "error" not in r2, r2.get("error")
            assert r2["done_before"] < BLOCKS, "pass 2 had finished before the kill"
            assert {s for s, _, _ in _marks(m2)} == set(range(0, N, CHUNK))
    finally:
        cluster.stop()
    assert norm.rank == ref_norm.rank and norm.total == ref_norm.total
    np.testing.assert_array_equal(norm.factor.R, ref_norm.factor.R)
    np.testing.assert_array_equal(probs, ref_probs)
    assert np.isclose(probs.sum(), 1.0)
