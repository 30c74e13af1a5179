"""Dask client factory: embedded LocalCluster, an existing scheduler, or synchronous.

Optional backends are imported lazily, so ``pip install nldist`` alone runs locally.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nldist.errors import NldistError

log = logging.getLogger("nldist")


def quiet_distributed(level: int | None = None) -> None:
    """Keep distributed's own INFO chatter out of the job output (after it is imported)."""
    level = level if level is not None else max(logging.getLogger("nldist").getEffectiveLevel(),
                                                logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("distributed"):
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def connect(cfg: Any) -> Iterator[Any]:
    """Yield a connected ``distributed.Client`` (or None for ``synchronous``).

    Parameters
    ----------
    cfg : nldist.jobs.ClusterConfig
        ``address``: ``local`` (LocalCluster on 127.0.0.1, worker processes),
        ``tcp://HOST:PORT`` / ``tls://HOST:PORT`` (existing scheduler), a scheduler-file
        path (``*.json``), or ``synchronous`` (no cluster; for debugging).
    """
    address = cfg.address
    if address == "synchronous":
        import dask

        with dask.config.set(scheduler="synchronous"):
            yield None
        return
    from distributed import Client, LocalCluster

    quiet_distributed()
    if address == "local":
        with LocalCluster(
            n_workers=cfg.n_workers,
            threads_per_worker=cfg.threads_per_worker,
            processes=True,
            memory_limit=cfg.memory_limit,
            host="127.0.0.1",
            dashboard_address=":0",
        ) as cluster, Client(cluster) as client:
            log.info("LocalCluster: %d workers, dashboard %s", cfg.n_workers, client.dashboard_link)
            yield client
        return
    if address.startswith(("tcp://", "tls://", "inproc://", "ucx://")):
        try:
            client = Client(address, timeout="20s")
        except OSError as exc:
            raise NldistError(f"cannot reach the Dask scheduler at {address} ({exc}); start it "
                              "or fix cluster.address") from None
        with client:
            yield client
        return
    if address.endswith(".json"):
        if not Path(address).exists():
            raise NldistError(f"scheduler file {address!r} not found; start `dask scheduler "
                              f"--scheduler-file {address}` first")
        with Client(scheduler_file=address, timeout="20s") as client:
            yield client
        return
    raise NldistError(
        f"unknown cluster {address!r}; use local, synchronous, tcp://HOST:PORT or a scheduler "
        "file (*.json)"
    )
