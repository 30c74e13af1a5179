"""The one progress event type: :class:`Event`, emitted by the pipeline's stages
(:meth:`nldist.pipeline.RunContext.emit`), the report (:func:`nldist.report.write_report`),
the passes over the chunks (through :func:`chunk_events`) and rendered by the CLI as one
stream. A listener is any ``callable(event)``.

A leaf (ring 0): imports nothing of nldist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["LABELS", "Event", "Listener", "chunk_events"]

#: human labels of the stages (the keys of a run's ``timings``), and of the other emitters
LABELS = {
    "ingest": "ingest into Zarr",
    "table": "statistics of the Parquet table (scored in place)",
    "cache": "X, y into worker memory",
    "optimum": "theta* (distributed Gauss-Newton passes)",
    "pilot": "pilot theta_0 (uniform sample)",
    "score": "scores",
    "estimate": "full-data loss estimate (evaluation sample)",
    "sample": "sample",
    "gather": "gather the sampled rows",
    "train": "training on the sample",
    "evaluate": "full-data losses",
    "experiment": "experiment",
    "flip": "flip labels",
    "rank": "rank rows",
    "choose": "choose the full-data method (one chunk timed, the three run on the sample)",
    "fit": "full-data fit",
    "report": "report",
}


@dataclass(frozen=True)
class Event:
    """One progress event.

    Attributes
    ----------
    stage : str
        A key of :data:`LABELS`.
    status : {"start", "end", "advance", "chunks", "steps", "reused", "recomputed"}
        ``advance``: one more unit of ``total`` done (a training); ``chunks``: ``done`` of
        the ``total`` chunk tasks of the pass the stage runs now have finished; ``steps``:
        ``done`` of the ``total`` steps of the stage have finished and ``detail`` (None at
        the end) runs now (the report); ``reused`` / ``recomputed``: what a cached stage did
        (:meth:`nldist.pipeline.RunContext.note`).
    kind : str or None
        The score kind the stage works for, when it has one.
    total : int or None
        Units the stage will do (``start`` of a counted stage), the chunk tasks of the
        current pass (``chunks``) or the steps (``steps``).
    seconds : float or None
        Duration (``end``).
    done : int or None
        Chunk tasks or steps finished (``chunks``, ``steps``).
    detail : str or None
        The step running now (``steps``).
    """

    stage: str
    status: str
    kind: str | None = None
    total: int | None = None
    seconds: float | None = None
    done: int | None = None
    detail: str | None = None

    @property
    def label(self) -> str:
        text = LABELS.get(self.stage, self.stage)
        return f"{text} ({self.kind})" if self.kind else text


#: what listens to the events
Listener = Callable[[Event], None]


def chunk_events(listener: Listener, stage: str,
                 kind: str | None = None) -> Callable[[int, int], None]:
    """The ``(done, total)`` callback of the chunk passes
    (:func:`nldist._runtime.chunk_progress`, ``ingest_table(progress=...)``) as ``chunks``
    events of ``stage`` told to ``listener``."""

    def chunks(done: int, total: int) -> None:
        listener(Event(stage, "chunks", kind=kind, total=total, done=done))

    return chunks
