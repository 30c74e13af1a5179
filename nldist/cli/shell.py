"""The Typer app and what every verb shares: help in the usual notation (clean metavars),
the common options (--set, --cluster, --out, --force, -v, -q), --version, logging, and the
job file loaded with its overrides (or read from standard input) and its output directory.
"""

from __future__ import annotations

import inspect
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from nldist import __version__
from nldist.cli.fronts import jobs
from nldist.cli.oneline import note_urls
from nldist.errors import NldistError

#: value types in --help in the usual notation, for typer's <str>, <list[str]>, <bool>, ...
_TYPE_NAMES = {"str": "TEXT", "int": "INTEGER", "float": "FLOAT", "path": "PATH",
               "int range": "INTEGER", "float range": "FLOAT", "bool": ""}


def _type_name(p: Any, ctx: Any) -> str:
    shown = str(p.display_type(ctx) or "").strip("<>")
    shown = shown[len("list["):-1] if shown.startswith("list[") else shown  # repeatable
    return _TYPE_NAMES.get(shown, shown.upper())


def _clean_metavars(params: list[Any], ctx: Any) -> list[Any]:
    """Help in the usual notation: arguments as JOB_FILE, values as TEXT / INTEGER / PATH,
    no type after a flag (``--force``, ``-v``); an explicit metavar is kept as given."""
    for p in params:
        if getattr(p, "_nldist_clean", False):
            continue
        if isinstance(p, TyperArgument):
            kind = _type_name(p, ctx)
            p.metavar = p.metavar or p.name.upper()
            p.display_type_rich = lambda ctx, kind=kind: kind  # type: ignore[method-assign]
        elif isinstance(p, TyperOption) and p.metavar is None:
            p.metavar = "" if (p.is_flag or p.count) else _type_name(p, ctx)
        p._nldist_clean = True
    return params


class _Command(TyperCommand):
    """A command whose help uses :func:`_clean_metavars` (usage: ``[OPTIONS] JOB_FILE``) and
    whose line in ``nldist --help`` is its docstring's first paragraph as one line (rich
    wraps it to the terminal; the docstring's own line breaks made ragged lines at 80
    columns)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.short_help is None and self.help:
            first = inspect.cleandoc(self.help).split("\n\n")[0]
            self.short_help = " ".join(first.split())

    def get_params(self, ctx: Any) -> list[Any]:
        return _clean_metavars(super().get_params(ctx), ctx)

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for p in self.get_params(ctx):
            if isinstance(p, TyperArgument):
                name = (p.metavar or p.name.upper()) + ("..." if p.nargs != 1 else "")
                pieces.append(name if p.required else f"[{name}]")
        return pieces


class _Group(TyperGroup):
    def get_params(self, ctx: Any) -> list[Any]:
        return _clean_metavars(super().get_params(ctx), ctx)


class _App(typer.Typer):
    """The Typer app whose commands are :class:`_Command` (clean metavars in --help)."""

    def command(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("cls", _Command)
        return super().command(*args, **kwargs)


app = _App(
    cls=_Group,
    add_completion=False,
    no_args_is_help=True,
    help="nldist: importance sampling for nonlinear models with nonlinear leverage scores on "
    "Dask + Zarr. Start with `nldist select jobs/california.yaml` (the practical path; "
    "`nldist example california job.yaml` writes that job file anywhere).",
)

Overrides = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="FIELD=VALUE",
                 help="override a job field, e.g. --set s=500 --set cluster.n_workers=4"),
]
ClusterOpt = Annotated[
    str | None,
    typer.Option("--cluster", help="local | slurm | k8s | synchronous | tcp://HOST:PORT | "
                 "tls://HOST:PORT | scheduler-file.json (settings: the job's cluster: section)"),
]
OutOpt = Annotated[str | None, typer.Option(
    "--out", help="output directory or URL (s3://bucket/prefix; default runs/NAME)")]
ForceOpt = Annotated[bool, typer.Option("--force", help="replace the outputs of another job in "
                                        "the output directory (deletes them first)")]
Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="more logging")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="only errors")]
JobFileArg = Annotated[Path, typer.Argument(
    help="job YAML, e.g. jobs/california.yaml (- reads it from standard input)")]
DryRunOpt = Annotated[bool, typer.Option(help="print the plan and memory bound; run nothing")]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"nldist {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="print the version and exit")] = False,
) -> None:
    """nldist: importance sampling for nonlinear models with nonlinear leverage scores on
    Dask + Zarr. Start with `nldist select jobs/california.yaml` (the practical path;
    `nldist example california job.yaml` writes that job file anywhere)."""


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("distributed").setLevel(max(level, logging.WARNING))


def load_job(job_file: Path, overrides: list[str] | None, cluster: str | None):
    items = list(overrides or [])
    if cluster:
        items.append(f"cluster.address={cluster}")
    if str(job_file) == "-":  # `nldist example california | nldist select -`
        text = "" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
        if not text.strip():
            raise NldistError("'-' reads the job from standard input, and none was piped in; "
                              "e.g. `nldist example california | nldist select -`")
        job = jobs.parse_job(text, "<stdin>", items)
    else:
        job = jobs.load_job(job_file, items)
    note_urls(job.dataset.source)
    return job


def job_out(job: Any, out: str | None) -> str:
    """The output directory or URL (a str: ``Path`` would fold ``s3://`` into ``s3:/``)."""
    dest = str(out or job.out or Path("runs") / job.name)
    note_urls(dest)
    return dest


def run_log(out: Any) -> str | None:
    """The run.log the local workers write failed tasks' errors to (None on object
    storage)."""
    return None if "://" in str(out) else str(Path(out) / "run.log")
