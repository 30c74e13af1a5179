"""``python -m nldist`` and the ``nldist`` console script: the command line (:mod:`nldist.cli`).

``nldist --version`` answers here, without importing :mod:`nldist.cli` (the Typer app: typer,
rich and, when a command runs, pydantic; the front doors that import Dask, pandas and zarr
only when a command uses them, :mod:`nldist.cli.fronts`); every other command line is
handed to the Typer app.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

from nldist._version import __version__

if TYPE_CHECKING:  # the same module, for type checkers and the import graph of test_layers
    from nldist import cli  # noqa: F401

#: the command line, imported when a command runs (not for ``--version``)
_CLI = "nldist.cli"


def main(argv: list[str] | None = None) -> None:
    """Run ``nldist`` with ``argv`` (default: ``sys.argv[1:]``)."""
    args = sys.argv[1:] if argv is None else list(argv)
    if args == ["--version"]:
        print(f"nldist {__version__}")
        return
    importlib.import_module(_CLI).app(args=args, prog_name="nldist")


if __name__ == "__main__":
    main()
