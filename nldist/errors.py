"""Errors raised for bad input.

Every error nldist raises for a user mistake is an :class:`NldistError`: a one-line
message that says what is wrong and how to fix it. The CLI prints it as
``error: <message>`` and exits with status 2.
"""

from __future__ import annotations

import re


class NldistError(ValueError):
    """A user-facing error with a one-line message naming the fix."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(str(message).split()))


class BadBlock(Exception):
    """A persisted dual block failed its check (the reason is the message); it is rebuilt."""


#: exception class names (botocore, aiobotocore, aiohttp, gcsfs, adlfs) that mean an object
#: store's endpoint cannot be reached, or that no credentials were found
_UNREACHABLE = {"EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ClientConnectorError", "ServerDisconnectedError", "ProxyConnectionError",
                "ReadTimeoutError", "ServiceRequestError"}
_NO_CREDENTIALS = {"NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
                   "UnauthorizedSSOTokenError", "ProfileNotFound", "DefaultCredentialsError",
                   "ClientAuthenticationError", "InvalidAccessKeyId", "SignatureDoesNotMatch"}


def storage_problem(exc: BaseException) -> str | None:
    """``"endpoint"`` when ``exc`` (or an exception it came from) says an object store's
    endpoint could not be reached, ``"credentials"`` when none were found or they were
    refused, else None. Recognized by class name, so that no storage library is imported."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        name = type(e).__name__
        if name in _NO_CREDENTIALS or any(n in str(e) for n in ("InvalidAccessKeyId",
                                                               "SignatureDoesNotMatch")):
            return "credentials"
        if name in _UNREACHABLE:
            return "endpoint"
        e = e.__cause__ or e.__context__
    return None


def numeric_breakdown(exc: BaseException) -> bool:
    """Whether ``exc`` is a numeric breakdown of the linear algebra (NumPy's LinAlgError:
    eigenvalues or a factorization that did not converge, a singular matrix; SciPy's
    "must not contain infs or NaNs"): almost always overflowing, unstandardized data."""
    name = type(exc).__name__
    return name in ("LinAlgError", "FloatingPointError") or (
        isinstance(exc, ValueError) and "infs or NaNs" in str(exc))


def out_of_memory(exc: BaseException) -> str | None:
    """One line for a task that ran out of memory (None: ``exc`` is not that): a MemoryError
    raised in a task, or distributed's KilledWorker — every worker that ran the task died
    (its nanny restarts a worker over its memory limit, or the process crashed) until the
    scheduler gave up. Recognized by class name, so that distributed is not imported."""
    name = type(exc).__name__
    fix = ("raise cluster.memory_limit, lower dataset.chunk_rows, or choose a smaller model or "
           "a sketch (sketch: {cols: 512}); `--dry-run` prints the memory bound per task")
    if name == "KilledWorker":
        task = getattr(exc, "task", None) or (exc.args[0] if exc.args else "?")
        task = str(task).strip("'\"()").split("'")[0]  # ('name-token', 0) -> name-token
        task = re.sub(r"-([0-9a-f]{32}|[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12})$", "",
                      task)[:80]
        return (f"the workers died running task {task} (each one that ran it: over its memory "
                f"limit, or a crash; their reports are in the run's run.log), and dask gave up; "
                f"{fix}")
    if isinstance(exc, MemoryError):
        detail = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else "no detail"
        return f"out of memory ({detail}); {fix}"
    return None
