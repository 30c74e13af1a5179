"""The state of one run: :class:`RunContext` (job, output directory, data, model, timings)
and the progress events the stages emit.

Stages (:mod:`nldist.pipeline.stages`) take a context and report what they do as
:class:`~nldist.events.Event` objects (the one event type, :mod:`nldist.events`); a front
end (the CLI's progress display) subscribes with :meth:`RunContext.subscribe`. Nothing here
computes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from nldist._runtime import chunk_progress
from nldist.errors import NldistError
from nldist.events import Event, chunk_events
from nldist.store.records import append_text, digest
from nldist.store.remote import as_path, is_remote
from nldist.store.scores import new_run_id


def safe_out_dir(out: str | Path) -> Path:
    """Resolve the output directory (a local path, or a URL on object storage:
    :func:`nldist.store.remote.as_path`); refuse a path that is an existing regular file."""
    out = as_path(out)
    out = out if is_remote(out) else out.resolve()
    if out.exists() and not out.is_dir():
        raise NldistError(f"output path {out} is a file; choose a directory with --out")
    return out


def confined(out: Path, path: Path) -> Path:
    """``path`` (inside ``out``) after checking that it resolves inside ``out``."""
    if is_remote(out) or is_remote(path):
        return path
    root = out.resolve()
    at = path.parent.resolve() / path.name
    if at.is_symlink():
        at = at.resolve()
    if not at.is_relative_to(root):
        raise NldistError(f"{path} resolves to {at}, outside the output directory {root}; "
                          "nldist writes only inside --out: remove the link or choose another "
                          "--out")
    return path


def log_line(path: str | Path, line: str) -> bool:
    """Append ``line`` (a newline added) to a log file, local or on object storage; False
    (nothing raised) when it cannot be written: a log line is never worth failing a run."""
    try:
        append_text(path, line.rstrip("\n") + "\n")
    except (OSError, ValueError, TypeError):
        return False
    return True


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
        #: digest of the dataset's content (set by the ingest stage; part of every key that
        #: depends on the data)
        self.dataset_fp: str | None = None
        #: what each cached stage did: (stage, "reused" | "recomputed", why or None)
        self.reuse: list[tuple[str, str, str | None]] = []
        #: stage results of this run by cache key (theta*, the pilot: computed or read once)
        self.memo: dict[str, Any] = {}
        #: reads of X by this run: (what, fraction of X's rows, from the store?) — passes
        #: over X in the cost summary (:meth:`cost`)
        self.reads: list[tuple[str, float, bool]] = []
        #: where the pilot's rows came from (:func:`nldist.pipeline.stages.theta.pilot_rows`)
        self.pilot_info: dict | None = None
        #: seconds of the last pass 1 this run computed (the per-pass cost it measured)
        self.pass1_s: float | None = None
        #: adjoint accuracy of quadrature models when the job does not set one: "exact"
        #: (run, experiment, diagnose) or "sampling" (select)
        self.adjoint_accuracy = "exact"
        self._listeners: list[Callable[[Event], None]] = []

    # -- events ------------------------------------------------------------------------
    def subscribe(self, listener: Callable[[Event], None]) -> None:
        """Call ``listener(event)`` for every event of this run."""
        self._listeners.append(listener)

    def emit(self, stage: str, status: str, **info: Any) -> None:
        self._tell(Event(stage, status, **info))

    def _tell(self, event: Event) -> None:
        for listener in self._listeners:
            listener(event)

    @contextmanager
    def timed(self, stage: str, kind: str | None = None, total: int | None = None,
              key: str | None = None) -> Iterator[None]:
        """Time a stage into ``timings[key or stage]`` and emit its start and end events."""
        self.emit(stage, "start", kind=kind, total=total)
        t0 = time.perf_counter()

        try:
            with chunk_progress(chunk_events(self._tell, stage, kind) if self._listeners
                                else None):
                yield
        finally:
            dt = time.perf_counter() - t0
            name = key or stage
            self.timings[name] = self.timings.get(name, 0.0) + dt
            self.emit(stage, "end", kind=kind, seconds=dt)

    # -- cost --------------------------------------------------------------------------
    def read(self, what: str, fraction: float = 1.0, store: bool | None = None) -> None:
        """Count a read of ``fraction`` of X's rows (from the store unless X is cached in
        worker memory, or as ``store`` says)."""
        self.reads.append((what, float(fraction), (not self.cached_x) if store is None
                           else bool(store)))

    def cost(self, x_bytes: int) -> dict:
        """Passes over X so far (by the computations, from the store or from worker memory),
        reads of the store (the copy into worker memory counts here, not as a pass), and
        bytes read from the store (uncompressed: store reads x ``x_bytes``), by what read
        them."""
        passes = sum(f for what, f, _ in self.reads if what != "cache")  # a copy, not a pass
        store = sum(f for _, f, s in self.reads if s)
        by: dict[str, float] = {}
        for what, f, _ in self.reads:
            by[what] = round(by.get(what, 0.0) + f, 4)
        return {"passes_over_x": round(passes, 4), "store_reads": round(store, 4),
                "bytes_read": int(store * x_bytes), "x_bytes": int(x_bytes), "by": by}

    # -- paths -------------------------------------------------------------------------
    def path(self, *parts: str) -> Path:
        """A path inside the output directory (its parent created), checked to resolve
        inside it (:func:`confined`: a symbolic link never leads a write out of it)."""
        p = self.out.joinpath(*parts)
        if not is_remote(p):
            confined(self.out, p)
            p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def key(self, *fields: str) -> str:
        """Digest of what a stage's output depends on (its cache key): the job fields named,
        and the dataset's content fingerprint when ``"dataset"`` is one of them."""
        base = self.job.digest(*fields)
        if "dataset" not in fields or self.dataset_fp is None:
            return base
        return digest({"fields": base, "data": self.dataset_fp}, 16)

    def note(self, stage: str, reused: bool, why: str | None = None) -> None:
        """Record (and emit) whether a cached stage output was reused or recomputed."""
        self.reuse.append((stage, "reused" if reused else "recomputed", why))
        self.emit(stage, "reused" if reused else "recomputed")

    def reuse_summary(self) -> str:
        """One line: ``reused: ingest, theta*; recomputed: scores (dataset changed)``."""
        parts = []
        for what in ("reused", "recomputed"):
            names = list(dict.fromkeys(
                stage + (f" ({why})" if why else "") for stage, w, why in self.reuse
                if w == what))
            if names:
                parts.append(f"{what}: {', '.join(names)}")
        return "; ".join(parts)
