"""Progress on the console (stderr): the transient bar of one stage (ingest, report) fed
by its events, and the run's display — the stage running now, its trainings and chunk
tasks — which also logs each finished stage to OUT/run.log.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nldist.cli.fronts import pipeline
from nldist.events import Event, Listener


@contextmanager
def progress_bar(label: str, quiet: bool) -> Iterator[Any]:
    """A rich bar (stderr, transient) and its ``(done, total, description=None)`` callback;
    None if quiet."""
    if quiet:
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn

    with Progress(SpinnerColumn(), CountColumn(), TextColumn("{task.description}"),
                  BarColumn(bar_width=20), console=Console(stderr=True),
                  transient=True) as prog:
        task = prog.add_task(label, total=None)

        def update(done: int, total: int, description: str | None = None) -> None:
            prog.update(task, completed=done, total=total,
                        **({} if description is None else {"description": description}))

        yield update


def bar_events(bar: Any) -> Listener | None:
    """The events (:class:`nldist.events.Event`) of a stage on a :func:`progress_bar`: its chunk
    tasks, or its steps (then named: ``report: summary``); None without a bar."""
    if bar is None:
        return None

    def tell(event: Event) -> None:
        bar(event.done, event.total, None if event.status != "steps"
            else f"{event.label}: {event.detail or 'done'}")

    return tell


def CountColumn() -> Any:  # noqa: N802 - a rich column, named like its siblings
    """``done/total`` where the task is counted (its total is known), nothing where it is not
    (no ``0/?``); first, so a narrow terminal cuts the label, never the count."""
    from rich.progress import ProgressColumn
    from rich.text import Text

    class _Count(ProgressColumn):
        def render(self, task: Any) -> Text:
            if task.total is None:
                return Text("")
            return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")

    return _Count()


class Progress:
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

    def __enter__(self) -> Progress:
        if self.quiet:
            return self
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.prog = Progress(SpinnerColumn(), CountColumn(), TextColumn("{task.description}"),
                             BarColumn(bar_width=20), TimeElapsedColumn(),
                             console=Console(stderr=True), transient=True)
        self.prog.start()
        self.task = self.prog.add_task(f"{self.name}: starting", total=None, visible=True)
        self.chunks = self.prog.add_task("  chunks", total=None, visible=False)
        self.open: list[Any] = []  # stages started and not ended (nested: gather in pilot)
        self.counted: Any = None   # the counted stage running (trainings), if any
        self.last: Any = None      # the stage that ended last
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
                self.counted = event
                self.prog.update(self.task, total=event.total, completed=0)
        elif event.status == "advance":
            self.prog.advance(self.task)
        elif event.status == "end":
            self.open = [e for e in self.open
                         if (e.stage, e.kind) != (event.stage, event.kind)]
            self.last = event
            self.prog.update(self.chunks, visible=False)
            if event.stage == "train" and event.kind is None:  # the counted stage is over
                self.counted = None
                self.prog.update(self.task, completed=0)
                # (update's total=None means "unchanged": back to an uncounted bar here)
                next(t for t in self.prog.tasks if t.id == self.task).total = None
            if event.stage != "train" and event.seconds is not None and event.seconds >= 0.5 \
                    and self.prog.console.is_terminal:  # a log file keeps only the results
                self.prog.console.print(f"{self.name}: {event.label} "
                                        f"[dim]{event.seconds:.1f} s[/dim]")
        self.prog.update(self.task, description=f"{self.name}: {self._describe()}")

    def _describe(self) -> str:
        """The stage running now; under the counted trainings a step that is not a training
        says it runs among them (``trainings: gather the sampled rows``); between stages the
        one that ended (``...: done``), never a bare "working"."""
        inner = [e for e in self.open if e is not self.counted]
        if self.counted is not None:  # the count is of trainings: say so beside other steps
            if inner and inner[-1].stage == "train":
                return inner[-1].label
            return f"trainings: {inner[-1].label}" if inner else "trainings on samples"
        if inner:
            return inner[-1].label
        return f"{self.last.label}: done" if self.last is not None else "starting"

    def __exit__(self, *exc: Any) -> None:
        if self.prog is not None:
            self.prog.stop()
