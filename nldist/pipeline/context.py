"""The state of one run: :class:`RunContext` (job, output directory, data, model, timings)
and the progress events the stages emit.

Stages (:mod:`nldist.pipeline.stages`) take a context and report what they do as
:class:`Event` objects; a front end (the CLI's progress display) subscribes with
:meth:`RunContext.subscribe`. Nothing here computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nldist.errors import NldistError
from nldist.store.scores import new_run_id

#: human labels of the stages (the keys of ``timings``)
LABELS = {
    "ingest": "ingest into Zarr",
    "cache": "X, y into worker memory",
    "optimum": "theta* (distributed Gauss-Newton passes)",
    "pilot": "pilot theta_0 (uniform sample)",
    "score": "scores",
    "sample": "sample",
    "gather": "gather the sampled rows",
    "train": "training on the sample",
    "evaluate": "full-data losses",
    "experiment": "experiment",
    "flip": "flip labels",
    "rank": "rank rows",
}


@dataclass(frozen=True)
class Event:
    """One progress event of a run.

    Attributes
    ----------
    stage : str
        A key of :data:`LABELS`.
    status : {"start", "end", "advance"}
        ``advance``: one more unit of ``total`` done (a training, a chunk).
    kind : str or None
        The score kind the stage works for, when it has one.
    total : int or None
        Units the stage will do (``start`` of a counted stage).
    seconds : float or None
        Duration (``end``).
    """

    stage: str
    status: str
    kind: str | None = None
    total: int | None = None
    seconds: float | None = None

    @property
    def label(self) -> str:
        text = LABELS.get(self.stage, self.stage)
        return f"{text} ({self.kind})" if self.kind else text


def safe_out_dir(out: str | Path) -> Path:
    """Resolve the output directory; refuse a path that is an existing regular file."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise NldistError(f"output path {out} is a file; choose a directory with --out")
    return out


class RunContext:
    """One job's run: job, output directory, lazily opened data and model, timings, events.

    Parameters
    ----------
    job : nldist.jobs.JobConfig
        The validated job (read by attribute; the pipeline never imports the schema).
    out : str or Path
        Output directory (created when a stage writes). Everything the job writes stays
        inside it.

    Attributes
    ----------
    timings : dict
        Seconds per stage key (``score:<kind>`` per kind), summed over calls.
    run_id : str
        Id of this run in the chunk records it writes.
    resume_stats : dict
        Per kind: chunks reused / computed by the score stage.
    cached_x : bool
        X and y were kept in worker memory (``cache_x``).
    """

    def __init__(self, job: Any, out: str | Path) -> None:
        self.job = job
        self.out = safe_out_dir(out)
        self.timings: dict[str, float] = {}
        self.run_id = new_run_id()
        self.resume_stats: dict[str, dict] = {}
        self.cached_x = False
        self.xy_cache: tuple[Any, Any] | None = None
        self.model_cache: Any = None
        self._listeners: list[Callable[[Event], None]] = []

    # -- events ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event of this run."""
        self._listeners.append(listener)

    def emit(self, stage: str, status: str, **info: Any) -> None:
        event = Event(stage, status, **info)
        for listener in self._listeners:
            listener(event)

    @contextmanager
    def timed(self, stage: str, kind: str | None = None, total: int | None = None,
              key: str | None = None) -> Iterator[None]:
        """Time a stage into ``timings[key or stage]`` and emit its start and end events."""
        self.emit(stage, "start", kind=kind, total=total)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            dt = time.perf_counter() - t0
            name = key or stage
            self.timings[name] = self.timings.get(name, 0.0) + dt
            self.emit(stage, "end", kind=kind, seconds=dt)

    # -- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the output directory (its parent created)."""
        p = self.out.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def key(self, *fields: str) -> str:
        """Digest of the job fields a stage's output depends on (its cache key)."""
        return self.job.digest(*fields)
