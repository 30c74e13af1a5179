"""Several hosts on one machine: Dask scheduler, two workers and the job's client each in
their own network namespace (own network stack, own address on 10.231.7.0/24), joined by a
bridge that lives in a namespace of its own; the root namespace is not touched.

1. ``nldist sample`` run from the client "host" against the scheduler "host" gives the same
   scores and sample as a local run.
2. One worker's link is cut (``ip link set eth0 down`` in its namespace) while pass 1 runs;
   the scheduler drops it after ``worker-ttl`` and the passes finish on the other worker
   with bit-identical scores.

Traffic only ever goes to the addresses created here. Needs root and iproute2 (skipped,
with the reason, otherwise); every namespace is deleted at the end.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import textwrap
import time
from pathlib import Path

import dask
import numpy as np
import pytest
from clusterkit import PYTHON, ROOT, Proc, job_dict, make_dataset, outputs, wait_for, write_job

from nldist import graph
from nldist.models import get_model
from nldist.scores.spec import make_spec

pytestmark = pytest.mark.slow

SUBNET = "10.231.7"
HOSTS = {"sched": 10, "w1": 11, "w2": 12, "client": 13}
KINDS = ["nonlinear-leverage", "linear-leverage", "uniform"]
N, CHUNK = 4000, 250
# fast failure detection across the (virtual) network
FAST = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "4s",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "5s",
        "DASK_DISTRIBUTED__COMM__TIMEOUTS__TCP": "15s"}


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


class Net:
    """Namespaces ``nl<tag>-<host>`` with eth0 on a bridge in namespace ``nl<tag>-br``."""

    def __init__(self) -> None:
        self.tag = secrets.token_hex(3)
        self.ns = {h: f"nl{self.tag}-{h}" for h in HOSTS}
        self.br = f"nl{self.tag}-br"
        self.made: list[str] = []
        self.procs: list[Proc] = []
        for ns in [self.br, *self.ns.values()]:
            _ip("netns", "add", ns)
            self.made.append(ns)
            _ip("-n", ns, "link", "set", "lo", "up")
        _ip("-n", self.br, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.br, "link", "set", "br0", "up")
        for i, (host, ns) in enumerate(self.ns.items()):
            peer = f"p{i}"
            _ip("-n", self.br, "link", "add", peer, "type", "veth", "peer", "name", "eth0",
                "netns", ns)
            _ip("-n", self.br, "link", "set", peer, "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{self.addr(host)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    @staticmethod
    def addr(host: str) -> str:
        return f"{SUBNET}.{HOSTS[host]}"

    def run(self, host: str, args: list[str], log: Path, env: dict | None = None) -> Proc:
        p = Proc(["ip", "netns", "exec", self.ns[host], *args], log,
                 env={**FAST, **(env or {})}, cwd=ROOT)
        self.procs.append(p)
        return p

    def cut(self, host: str) -> None:
        _ip("-n", self.ns[host], "link", "set", "eth0", "down")

    def close(self) -> None:
        for p in self.procs:
            p.stop(timeout=5)
        for ns in reversed(self.made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
def net(tmp_path):
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2 (apt-get install iproute2)")
    probe = f"nlprobe{secrets.token_hex(3)}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot create network namespaces here: {r.stderr.strip()}")
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    n = Net()
    yield n
    n.close()
    left = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"nl{n.tag}-" not in left


def _cluster(net: Net, tmp: Path) -> str:
    """Scheduler on its host, one worker on each worker host; returns the address."""
    sched = f"tcp://{net.addr('sched')}:8786"
    sf = tmp / "scheduler.json"
    net.run("sched", [PYTHON, "-m", "distributed.cli.dask_scheduler", "--host",
                      net.addr("sched"), "--port", "8786", "--dashboard-address", ":0",
                      "--scheduler-file", str(sf)], tmp / "sched.log")
    wait_for(lambda: sf.exists() and sf.stat().st_size > 0, 60, "the scheduler")
    assert json.loads(sf.read_text())["address"] == sched
    for w in ("w1", "w2"):
        net.run(w, [PYTHON, "-m", "distributed.cli.dask_worker", sched, "--host", net.addr(w),
                    "--nthreads", "1", "--memory-limit", "1GiB", "--no-nanny", "--name", w,
                    "--dashboard-address", ":0"], tmp / f"{w}.log")
    return sched


def _wait_workers(net: Net, sched: str, n: int, tmp: Path) -> None:
    code = (f"from distributed import Client; c = Client({sched!r}, timeout='30s'); "
            f"c.wait_for_workers({n}, timeout=60); print(sorted(c.scheduler_info()['workers']))")
    p = net.run("client", [PYTHON, "-c", code], tmp / "wait.log")
    assert p.p.wait(120) == 0, p.text()


def test_job_from_a_client_host_equals_local(net, tmp_path):
    data = make_dataset(tmp_path / "d.zarr", n=N, chunk_rows=CHUNK)
    ref = tmp_path / "ref"
    job_file = write_job(tmp_path / "job.yaml", job_dict(data, address="synchronous"))
    subprocess.run([PYTHON, "-m", "nldist.cli", "sample", str(job_file), "--out", str(ref),
                    "--quiet"], check=True, cwd=ROOT, timeout=600, capture_output=True)
    sched = _cluster(net, tmp_path)
    _wait_workers(net, sched, 2, tmp_path)
    out = tmp_path / "out"
    p = net.run("client", [PYTHON, "-m", "nldist.cli", "sample", str(job_file), "--cluster",
                           sched, "--out", str(out), "--quiet"], tmp_path / "client.log")
    assert p.p.wait(600) == 0, p.text()
    got, want = outputs(out, KINDS), outputs(ref, KINDS)
    for kind in KINDS:
        np.testing.assert_allclose(got[kind][0], want[kind][0], rtol=1e-9, atol=1e-15)
        np.testing.assert_array_equal(got[kind][1], want[kind][1])
    # the root namespace cannot even see the scheduler's address
    r = subprocess.run(["ip", "route", "get", net.addr("sched")], capture_output=True,
                       text=True)
    assert "br0" not in r.stdout


DRIVER = textwrap.dedent('''
    import os, sys, numpy as np
    from pathlib import Path
    from distributed import Client
    from nldist import graph
    from nldist.scores.spec import make_spec
    from nldist.models import get_model

    sched, data, marks, out, theta = sys.argv[1:6]
    marks = Path(marks)

    def slow_identity(block, block_info=None):
        import os, time
        start = block_info[0]["array-location"][0][0]
        (marks / f"{start}-{os.getpid()}").touch()
        time.sleep(0.15)
        return block

    with Client(sched, timeout="30s") as c:
        c.wait_for_workers(2, timeout=60)
        X, y = graph.inputs.as_dask_xy(*graph.inputs.open_zarr_xy(data))
        m = get_model("glm:swish", X.shape[1])
        spec = make_spec("nonlinear-leverage", m, np.load(theta), X.shape[1], True, False)
        Xs = X.map_blocks(slow_identity, dtype=X.dtype)
        norm = graph.passes.pass1(Xs, y, spec)
        probs = graph.passes.pass2(Xs, y, spec, norm).compute()
        workers = sorted(c.scheduler_info()["workers"])
    np.savez(out, R=norm.factor.R, total=norm.total, probs=probs,
             workers=np.array(workers))
''')


def test_cut_link_mid_pass_still_identical(net, tmp_path):
    data = make_dataset(tmp_path / "d.zarr", n=N, chunk_rows=CHUNK)
    X, y = graph.inputs.as_dask_xy(*graph.inputs.open_zarr_xy(data))
    m = get_model("glm:swish", X.shape[1])
    theta = np.linspace(-0.5, 0.5, m.n_params)
    np.save(tmp_path / "theta.npy", theta)
    spec = make_spec("nonlinear-leverage", m, theta, X.shape[1], True, False)
    with dask.config.set(scheduler="synchronous"):
        ref_norm = graph.passes.pass1(X, y, spec)
        ref_probs = graph.passes.pass2(X, y, spec, ref_norm).compute()
    sched = _cluster(net, tmp_path)
    marks = tmp_path / "marks"
    marks.mkdir()
    (tmp_path / "driver.py").write_text(DRIVER)
    out = tmp_path / "res.npz"
    drv = net.run("client", [PYTHON, str(tmp_path / "driver.py"), sched, str(data), str(marks),
                             str(out), str(tmp_path / "theta.npy")], tmp_path / "driver.log")
    def pids():
        return {int(p.name.split("-")[1]) for p in marks.iterdir()}

    # cut w2 once both workers have done pass-1 blocks and the pass is not finished
    wait_for(lambda: len(pids()) >= 2 and len(list(marks.iterdir())) >= 4, 120,
             f"both workers busy ({drv.text()[-1500:]})")
    done_before = len({p.name.split("-")[0] for p in marks.iterdir()})
    t_cut = time.time()
    net.cut("w2")
    assert drv.p.wait(300) == 0, drv.text()
    assert done_before < N // CHUNK, "pass 1 had finished before the cut"
    with np.load(out) as z:
        workers = list(z["workers"])  # after the cut only w1 is left
        assert len(workers) == 1 and workers[0].startswith(f"tcp://{net.addr('w1')}:"), workers
        np.testing.assert_array_equal(z["R"], ref_norm.factor.R)
        assert float(z["total"]) == ref_norm.total
        np.testing.assert_array_equal(z["probs"], ref_probs)
    assert any(p.stat().st_mtime >= t_cut for p in marks.iterdir())  # went on after the cut
