"""``python -m nldist.cli``: the Typer app itself (the tests' and the golden jobs' entry;
the ``nldist`` script and ``python -m nldist`` go through :mod:`nldist.__main__`)."""

from __future__ import annotations

from nldist.cli import app

if __name__ == "__main__":  # pragma: no cover
    app(prog_name="nldist")
