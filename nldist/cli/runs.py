"""The verbs that run a job on a cluster: run, select, fit, the single stages (score,
sample, train, evaluate, experiment), diagnose, and report (the report of a finished run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from nldist.cli.fronts import cluster_mod, pipeline, report_mod
from nldist.cli.oneline import one_line_errors
from nldist.cli.progress import Progress, bar_events, progress_bar
from nldist.cli.shell import (
    ClusterOpt,
    DryRunOpt,
    ForceOpt,
    JobFileArg,
    OutOpt,
    Overrides,
    Quiet,
    Verbose,
    app,
    job_out,
    load_job,
    run_log,
    setup_logging,
)
from nldist.cli.tables import plan_summary, print_fit, print_md, print_select, print_summary


def write_report(out: Path, quiet: bool, top_k: int | None = None) -> None:
    """Write the report of a finished run in ``out`` (a bar over its steps) and say where
    it is."""
    if quiet:
        report_mod.write_report(out, top_k=top_k)
        return
    with progress_bar("report", quiet) as bar:
        path = report_mod.write_report(out, top_k=top_k, on_event=bar_events(bar))
    typer.echo(f"report: {path.with_suffix('.html')} (and {path.name})")


def run_stage(stage: str, job_file: Path, overrides, cluster, out, dry_run, verbose, quiet,
               force: bool = False, experiment: bool = False, compare_full: bool = False):
    """Run ``stage`` (then the experiment, when asked) of a job on one cluster."""
    setup_logging(verbose, quiet)
    job = load_job(job_file, overrides, cluster)
    ctx = pipeline.RunContext(job, job_out(job, out))
    if dry_run:
        with cluster_mod.connect(job.cluster.model_copy(update={"address": "synchronous"})):
            plan = pipeline.dry_run(ctx, "select" if stage == "select" else "run")
            typer.echo(json.dumps(plan, indent=2))
            if not quiet:
                typer.echo(plan_summary(job, plan, ctx.out, stage), err=True)
        return None
    with cluster_mod.connect(job.cluster, name=job.name, log_file=run_log(ctx.out)) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with Progress(job.name, quiet, ctx.out / "run.log") as progress:
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
            print_summary(result)
        elif stage == "select":
            print_select(result)
        elif stage == "experiment":
            print_md(report_mod.experiment_table(result))
        if exp is not None:
            print_md(report_mod.experiment_table(exp))
        if ctx.reuse:
            typer.echo(ctx.reuse_summary())
        typer.echo(f"outputs in {ctx.out}")
    return ctx


@app.command()
@one_line_errors
def run(
    job_file: JobFileArg,
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    experiment: Annotated[bool, typer.Option(help="also run the job's experiment section")] = False,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """Run a job end to end: scores, sample, train, evaluate, report."""
    ctx = run_stage("evaluate", job_file, overrides, cluster, out, dry_run, verbose, quiet,
                     force=force, experiment=experiment)
    if ctx is not None:
        write_report(ctx.out, quiet)


@app.command()
@one_line_errors
def select(
    job_file: JobFileArg,
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    compare_full: Annotated[bool, typer.Option(
        help="also fit theta* on all rows (measured) for the exact relative error")] = False,
    dry_run: DryRunOpt = False,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """The practical path: pilot, scores, sample, train on the sample, estimated full-data
    loss — never fitting on all rows itself; prints its cost next to the full-data fit's
    (measured where that fit is cheap or with --compare-full, else estimated by a stated
    model)."""
    ctx = run_stage("select", job_file, overrides, cluster, out, dry_run, verbose, quiet,
                     force=force, compare_full=compare_full)
    if ctx is not None:
        write_report(ctx.out, quiet)


@app.command()
@one_line_errors
def fit(
    job_file: JobFileArg,
    cluster: ClusterOpt = None,
    out: OutOpt = None,
    overrides: Overrides = None,
    method: Annotated[str, typer.Option(
        help="auto (the cheapest by measured cost) | precond (exact gradients, the sample's "
        "Gauss-Newton matrix) | gn (full Gauss-Newton) | lbfgs (L-BFGS on all rows)")] = "auto",
    xtol: Annotated[float, typer.Option(
        help="relative tolerance of the preconditioned method's step")] = 1e-10,
    force: ForceOpt = False,
    verbose: Verbose = 0,
    quiet: Quiet = False,
) -> None:
    """The full-data optimum θ*: exact full-data gradients with the leverage sample's
    Gauss-Newton matrix as the Hessian, or full Gauss-Newton or L-BFGS where cheaper; writes
    theta_fit.npy and metrics.json with the choice and its reason."""
    setup_logging(verbose, quiet)
    job = load_job(job_file, overrides, cluster)
    ctx = pipeline.RunContext(job, job_out(job, out))
    with cluster_mod.connect(job.cluster, name=job.name) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with Progress(job.name, quiet, ctx.out / "run.log") as progress:
            ctx.subscribe(progress)
            result = pipeline.fit(ctx, method=method, xtol=xtol, force=force)
    if not quiet:
        print_fit(result)
        typer.echo(f"outputs in {ctx.out}")


def stage_command(stage: str, doc: str) -> None:
    @one_line_errors
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
        run_stage(stage, job_file, overrides, cluster, out, dry_run, verbose, quiet, force)

    command.__doc__ = doc
    app.command(name=stage)(command)


stage_command("score", "Compute the job's scores (and baselines) into OUT/scores.zarr.")
stage_command("sample", "Scores, then draw the weighted sample into OUT/samples/.")
stage_command("train", "Scores, sample, then train on the sample (theta_<kind>.npy).")
stage_command("evaluate", "All stages, then full-data losses and metrics.json.")
stage_command("experiment", "The paper's protocol: median relative error vs s per score kind.")


@app.command()
@one_line_errors
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
    setup_logging(verbose, quiet)
    job = load_job(job_file, overrides, cluster)
    dest = str(out or Path("runs") / f"{job.name}-diagnose")
    with cluster_mod.connect(job.cluster, name=job.name, log_file=run_log(dest)) as client:
        if client is not None and not quiet:
            typer.echo(f"dask dashboard: {client.dashboard_link}", err=True)
        with Progress(job.name, quiet, f"{dest}/run.log") as progress:
            res = pipeline.diagnose(job, dest, fraction=flip, seed=flip_seed, ks=k,
                                    listener=progress, force=force)
    if not quiet:
        names = list(res["precision"])
        typer.echo(f"{res['n_flipped']:,} of {res['n_rows']:,} labels flipped; precision@k "
                   f"(random: {res['base_rate']:.3f})")
        print_md("\n".join(["| k | " + " | ".join(names) + " |",
                              "|---|" + "---|" * len(names)]
                             + [f"| {kk} | " + " | ".join(f"{res['precision'][nm][i]:.3f}"
                                                         for nm in names) + " |"
                                for i, kk in enumerate(res["ks"])]))
    write_report(dest, quiet)


@app.command()
@one_line_errors
def report(
    out_dir: Annotated[str, typer.Argument(help="a finished run's output directory or URL")],
    top_k: Annotated[int | None, typer.Option(
        "--top-k", min=1, help="rows shown among the highest/lowest scored (default 10 for "
        "tables, 50 for images)")] = None,
) -> None:
    """Write report.html (self-contained) and report.md with plots from a finished run."""
    write_report(out_dir, False, top_k)
