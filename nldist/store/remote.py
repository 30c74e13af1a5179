"""Object storage through fsspec: bounded waits for sources on ``s3://``.

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

from typing import Any

import fsspec

__all__ = ["ATTEMPTS", "CONNECT_TIMEOUT", "READ_TIMEOUT", "filesystem", "storage_options"]

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
