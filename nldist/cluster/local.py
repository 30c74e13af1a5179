"""The local cluster: a LocalCluster of worker processes on 127.0.0.1, started within
``cluster.start_timeout`` (one line when its workers do not start), each worker set up
(:func:`nldist.cluster.console.setup_worker`), and the driver's BLAS/torch threads capped
while the workers share its cores.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

from nldist.cluster.console import memory_records_to_log, quiet_interrupt, setup_worker
from nldist.cluster.remote import security
from nldist.errors import NldistError

log = logging.getLogger("nldist")


@contextlib.contextmanager
def driver_threads(n: int) -> Iterator[None]:
    """Cap the driver's BLAS/OpenMP/torch threads while local workers share its cores.

    Oversubscribed cores make spinning BLAS and torch threads in the driver up to ~100x
    slower (measured: a relu2 job 354 s vs 11 s on 2 cores). An explicit OMP_NUM_THREADS
    set by the user wins.
    """
    if os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    from threadpoolctl import threadpool_limits

    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    os.environ["OMP_NUM_THREADS"] = str(n)  # read by torch if it is imported later
    try:
        with threadpool_limits(limits=n):
            if torch is not None:
                torch.set_num_threads(n)
            yield
    finally:
        os.environ.pop("OMP_NUM_THREADS", None)
        if torch is not None and before is not None:
            torch.set_num_threads(before)



@contextlib.contextmanager
def local_cluster(cfg: Any, log_file: str | None = None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    sec = security(cfg)
    kw: dict[str, Any] = {"security": sec, "protocol": "tls://"} if sec else {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(memory_records_to_log(log_file))  # (closed last)
        # (a Ctrl-C during the start is one line from the driver)
        with quiet_interrupt(), _workers_start(cfg), _workers_stderr_to(log_file):
            cluster = stack.enter_context(LocalCluster(
                n_workers=cfg.n_workers,
                threads_per_worker=cfg.threads_per_worker,
                processes=True,
                memory_limit=cfg.memory_limit,
                host="127.0.0.1",
                dashboard_address=":0",
                **kw,
            ))
            client = stack.enter_context(Client(cluster, security=sec))
            # on every worker, and on each one restarted later (a nanny restarts a worker
            # over its memory limit): Ctrl-C is the driver's, failed tasks go to run.log
            client.register_worker_callbacks(setup=functools.partial(setup_worker, log_file))
        log.info("LocalCluster: %d workers, dashboard %s", cfg.n_workers, client.dashboard_link)
        yield client


@contextlib.contextmanager
def _workers_stderr_to(log_file: str | None) -> Iterator[None]:
    """While the local cluster starts, file descriptor 2 is ``log_file`` (run.log), so the
    worker processes spawned meanwhile inherit it as their stderr; the driver's own writes
    through ``sys.stderr`` still reach the console (a file object on a copy of the original
    descriptor). A Ctrl-C reaches the whole foreground process group: a worker in which
    Python is still starting then prints "Fatal Python error: init_import_site" and a
    traceback — into run.log now (/dev/null while --out does not exist yet), not under the
    driver's one line. (Blocking SIGINT in the spawned workers instead left the event loop's
    threads with SIGINT blocked and a worker restarted by its nanny never came back.)
    Without a log file nothing changes."""
    if not log_file:
        yield
        return
    try:  # (a run's --out may not exist yet: nothing is created for this)
        target = os.open(log_file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError:
        target = os.open(os.devnull, os.O_WRONLY)
    sys.stderr.flush()
    saved = os.dup(2)
    old = sys.stderr
    sys.stderr = open(  # noqa: SIM115 - closed below
        os.dup(saved), "w", buffering=1, encoding=getattr(old, "encoding", None) or "utf-8",
        errors="backslashreplace")
    os.dup2(target, 2)
    os.close(target)
    try:
        yield
    finally:
        console = sys.stderr
        with contextlib.suppress(OSError, ValueError):
            console.flush()
        os.dup2(saved, 2)
        os.close(saved)
        if sys.stderr is console:  # (not replaced meanwhile)
            sys.stderr = old
        with contextlib.suppress(OSError, ValueError):
            console.close()


@contextlib.contextmanager
def _workers_start(cfg: Any) -> Iterator[None]:
    """One line when the local cluster's worker processes do not start: within
    ``cfg.start_timeout`` seconds (a worker process that hangs while starting is waited for
    forever by distributed), or when distributed gives up ("Nanny failed to start", 200
    lines of traceback): the deepest cause, and what to check."""
    timeout = float(getattr(cfg, "start_timeout", 120.0))
    lock, late, done = threading.Lock(), threading.Event(), threading.Event()
    before = _spawned()

    def expire() -> None:
        with lock:
            if not done.is_set():
                late.set()
                # the workers hanging in their start: distributed never ends them; killed,
                # their nannies fail the start (whatever the driver's SIGINT disposition)
                _kill_spawned(before)

    timer = threading.Timer(timeout, expire)
    timer.daemon = True
    timer.start()
    try:
        yield
        with lock:
            done.set()
    except (NldistError, KeyboardInterrupt):
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the start of the cluster raised
        atexit.register(_silence_stderr)  # after distributed's own atexit close (LIFO)
        if late.is_set():
            raise NldistError(
                f"the local cluster's {cfg.n_workers} worker process(es) did not start within "
                f"{timeout:g} s (cluster.start_timeout); check that this Python starts a "
                "worker (`python -c 'import distributed, nldist'`) and the machine's load, "
                "raise cluster.start_timeout, or use --cluster synchronous") from None
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        text = str(cause).strip().splitlines()[0][:160] if str(cause).strip() else ""
        raise NldistError(
            f"the local cluster's {cfg.n_workers} worker process(es) did not start "
            f"({type(cause).__name__}{': ' + text if text else ''}); check that this Python "
            "starts a worker (`python -c 'import distributed, nldist'`), the machine's free "
            f"memory for cluster.n_workers x cluster.memory_limit ({cfg.n_workers} x "
            f"{cfg.memory_limit}), or use --cluster synchronous") from None
    finally:
        timer.cancel()


def _spawned() -> set[int]:
    """Process ids of this process's spawned multiprocessing children (worker processes;
    not the resource tracker, which ends with this process — killed, it would be started
    again and complain about every semaphore)."""
    import psutil  # (a dependency of distributed)

    found = set()
    for child in psutil.Process().children(recursive=True):
        with contextlib.suppress(psutil.Error):
            if "--multiprocessing-fork" in child.cmdline():
                found.add(child.pid)
    return found


def _kill_spawned(keep: set[int]) -> None:
    """Kill the spawned children of this process not in ``keep`` (:func:`_spawned`)."""
    for pid in _spawned() - keep:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def _silence_stderr() -> None:
    """At exit after a failed start of a local cluster (its one line printed): distributed's
    atexit close of the half-started cluster asserts on workers still starting, a
    20-line traceback that says nothing more — stderr goes to /dev/null first."""
    with contextlib.suppress(OSError):
        sys.stderr.flush()
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
