"""``python -m nldist``: the command line (:mod:`nldist.cli`)."""

from nldist.cli import app

app(prog_name="nldist")
