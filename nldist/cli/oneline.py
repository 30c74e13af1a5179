"""Every user error as one line ``error: ...`` on stderr with exit status 2: nldist's own
errors, and OS, object-storage, numeric and out-of-memory failures with their fix (Ctrl-C:
one line, status 130; a closed pipe on stdout: quiet, status 141). Other exceptions
propagate with their traceback.
"""

from __future__ import annotations

import errno
import os
import sys
import warnings
from collections.abc import Callable
from functools import wraps
from typing import Any

import typer

from nldist.cli.fronts import cluster_mod
from nldist.errors import NldistError, numeric_breakdown, out_of_memory, storage_problem

#: the object-storage URLs the current command reads or writes (named by a storage error)
_URLS: list[str] = []


def note_urls(*paths: Any) -> None:
    """Remember the URLs among ``paths`` for the one line of a storage error."""
    _URLS.extend(str(p) for p in paths if p is not None and "://" in str(p)
                 and not str(p).startswith(("file://", "tcp://", "tls://")))


def one_line_errors(fn: Callable) -> Callable:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        _URLS.clear()
        with warnings.catch_warnings(record=True) as caught:
            try:
                result = fn(*args, **kwargs)
            except NldistError as exc:
                typer.echo(f"error: {exc}", err=True)
                raise typer.Exit(2) from None
            except KeyboardInterrupt:
                if not cluster_mod.INTERRUPT_REPORTED.is_set():  # else printed already
                    typer.echo(cluster_mod.INTERRUPTED, err=True)
                raise typer.Exit(130) from None
            except (typer.Exit, typer.Abort):
                raise
            except BrokenPipeError:
                # the reader went away (`nldist example --list | head`): stop quietly, as a
                # process killed by SIGPIPE would (status 128 + 13), and keep the
                # interpreter's final flush of stdout from failing again
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, sys.stdout.fileno())
                raise typer.Exit(141) from None
            except Exception as exc:
                line = _error_line(exc)
                if line is None:
                    raise
                # the warnings that led here (overflow in matmul, ...) are said by the line
                typer.echo(f"error: {line}", err=True)
                raise typer.Exit(2) from None
        for w in caught:  # a run that worked: its warnings, as Python would have shown them
            warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        return result

    return wrapper


def _error_line(exc: Exception) -> str | None:
    """One line for an OS, object-storage or numeric failure (None: not one of those)."""
    problem = storage_problem(exc)
    where = ", ".join(dict.fromkeys(_URLS)) or "the object store"
    detail = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    if problem == "endpoint":
        return (f"cannot reach the object store for {where} ({type(exc).__name__}: {detail}); "
                "check the endpoint setting (AWS_ENDPOINT_URL, or endpoint_url in the fsspec "
                "config) and that the server is up")
    if problem == "credentials":
        return (f"no valid credentials for {where} ({type(exc).__name__}); set the "
                "credentials setting (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
                "or key/secret in the fsspec config)")
    if numeric_breakdown(exc):
        return (f"numeric breakdown ({type(exc).__name__}: {detail or 'no detail'}): the "
                "features or the target likely hold unstandardized or huge values; standardize "
                "them (dataset.standardize: true and standardize_target: true, or `nldist "
                "ingest --standardize --standardize-target`) or rescale the columns")
    if (memory := out_of_memory(exc)) is not None:
        return memory
    if isinstance(exc, FileNotFoundError):
        return f"file not found: {exc.filename or exc}; check the path"
    if isinstance(exc, OSError):
        return _os_error(exc)
    return None


#: what to do about an OS error, by errno name
_OS_FIXES = {
    "ENOSPC": "free disk space or choose another --out",
    "EDQUOT": "free disk space (quota) or choose another --out",
    "EACCES": "check the permissions, or choose another --out",
    "EPERM": "check the permissions, or choose another --out",
    "EROFS": "the file system is read-only; choose another --out",
    "EISDIR": "give a file, not a directory",
    "ENOTDIR": "a path component is a file, not a directory; check the path",
    "EEXIST": "remove it or choose another path",
    "ENOTEMPTY": "remove it or choose another path",
}


def _os_error(exc: OSError) -> str:
    """One line for an OS error: what failed, on which path, and the fix."""
    name = errno.errorcode.get(exc.errno or 0, "")
    what = exc.strerror or type(exc).__name__
    where = f": {exc.filename}" if exc.filename else ""
    fix = _OS_FIXES.get(name, "check the path and the disk")
    return f"{what}{where}; {fix}"
