"""Object storage through fsspec: paths that may be URLs, and bounded waits on ``s3://``.

Every path nldist accepts (a source, the Zarr dataset, ``--out``, θ and model files) goes
through :func:`as_path`: a plain path (or ``file://`` URL) stays a :class:`pathlib.Path`,
anything else (``s3://``, ``gs://``, ``az://``, ``memory://``) becomes a
:class:`upath.UPath` on its fsspec file system, which offers the same ``/``, ``exists``,
``read_text``, ``open``, ... The few operations pathlib does not give an object store are
here: :func:`rmtree`, :func:`write_bytes_atomic` (a temporary name and a rename on local
disk; one PUT, which S3 makes visible whole or not at all, on an object store) and the
Zarr entry points :func:`open_group` / :func:`open_array` (storage options attached).

botocore's defaults (60 s connect and read timeouts, several retries) and s3fs's own retries
make an endpoint that accepts connections but never answers hang a job for minutes before
its one error line. :func:`storage_options` gives every fsspec call nldist makes for a URL
(listing, fingerprints, schema checks, the workers' reads through dask) timeouts of
:data:`CONNECT_TIMEOUT` / :data:`READ_TIMEOUT` seconds and one botocore attempt per s3fs
retry; the driver's own file system (:func:`filesystem`: the first contact, the listing)
also makes only :data:`ATTEMPTS` s3fs attempts, so a silent endpoint is one error line in
under a minute (~40 s measured), before any worker reads — unless
the user configured that protocol in fsspec's config (``~/.config/fsspec/*.json`` or
``FSSPEC_S3_*`` variables), which then wins. Credentials and endpoints still come only from
the standard environment; nothing here is ever written into outputs.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import fsspec
import zarr
from upath import UPath

from nldist.errors import NldistError

__all__ = ["ATTEMPTS", "CONNECT_TIMEOUT", "READ_TIMEOUT", "as_path", "check_bucket", "filesystem",
           "is_remote",
           "open_array", "open_group", "rmtree", "storage_options", "write_bytes_atomic"]

CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 10.0  # between bytes, not for a whole object
ATTEMPTS = 2


def storage_options(url: str) -> dict[str, Any]:
    """fsspec storage options nldist uses for ``url`` (empty for local paths and protocols
    other than S3, and for S3 when fsspec's config sets its options)."""
    protocol = str(url).split("://", 1)[0] if "://" in str(url) else "file"
    if protocol not in ("s3", "s3a") or fsspec.config.conf.get("s3"):
        return {}
    return {"config_kwargs": {"connect_timeout": CONNECT_TIMEOUT,
                              "read_timeout": READ_TIMEOUT,
                              "retries": {"max_attempts": 1, "mode": "standard"}}}


def filesystem(url: str) -> tuple[Any, str]:
    """``fsspec.core.url_to_fs(url)`` with :func:`storage_options` (and, on S3 with nldist's
    options, :data:`ATTEMPTS` s3fs attempts instead of its default 5)."""
    opts = storage_options(url)
    fs, path = fsspec.core.url_to_fs(url, **opts)
    if opts and hasattr(fs, "retries"):
        fs.retries = ATTEMPTS
    return fs, path


def is_remote(path: Any) -> bool:
    """Whether ``path`` names an fsspec file system other than local disk (``s3://...``)."""
    if isinstance(path, UPath):
        return path.protocol not in ("", "file", "local")
    text = str(path)
    return "://" in text and not text.startswith(("file://", "local://"))


def as_path(path: Any) -> Path:
    """A :class:`pathlib.Path` for a local path or ``file://`` URL, a :class:`upath.UPath`
    (with :func:`storage_options`) for any other URL."""
    if isinstance(path, UPath) and is_remote(path):
        return path
    text = os.fspath(path) if isinstance(path, os.PathLike) else str(path)
    if text.startswith(("file://", "local://")):
        return Path(text.split("://", 1)[1])
    if is_remote(text):
        opts = storage_options(text)
        p = UPath(text, **opts)
        if opts and hasattr(p.fs, "retries"):
            p.fs.retries = ATTEMPTS
        return p
    return Path(text)


#: fsspec protocols whose first path component is a bucket (or container)
BUCKET_PROTOCOLS = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "oss", "r2")


def check_bucket(path: Any) -> None:
    """Refuse (one line) an output URL whose bucket does not exist: nldist never creates a
    bucket (a typo in ``--out s3://bucket/...`` would otherwise make one). Local paths and
    protocols without buckets pass."""
    p = as_path(path)
    if not is_remote(p) or p.protocol not in BUCKET_PROTOCOLS:
        return
    bucket = p.path.strip("/").split("/", 1)[0]
    url = f"{p.protocol}://{p.path.strip('/')}"
    try:
        p.fs.invalidate_cache(bucket)
        found = p.fs.exists(bucket)
    except PermissionError:
        found = True  # listing refused but the bucket is there; writes say more
    if not found:
        raise NldistError(f"bucket {bucket!r} of {url} does not exist; nldist never creates a "
                          "bucket: create it first, or fix the URL")


def rmtree(path: Any) -> None:
    """Remove a directory tree (or object prefix), nothing when absent."""
    p = as_path(path)
    if not is_remote(p):
        shutil.rmtree(p, ignore_errors=True)
        return
    try:
        p.fs.invalidate_cache(p.path)  # a listing cached earlier would hide new objects
        if p.fs.exists(p.path):
            p.fs.rm(p.path, recursive=True)
    except FileNotFoundError:
        pass


def write_bytes_atomic(path: Any, data: bytes) -> None:
    """Write ``data`` so that a reader sees the old file or the whole new one: a temporary
    name in the same directory and ``os.replace`` locally (the directory created), a single
    PUT on an object store."""
    p = as_path(path)
    if is_remote(p):
        p.write_bytes(data)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, p)


def _zarr_kwargs(path: Any) -> dict[str, Any]:
    return {"storage_options": storage_options(str(path))} if is_remote(path) else {}


def open_group(path: Any, **kwargs: Any) -> Any:
    """``zarr.open_group`` of a local path or URL (storage options attached)."""
    return zarr.open_group(str(as_path(path)), **kwargs, **_zarr_kwargs(path))


def open_array(path: Any, **kwargs: Any) -> Any:
    """``zarr.open_array`` of a local path or URL (storage options attached)."""
    return zarr.open_array(str(as_path(path)), **kwargs, **_zarr_kwargs(path))
