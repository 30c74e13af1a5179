"""Command line: a thin shell over :mod:`nldist.pipeline` and the Python API.

Every user error is printed as one line ``error: ...`` on stderr with exit status 2.

The modules, outermost first:

* :mod:`nldist.cli.data` — the data verbs: ingest, fetch, validate, example;
* :mod:`nldist.cli.runs` — the verbs that run a job: run, select, fit, the stages, diagnose,
  report;
* :mod:`nldist.cli.tables` and :mod:`nldist.cli.progress` — what the console shows: result
  tables, the dry-run plan, progress bars and the run's display;
* :mod:`nldist.cli.shell` — the Typer app, the shared options, logging, loading a job;
* :mod:`nldist.cli.oneline` — user errors as one line;
* :mod:`nldist.cli.fronts` — the front-door modules, imported when a command first uses them.

Importing this package imports Typer and rich, and none of Dask, pandas or zarr.
"""

from __future__ import annotations

import sys

# the verbs register themselves on ``app`` when imported (the order of ``nldist --help``)
from nldist.cli import data, runs  # noqa: F401
from nldist.cli.fronts import RESERVOIR_ROWS
from nldist.cli.progress import Progress
from nldist.cli.shell import app
from nldist.cli.tables import print_md

#: the names callers of the former single module use (tests/test_pipeline.py, test_cli_console)
_Progress = Progress
_print_md = print_md


def main() -> None:  # pragma: no cover
    app()


__all__ = ["RESERVOIR_ROWS", "Progress", "app", "main", "print_md"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
