"""What a cluster's processes may print: distributed's chatter kept quiet, one line on
Ctrl-C (then nothing from the teardown), and the records of the dashboard, of the workers'
failed tasks and of their memory (restarts, spilling) moved from the console to the run's
run.log; :func:`setup_worker` installs the workers' part on each local worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator


def quiet_distributed(level: int | None = None) -> None:
    """Keep distributed's own INFO chatter out of the job output (after it is imported)."""
    level = level if level is not None else max(logging.getLogger("nldist").getEffectiveLevel(),
                                                logging.WARNING)
    for name in list(logging.root.manager.loggerDict):
        if name.startswith(("distributed", "dask_jobqueue", "dask_kubernetes", "kr8s")):
            logging.getLogger(name).setLevel(level)



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
