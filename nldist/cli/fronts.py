"""The front-door modules the commands call — pipeline, jobs, report, cluster, datasets,
ingest — bound deferred: each is imported on a command's first use of it, so that ``nldist
--help``, ``nldist CMD --help`` and ``nldist example`` import no Dask, pandas or zarr.

The ``if TYPE_CHECKING:`` block names the same modules for type checkers and for the import
graph of tests/test_layers.py; tests/test_startup.py checks that the two agree.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any


class _Deferred:
    """A front-door module imported on its first attribute access (``pipeline.select``).

    These modules import Dask, pandas, zarr and pydantic (2-4 s on a small machine): the
    command line binds them deferred so that ``nldist --help`` and ``nldist CMD --help``
    import none of them, and a command imports those it uses when it runs. The same
    modules are imported under ``TYPE_CHECKING`` below, for type checkers and for the
    import graph of tests/test_layers.py (which sees them as this module's top-level
    imports).
    """

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str) -> Any:
        return getattr(importlib.import_module(self._name), attr)

    def __repr__(self) -> str:
        return f"<deferred module {self._name!r}>"


if TYPE_CHECKING:
    from nldist import cluster as cluster_mod
    from nldist import datasets, jobs, pipeline
    from nldist import ingest as ingest_mod
    from nldist import report as report_mod
else:
    # (``*_mod``: the commands ``ingest`` and ``report`` and the option ``cluster`` use
    # the plain names)
    cluster_mod = _Deferred("nldist.cluster")
    datasets = _Deferred("nldist.datasets")
    ingest_mod = _Deferred("nldist.ingest")
    jobs = _Deferred("nldist.jobs")
    pipeline = _Deferred("nldist.pipeline")
    report_mod = _Deferred("nldist.report")

#: rows of the ingest's reservoir by default (``nldist.ingest.RESERVOIR_ROWS``, which the
#: help shows without importing nldist.ingest; tests/test_startup.py checks they agree)
RESERVOIR_ROWS = 10_000
