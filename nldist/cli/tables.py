"""Results on the console (rich): the metrics of run and select, the full-data fit's
iterations, Markdown tables that wrap instead of cutting at 80 columns, and the dry-run plan
in words.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from nldist.cli.fronts import report_mod


def print_summary(metrics: dict) -> None:
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


def print_md(text: str, console: Any = None) -> None:
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


def print_select(m: dict) -> None:
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
    unit = "partition" if "Parquet" in counted.get("note", "") else "chunk"
    n_read, n_chunks = counted.get("chunk_reads"), counted.get("x_chunks")
    reads = (f"{counted['passes']:.2f} ({n_read} read{'' if n_read == 1 else 's'} of "
             f"{n_chunks} {unit}{'' if n_chunks == 1 else 's'}, counted where read)"
             if n_read is not None
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


def print_fit(m: dict) -> None:
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


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f} MiB"


def plan_summary(job: Any, plan: dict, out: Path, stage: str) -> str:
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
