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
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dask

from nldist.errors import NldistError

log = logging.getLogger("nldist")

#: extra name and pip package of each optional backend module
BACKENDS = {
    "dask_jobqueue": ("slurm", "dask-jobqueue"),
    "dask_kubernetes.operator": ("k8s", "dask-kubernetes"),
}


def quiet_distributed(level: int | None = None) -> None:
    """Keep distributed's own INFO chatter out of the job output (after it is imported)."""
    level = level if level is not None else max(logging.getLogger("nldist").getEffectiveLevel(),
                                                logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "dask_jobqueue", "dask_kubernetes", "kr8s")):
            logging.getLogger(name).setLevel(level)


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


#: the one line printed on Ctrl-C (before the cluster is torn down)
INTERRUPTED = "error: interrupted; re-run the same command to resume"
#: set once :func:`quiet_interrupt` has printed :data:`INTERRUPTED` (the CLI then does not)
INTERRUPT_REPORTED = threading.Event()


@contextlib.contextmanager
def quiet_interrupt() -> Iterator[None]:
    """On Ctrl-C inside the block: print :data:`INTERRUPTED` at once, then send stderr to
    /dev/null for the rest of the process, so that tearing down the cluster (cancelled
    tasks, closed comms, asyncio and tornado complaints) adds nothing after that line.
    The KeyboardInterrupt propagates (the CLI exits 130). An interrupted gather's
    ``AllExit`` that asyncio logs as "Task exception was never retrieved" — sometimes before
    the KeyboardInterrupt reaches this block — is dropped while the block runs."""
    guard = _DropAllExit()
    aio = logging.getLogger("asyncio")
    aio.addFilter(guard)
    try:
        yield
    except KeyboardInterrupt:
        sys.stderr.write(INTERRUPTED + "\n")
        sys.stderr.flush()
        for name in ("distributed", "asyncio", "tornado", "bokeh"):
            logging.getLogger(name).setLevel(logging.CRITICAL + 1)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - lives until the process ends
        INTERRUPT_REPORTED.set()
        raise
    finally:
        aio.removeFilter(guard)


class _DropAllExit(logging.Filter):
    """Drops asyncio's report of a gather task that ended with ``distributed``'s
    ``AllExit`` (what an interrupted ``Client.gather`` leaves behind; never an error of the
    job)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not (type(exc).__name__ == "AllExit" or "AllExit" in record.getMessage())


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
        with dashboard_to_log(log_file), _local(cfg, log_file) as client, \
                driver_threads(max(1, (os.cpu_count() or 1) - busy)), quiet_interrupt():
            yield client
    elif address == "slurm":
        with _slurm(cfg, name) as client, quiet_interrupt():
            yield client
    elif address == "k8s":
        with _k8s(cfg, name) as client, quiet_interrupt():
            yield client
    elif "://" in address:
        with _at_address(address, cfg) as client, quiet_interrupt():
            yield client
    elif address.endswith(".json"):
        with _scheduler_file(address, cfg) as client, quiet_interrupt():
            yield client
    else:
        raise NldistError(
            f"unknown cluster {address!r}; use local, slurm, k8s, synchronous, tcp://HOST:PORT "
            "or a scheduler file (*.json)"
        )


@contextlib.contextmanager
def _local(cfg: Any, log_file: str | None = None) -> Iterator[Any]:
    from distributed import Client, LocalCluster

    sec = security(cfg)
    kw: dict[str, Any] = {"security": sec, "protocol": "tls://"} if sec else {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(memory_records_to_log(log_file))  # (closed last)
        # (a Ctrl-C during the start is one line from the driver)
        with quiet_interrupt(), _workers_start(cfg):
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


#: the loggers of the dashboard's web server, which runs in this process with a local
#: cluster's scheduler
#: the loggers whose records are moved; distributed's logging config gives several of them
#: their own console handler with ``propagate = False``, so each is redirected itself
DASHBOARD_LOGGERS = ("tornado", "tornado.application", "tornado.access", "tornado.general",
                     "bokeh")
dashboard_log = logging.getLogger("nldist.dashboard")


@contextlib.contextmanager
def dashboard_to_log(log_file: str | None = None) -> Iterator[None]:
    """While the block runs (a local cluster, its teardown included), what tornado and bokeh
    log — a browser tab closed in the middle of a dashboard update makes them log a
    20-line traceback (an AssertionError, a closed websocket) that says nothing about the
    job — goes to ``log_file`` (the run's run.log) as a DEBUG line with its traceback, and
    to the ``nldist.dashboard`` logger at DEBUG (on the console with ``-vv`` only), never
    to the console otherwise. asyncio's reports of exceptions raised by tornado or bokeh
    (an unretrieved websocket write) are moved the same way."""
    handler = _DashboardToFile(log_file)
    moved = _DashboardRecords(handler)
    saved = []
    for name in DASHBOARD_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.propagate, list(logger.handlers)))
        logger.handlers = [handler]  # not distributed's console handler
        logger.propagate = False
    aio = logging.getLogger("asyncio")
    aio.addFilter(moved)
    try:
        yield
    finally:
        aio.removeFilter(moved)
        for logger, propagate, handlers in saved:
            logger.handlers = handlers
            logger.propagate = propagate


class _DashboardToFile(logging.Handler):
    """Appends a record (with its traceback) to a file as a DEBUG line, and passes it on to
    ``nldist.dashboard`` at DEBUG."""

    def __init__(self, path: str | None) -> None:
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # noqa: BLE001 - a third-party record that cannot be formatted
            text = str(record.msg)
        dashboard_log.debug("%s (%s): %s", record.name, record.levelname,
                            record.getMessage())
        _append_line(self.path, f"DEBUG dashboard {record.name} ({record.levelname}): {text}")


class _DashboardRecords(logging.Filter):
    """asyncio's records of an exception raised in tornado or bokeh go to the handler."""

    def __init__(self, handler: logging.Handler) -> None:
        super().__init__()
        self.handler = handler

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__module__.startswith(DASHBOARD_LOGGERS):
            self.handler.handle(record)
            return False
        return True


def setup_worker(log_file: str | None = None) -> None:
    """Run on each local worker when it starts: :func:`ignore_sigint`,
    :func:`quiet_task_errors` and the worker's memory records (paused, spilling, unmanaged
    memory high) to ``log_file`` (the workers share the driver's console)."""
    ignore_sigint()
    quiet_task_errors(log_file)
    if log_file:
        _move_records(WORKER_MEMORY_LOGGERS, log_file)


#: a local worker's loggers of its memory (pausing, spilling, unmanaged memory high)
WORKER_MEMORY_LOGGERS = ("distributed.worker.memory", "distributed.spill")
#: the loggers, in the driver, of a local cluster's nannies and scheduler: a worker over
#: its memory limit restarted, the tasks its death lost, a task given up (KilledWorker)
DRIVER_MEMORY_LOGGERS = ("distributed.nanny", "distributed.nanny.memory",
                         "distributed.scheduler")


@contextlib.contextmanager
def memory_records_to_log(log_file: str | None) -> Iterator[None]:
    """While a local cluster runs (its teardown included), what its nannies and scheduler
    log about workers over their memory limit (restarts, lost tasks, a task given up) goes
    to ``log_file`` (the run's run.log), not the console: the driver says what failed in
    one line (a KilledWorker is one line naming cluster.memory_limit). Without a log file
    the records stay on the console."""
    if not log_file:
        yield
        return
    moved = _move_records(DRIVER_MEMORY_LOGGERS, log_file)
    try:
        yield
    finally:
        for name, f in moved:
            logging.getLogger(name).removeFilter(f)


def _move_records(names: tuple[str, ...], path: str) -> list[tuple[str, logging.Filter]]:
    """Filters on the loggers ``names`` appending every record to ``path`` instead of the
    console; returns them (logger name, filter)."""
    added = []
    for name in names:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _RecordsToFile) for f in logger.filters):
            f = _RecordsToFile(path)
            logger.addFilter(f)
            added.append((name, f))
    return added


class _RecordsToFile(logging.Filter):
    """Moves every record of its logger to a file (appended, with the process id)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        _append_line(self.path, f"{record.levelname} {record.name} ({os.getpid()}): "
                                f"{record.getMessage()}")
        return False


def ignore_sigint() -> None:
    """Run on each local worker: Ctrl-C (SIGINT to the terminal's process group) is the
    driver's to handle — it tears the cluster down — not a reason for every worker process
    to print its own KeyboardInterrupt traceback."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    # tasks cancelled by the driver's teardown are expected, not worth a warning line
    logging.getLogger("distributed.worker.state_machine").setLevel(logging.ERROR)
    # nor is a peer's connection that the teardown closed in the middle of a transfer
    # (handler filters: the records come from distributed's child loggers)
    for h in logging.getLogger("distributed").handlers + logging.getLogger().handlers:
        if not any(isinstance(f, _DropClosedPeer) for f in h.filters):
            h.addFilter(_DropClosedPeer())


def quiet_task_errors(log_file: str | None = None) -> None:
    """Run on each local worker: distributed's "Compute Failed" report of a task that
    raised (the error and its traceback) goes to ``log_file`` (the run's run.log) when
    given, never to the console the workers share with the driver — the driver prints the
    error as its one line."""
    worker = logging.getLogger("distributed.worker")
    if not any(isinstance(f, _TaskErrorsToFile) for f in worker.filters):
        worker.addFilter(_TaskErrorsToFile(log_file))


class _TaskErrorsToFile(logging.Filter):
    """Moves "Compute Failed" records from the console to a file (appended; dropped when
    there is none or it cannot be written)."""

    def __init__(self, path: str | None) -> None:
        super().__init__()
        self.path = path

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.getMessage().startswith("Compute Failed"):
            return True
        _append_line(self.path, f"worker {os.getpid()}: {record.getMessage()}")
        return False


def _append_line(path: str | None, text: str) -> None:
    """Append ``text`` to the run's log file with a timestamp (nothing when there is none or
    it cannot be written: a moved log line never fails a run)."""
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
    except OSError:
        pass


class _DropClosedPeer(logging.Filter):
    """Drops a worker's report of a transfer from a peer whose connection closed
    (``failed during get data`` with CommClosedError / ConnectionResetError): what the
    teardown of an interrupted run leaves behind, never the job's error (a lost task's
    error reaches the driver as an exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        closed = type(exc).__name__ in ("CommClosedError", "ConnectionResetError",
                                        "StreamClosedError", "BrokenPipeError")
        return not (closed or "failed during get data" in record.getMessage())


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
def _at_address(address: str, cfg: Any) -> Iterator[Any]:
    with _client_at(address, cfg) as client:
        _wait_for_workers(client, address, float(getattr(cfg, "connect_timeout", 20.0)))
        yield client


@contextlib.contextmanager
def _scheduler_file(path: str, cfg: Any) -> Iterator[Any]:
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
def _slurm(cfg: Any, name: str) -> Iterator[Any]:
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
def _k8s(cfg: Any, name: str) -> Iterator[Any]:
    inside = os.environ.get("DASK_SCHEDULER_ADDRESS")
    if inside:  # a DaskJob's job pod: the operator started the scheduler for us
        log.info("DaskJob pod: using the operator's scheduler %s", inside)
        with _at_address(inside, cfg) as client:
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
