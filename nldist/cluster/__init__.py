"""Dask client factory: LocalCluster, an existing scheduler, Slurm, Kubernetes, synchronous.

One job file runs everywhere; only ``cluster.address`` (or ``--cluster``) changes:

============================  =========================================================
``local`` (default)           a LocalCluster of worker processes on 127.0.0.1
``tcp://HOST:PORT``           an existing scheduler (``tls://`` with ``cluster.tls``)
``path/scheduler.json``       an existing scheduler, by its scheduler file
``slurm``                     dask-jobqueue ``SLURMCluster``: ``cluster.slurm.jobs`` Slurm
                              jobs, one Dask worker each (``pip install 'nldist[slurm]'``)
``k8s``                       dask-kubernetes operator ``KubeCluster``, or inside a DaskJob
                              pod the operator's scheduler (``pip install 'nldist[k8s]'``)
``synchronous``               no cluster, everything in this process (debugging)
============================  =========================================================

Optional backends are imported lazily, so ``pip install nldist`` alone runs locally; a
missing backend is a one-line :class:`~nldist.errors.NldistError` naming the install.

The package: :func:`connect` here (the one front door: which cluster an address names),
:mod:`~nldist.cluster.local` (a LocalCluster of worker processes, started with a deadline,
the driver's threads capped meanwhile), :mod:`~nldist.cluster.remote` (existing schedulers,
Slurm, Kubernetes, TLS, the optional backends) and :mod:`~nldist.cluster.console` (what the
cluster's processes may print: the one line on Ctrl-C, their records moved to run.log).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import dask

from nldist.cluster.console import (
    INTERRUPT_REPORTED,
    INTERRUPTED,
    dashboard_to_log,
    quiet_distributed,
    quiet_interrupt,
)
from nldist.cluster.local import driver_threads, local_cluster
from nldist.cluster.remote import (
    at_address,
    check_job_script,
    k8s_cluster,
    require,
    scheduler_file,
    slurm_cluster,
)
from nldist.errors import NldistError

#: the front door (the shells use these; the rest lives in the modules named above)
__all__ = ["INTERRUPTED", "INTERRUPT_REPORTED", "check_job_script", "connect",
           "dashboard_to_log", "require"]


@contextlib.contextmanager
def connect(cfg: Any, name: str = "nldist", log_file: str | None = None) -> Iterator[Any]:
    """Yield a connected ``distributed.Client`` (or None for ``synchronous``).

    Parameters
    ----------
    cfg : nldist.jobs.ClusterConfig
        ``address`` picks the cluster (see the module docstring); ``slurm``, ``k8s`` and
        ``tls`` hold the backend settings.
    name : str
        Job name, used for Slurm job and Kubernetes cluster names.
    log_file : str, optional
        Where the workers of a local cluster write the errors of failed tasks (the run's
        run.log) instead of the console (:func:`quiet_task_errors`); the driver reports the
        error itself, in one line.

    Yields
    ------
    distributed.Client or None
        Closed (and a cluster this function started torn down) on exit.
    """
    address = cfg.address.strip()
    if address == "synchronous":
        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    # a Client sets dask's global scheduler to 'dask.distributed'; one that fails to start
    # (or is torn down by an error) could leave it so, and every later computation in this
    # process would raise "Requested dask.distributed scheduler but no Client active"
    with dask.config.set(scheduler=dask.config.get("scheduler", None)):
        yield from _connect(cfg, address, name, log_file)


def _connect(cfg: Any, address: str, name: str, log_file: str | None) -> Iterator[Any]:
    """The body of :func:`connect` for a distributed cluster (a generator it delegates to)."""
    import distributed  # noqa: F401  (configures logging before quiet_distributed)

    quiet_distributed()
    if address == "local":
        busy = cfg.n_workers * cfg.threads_per_worker
        with dashboard_to_log(log_file), local_cluster(cfg, log_file) as client, \
                driver_threads(max(1, (os.cpu_count() or 1) - busy)), quiet_interrupt():
            yield client
    elif address == "slurm":
        with slurm_cluster(cfg, name) as client, quiet_interrupt():
            yield client
    elif address == "k8s":
        with k8s_cluster(cfg, name) as client, quiet_interrupt():
            yield client
    elif "://" in address:
        with at_address(address, cfg) as client, quiet_interrupt():
            yield client
    elif address.endswith(".json"):
        with scheduler_file(address, cfg) as client, quiet_interrupt():
            yield client
    else:
        raise NldistError(
            f"unknown cluster {address!r}; use local, slurm, k8s, synchronous, tcp://HOST:PORT "
            "or a scheduler file (*.json)"
        )
