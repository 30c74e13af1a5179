"""Helpers shared by the cluster, Slurm, fault and resume tests (not a test module)."""

from __future__ import annotations

import datetime
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def make_dataset(path: Path, n: int = 4000, d: int = 6, chunk_rows: int = 500,
                 seed: int = 0) -> Path:
    """A small real Zarr dataset (written by nldist's own writer) with a nonlinear target."""
    from nldist.store.dataset import write_dataset

    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    X[: n // 50] *= 6.0  # a few high-leverage rows, so the scores are not near uniform
    w = rng.standard_normal(d) / np.sqrt(d)
    z = X @ w
    y = z / (1 + np.exp(-z)) + 0.1 * rng.standard_normal(n)
    return write_dataset(path, X, y, {"target": "y", "features": [f"x{i}" for i in range(d)]},
                         chunk_rows=chunk_rows, overwrite=True)


def job_dict(data: Path, **cluster: Any) -> dict:
    """A small job over ``data`` (kinds: nonlinear-leverage + linear-leverage + uniform)."""
    return {
        "name": "ctest",
        "dataset": {"source": str(data)},
        "model": "glm:swish",
        "theta": "optimum",
        "kind": "nonlinear-leverage",
        "baselines": ["linear-leverage", "uniform"],
        "s": 200,
        "seed": 3,
        "max_iter": 30,
        "cluster": {"address": "local", "n_workers": 2, "memory_limit": "1GiB", **cluster},
    }


def write_job(path: Path, job: dict) -> Path:
    path.write_text(yaml.safe_dump(job, sort_keys=False))
    return path


def outputs(out: Path, kinds: list[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """{kind: (scores (n,), sample indices (s,))} read back from a run's output directory."""
    import zarr

    got = {}
    for kind in kinds:
        scores = np.asarray(zarr.open_array(str(out / "scores.zarr" / kind), mode="r")[:])
        with np.load(out / "samples" / f"{kind}.npz") as z:
            got[kind] = (scores, np.asarray(z["indices"]))
    return got


def run_local(job: dict, out: Path, stop_after: str = "sample") -> dict:
    """Run ``job`` in this process on a LocalCluster (the reference run)."""
    from nldist import pipeline
    from nldist.cluster import connect
    from nldist.jobs import validate_job

    cfg = validate_job(job)
    with connect(cfg.cluster, name=cfg.name):
        return pipeline.run(pipeline.RunContext(cfg, out), stop_after=stop_after)


def wait_for(cond: Callable[[], Any], timeout: float, what: str, step: float = 0.05) -> Any:
    """Poll ``cond`` until it returns something truthy; fail with ``what`` after timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        got = cond()
        if got:
            return got
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")


class Proc:
    """A subprocess in its own session, stopped (whole process group) on :meth:`stop`."""

    def __init__(self, args: list[str], log: Path, env: dict | None = None,
                 cwd: Path | None = None) -> None:
        self.log = log
        self._fh = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.p = subprocess.Popen(args, stdout=self._fh, stderr=subprocess.STDOUT,
                                  env={**os.environ, **(env or {})}, cwd=cwd,
                                  start_new_session=True)

    @property
    def pid(self) -> int:
        return self.p.pid

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to the whole process group (the process and its children)."""
        try:
            os.killpg(self.p.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, timeout: float = 10.0) -> None:
        if self.p.poll() is None:
            self.kill(signal.SIGTERM)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill(signal.SIGKILL)
                self.p.wait(5)
        else:
            self.kill(signal.SIGKILL)  # children left behind by a dead leader
        self._fh.close()

    def text(self) -> str:
        return self.log.read_text(errors="replace")


class CliCluster:
    """``dask scheduler`` + ``dask worker`` processes on 127.0.0.1 (real CLI, real pids).

    Workers run without a nanny (``--no-nanny``), so SIGKILL of a worker's pid loses it for
    good, like a lost node; :meth:`add_worker` starts a replacement.
    """

    def __init__(self, tmp: Path, n_workers: int = 2, env: dict | None = None,
                 extra: list[str] | None = None) -> None:
        self.tmp = tmp
        self.env = {"DASK_DISTRIBUTED__SCHEDULER__WORKER_TTL": "5s", **(env or {})}
        self.extra = list(extra or [])
        self.file = tmp / "scheduler.json"
        self.file.unlink(missing_ok=True)
        self.scheduler = Proc([PYTHON, "-m", "distributed.cli.dask_scheduler", "--host",
                               "127.0.0.1", "--port", "0", "--dashboard-address", ":0",
                               "--scheduler-file", str(self.file), *self.extra],
                              tmp / "scheduler.log", env=self.env)
        wait_for(lambda: self.file.exists() and self.file.stat().st_size > 0, 60,
                 f"the scheduler file ({self.scheduler.text()[-2000:]})")
        import json

        self.address = json.loads(self.file.read_text())["address"]
        self.workers: dict[str, Proc] = {}
        for _ in range(n_workers):
            self.add_worker()

    def add_worker(self) -> str:
        name = f"w{len(self.workers) + 1}"
        self.workers[name] = Proc(
            [PYTHON, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(self.file),
             "--nthreads", "1", "--memory-limit", "1GiB", "--name", name, "--no-nanny",
             "--dashboard-address", ":0", "--host", "127.0.0.1", *self.extra],
            self.tmp / f"{name}.log", env=self.env)
        return name

    def wait_workers(self, client: Any, n: int, timeout: float = 60) -> None:
        client.wait_for_workers(n, timeout=timeout)

    def kill_worker(self, name: str) -> None:
        self.workers[name].kill(signal.SIGKILL)
        self.workers[name].p.wait(10)

    def stop(self) -> None:
        for w in self.workers.values():
            w.stop()
        self.scheduler.stop()


def make_certs(d: Path) -> dict:
    """A CA and one certificate it signs (server + client auth, 127.0.0.1/localhost)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (x509.CertificateBuilder().subject_name(name("nldist test CA"))
          .issuer_name(name("nldist test CA")).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(name("nldist")).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH,
                                                  ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    (d / "ca.pem").write_bytes(ca.public_bytes(pem))
    (d / "cert.pem").write_bytes(cert.public_bytes(pem))
    (d / "key.pem").write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8,
                                                  serialization.NoEncryption()))
    return {"ca_file": str(d / "ca.pem"), "cert": str(d / "cert.pem"),
            "key": str(d / "key.pem")}
