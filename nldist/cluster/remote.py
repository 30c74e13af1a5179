"""Clients of clusters nldist does not start on this machine: an existing scheduler (by
address, fail-fast probe, or scheduler file), Slurm (dask-jobqueue) and Kubernetes
(dask-kubernetes); the optional backends imported on demand (:func:`require`, a one-line
install hint when missing) and the mutual-TLS :func:`security` shared with the local
cluster.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nldist.errors import NldistError

log = logging.getLogger("nldist")

#: extra name and pip package of each optional backend module
BACKENDS = {
    "dask_jobqueue": ("slurm", "dask-jobqueue"),
    "dask_kubernetes.operator": ("k8s", "dask-kubernetes"),
}



def require(module: str) -> Any:
    """Import an optional backend module or raise a one-line install hint.

    Parameters
    ----------
    module : str
        ``dask_jobqueue`` or ``dask_kubernetes.operator``.

    Returns
    -------
    The imported module.
    """
    extra, package = BACKENDS[module]
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise NldistError(
            f"cluster backend {extra!r} needs {package} ({exc}); install it with "
            f"pip install 'nldist[{extra}]'"
        ) from None


def security(cfg: Any) -> Any:
    """A ``distributed.Security`` for ``cfg.tls`` (None when TLS is off).

    The same certificate and key serve the scheduler, the workers and the client; every
    peer must present a certificate signed by ``ca_file`` (mutual TLS).
    """
    tls = getattr(cfg, "tls", None)
    if tls is None:
        return None
    from distributed.security import Security

    for label, f in (("ca_file", tls.ca_file), ("cert", tls.cert), ("key", tls.key)):
        if f is not None and not Path(f).is_file():
            raise NldistError(f"cluster.tls.{label} {f!r} not found; point it at a PEM file")
    roles = ("client", "scheduler", "worker")
    kw: dict[str, Any] = {f"tls_{r}_cert": tls.cert for r in roles}
    if tls.key:
        kw.update({f"tls_{r}_key": tls.key for r in roles})
    return Security(tls_ca_file=tls.ca_file, require_encryption=True, **kw)



def _probe(address: str, timeout: float) -> None:
    """Fail fast, in one line, when ``tcp://HOST:PORT`` is not a Dask scheduler.

    A Dask scheduler speaks first on a new connection (its handshake), so something that
    accepts the connection and then stays silent for ``timeout`` seconds (an HTTP server, the
    dashboard port) is not one; distributed's own client would wait there far past its
    timeout.
    """
    hostport = address.split("://", 1)[1]
    host, _, port = hostport.rpartition(":")
    try:
        sock = socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)),
                                        timeout=timeout)
    except ValueError:
        raise NldistError(f"cannot read the scheduler address {address!r}; write "
                          "tcp://HOST:PORT") from None
    except OSError as exc:
        raise NldistError(f"cannot reach the Dask scheduler at {address} ({exc.strerror or exc});"
                          " start it or fix cluster.address") from None
    with sock:
        try:
            head = sock.recv(16)
        except TimeoutError:
            raise NldistError(
                f"{address} accepts connections but did not answer as a Dask scheduler within "
                f"{timeout:g} s (the dashboard port or another server?); give the scheduler's "
                "address, e.g. tcp://HOST:8786") from None
        except OSError as exc:
            raise NldistError(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                              "or fix cluster.address") from None
    if not head or head[:4] in (b"HTTP", b"SSH-", b"<!DO", b"<htm"):
        what = "closed the connection" if not head else f"answered {head[:8]!r}"
        raise NldistError(f"{address} is not a Dask scheduler (it {what}); give the "
                          "scheduler's address, e.g. tcp://HOST:8786")


def _client_at(address: str, cfg: Any) -> Any:
    from distributed import Client

    sec = security(cfg)
    if address.startswith("tls://") and sec is None:
        raise NldistError(f"{address} is a TLS scheduler; set cluster.tls (ca_file, cert, key)")
    timeout = float(getattr(cfg, "connect_timeout", 20.0))
    if address.startswith("tcp://"):
        _probe(address, timeout)
    try:
        return Client(address, timeout=f"{getattr(cfg, 'connect_timeout', 20.0)}s",
                      security=sec)
    except (OSError, TimeoutError) as exc:
        raise NldistError(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                          "or fix cluster.address") from None
    except Exception as exc:  # noqa: BLE001 - whatever a non-scheduler's bytes decode into
        msg = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
        raise NldistError(f"{address} is not a Dask scheduler (its answer could not be read: "
                          f"{type(exc).__name__}{': ' + msg if msg else ''}); give the "
                          "scheduler's address, e.g. tcp://HOST:8786") from None


def _wait_for_workers(client: Any, address: str, timeout: float) -> None:
    """One line instead of a silent wait when the scheduler has no worker."""
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise NldistError(f"the Dask scheduler at {address} has no workers after {timeout:g} s; "
                          f"start some (`dask worker {address}`) or raise "
                          "cluster.connect_timeout") from None


@contextlib.contextmanager
def at_address(address: str, cfg: Any) -> Iterator[Any]:
    with _client_at(address, cfg) as client:
        _wait_for_workers(client, address, float(getattr(cfg, "connect_timeout", 20.0)))
        yield client


@contextlib.contextmanager
def scheduler_file(path: str, cfg: Any) -> Iterator[Any]:
    if not Path(path).exists():
        raise NldistError(f"scheduler file {path!r} not found; start `dask scheduler "
                          f"--scheduler-file {path}` first")
    try:
        address = json.loads(Path(path).read_text())["address"]
    except (ValueError, KeyError, TypeError):
        raise NldistError(f"{path} is not a Dask scheduler file (no 'address'); point at the "
                          "file `dask scheduler --scheduler-file` wrote") from None
    with _client_at(address, cfg) as client:
        yield client


@contextlib.contextmanager
def slurm_cluster(cfg: Any, name: str) -> Iterator[Any]:
    jobqueue = require("dask_jobqueue")
    from distributed import Client

    if shutil.which("sbatch") is None:
        raise NldistError("sbatch not found on PATH; run on a Slurm login node (or start "
                          "cluster/slurm/up.sh and source its env.sh)")
    s = cfg.slurm
    logs = s.log_directory or os.path.join(tempfile.gettempdir(), "nldist-slurm-logs")
    Path(logs).mkdir(parents=True, exist_ok=True)
    sec = security(cfg)
    kw: dict[str, Any] = {"security": sec, "protocol": "tls://"} if sec else {}
    try:
        cluster = jobqueue.SLURMCluster(
            job_name=f"nldist-{name}"[:64],
            cores=s.cores,
            processes=1,
            memory=s.memory,
            walltime=s.walltime,
            queue=s.partition,
            account=s.account,
            interface=s.interface,
            job_extra_directives=list(s.job_extra_directives),
            job_script_prologue=list(s.job_script_prologue),
            python=s.python or sys.executable,
            log_directory=logs,
            scheduler_options={"dashboard_address": ":0"},
            **kw,
        )
    except ValueError as exc:  # e.g. an unknown interface
        raise NldistError(f"cannot start the Slurm cluster: {exc}; fix cluster.slurm") from None
    with cluster:
        script = cluster.job_script()
        log.info("SLURMCluster job script:\n%s", script)
        check_job_script(script, s.timeout)
        cluster.scale(jobs=s.jobs)
        with Client(cluster, security=sec) as client:
            try:
                client.wait_for_workers(1, timeout=s.timeout)
            except TimeoutError:
                raise NldistError(
                    f"no Slurm worker started within {s.timeout:g} s; check `squeue` and the "
                    f"job logs in {logs} (partition, account, memory)"
                ) from None
            log.info("SLURMCluster: %d job(s) requested, dashboard %s", s.jobs,
                     client.dashboard_link)
            yield client


def check_job_script(script: str, timeout: float = 60.0) -> None:
    """Let Slurm validate the worker job script before anything waits for it
    (``sbatch --test-only``: partition, account, memory, time limit — nothing is queued).

    Raises
    ------
    NldistError
        With sbatch's own first error line, at once, instead of waiting ``timeout`` seconds
        for workers that will never start.
    """
    with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
        f.write(script)
    try:
        proc = subprocess.run(["sbatch", "--test-only", f.name], capture_output=True,
                              text=True, timeout=min(60.0, timeout))
    except subprocess.TimeoutExpired:
        raise NldistError("sbatch --test-only did not answer within 60 s; is slurmctld up? "
                          "(check `sinfo`)") from None
    finally:
        os.unlink(f.name)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        first = next((ln for ln in lines if "error" in ln.lower()), lines[0] if lines else "")
        if "contact slurm controller" in first:
            raise NldistError(f"Slurm is not answering: {first}; is slurmctld running? "
                              "(check `sinfo`; locally: cluster/slurm/up.sh)")
        raise NldistError(f"Slurm refuses the worker job: {first}; fix cluster.slurm "
                          "(partition, account, memory, walltime, job_extra_directives)")


@contextlib.contextmanager
def k8s_cluster(cfg: Any, name: str) -> Iterator[Any]:
    inside = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if inside:  # a DaskJob's job pod: the operator started the scheduler for us
        log.info("DaskJob pod: using the operator's scheduler %s", inside)
        with at_address(inside, cfg) as client:
            yield client
        return
    operator = require("dask_kubernetes.operator")
    from distributed import Client

    k = cfg.k8s
    _check_kube_api()
    try:
        cluster = operator.KubeCluster(
            name=k.name or _dns_name(f"nldist-{name}"),
            namespace=k.namespace,
            image=k.image,
            n_workers=k.n_workers,
            resources=k.resources.model_dump(),
            env=dict(k.env),
            shutdown_on_close=True,
            resource_timeout=int(k.timeout),
            quiet=True,
        )
    except Exception as exc:  # noqa: BLE001 - kr8s/kubernetes raise many types
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NldistError(
            f"cannot create a Kubernetes DaskCluster ({type(exc).__name__}: {msg[:200]}); "
            "check `kubectl get daskclusters` works (KUBECONFIG) and the dask-kubernetes "
            "operator is installed"
        ) from None
    with cluster, Client(cluster) as client:
        try:
            client.wait_for_workers(1, timeout=k.timeout)
        except TimeoutError:
            raise NldistError(f"no Kubernetes worker started within {k.timeout:g} s; check "
                              "`kubectl get pods` (image, resources)") from None
        yield client


def _check_kube_api() -> None:
    """Fail fast, on one line, when no Kubernetes API is configured or reachable."""
    import kr8s

    try:
        kr8s.api().version()
    except Exception as exc:  # noqa: BLE001 - credentials, DNS, TLS, HTTP errors
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NldistError(
            f"no usable Kubernetes API ({type(exc).__name__}: {msg[:200]}); set KUBECONFIG or "
            "run inside the cluster, or submit cluster/k8s/daskjob.yaml with kubectl"
        ) from None


def _dns_name(text: str) -> str:
    """A Kubernetes object name (RFC 1123 label) derived from text."""
    out = "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")
    return (out or "nldist")[:40].rstrip("-")
