"""The output directory of a run: made this job's before a verb writes into it, marked
complete after (the run manifest of :mod:`nldist.store.manifest`).

Part of :mod:`nldist.pipeline.stages`.
"""

from __future__ import annotations

from nldist.pipeline.context import RunContext
from nldist.store import manifest


def claim(ctx: RunContext, verb: str, force: bool = False) -> None:
    """Make ``ctx.out`` this job's before ``verb`` writes into it
    (:func:`nldist.store.manifest.claim`: another job's outputs refused, or removed with
    ``force``; this verb's stale outputs removed)."""
    ctx.memo[manifest.CLAIMED] = manifest.claim(ctx.out, verb, ctx.job, force)


def complete(ctx: RunContext) -> None:
    """Mark the manifest's verb complete and record what this job wrote
    (:func:`nldist.store.manifest.complete`)."""
    manifest.complete(ctx.out, ctx.memo.get(manifest.CLAIMED))
