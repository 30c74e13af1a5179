"""Orchestration: a job's stages over a :class:`RunContext` (no numerics here).

:mod:`.context` (the run's state and progress events), :mod:`.stages` (one function per
stage, each with its declared cache key), :mod:`.select` (the practical path), :mod:`.run`
(the paper's path with θ*, ``metrics.json``), :mod:`.fit` (θ* by the sample-preconditioned
method or full Gauss-Newton), :mod:`.experiment` (the paper's protocol),
:mod:`.plan` (the dry run) and :mod:`.diagnose` (label-noise diagnostics).
"""

from nldist.pipeline.context import Event, RunContext, log_line
from nldist.pipeline.diagnose import diagnose
from nldist.pipeline.experiment import experiment
from nldist.pipeline.fit import fit
from nldist.pipeline.plan import dry_run, plan
from nldist.pipeline.run import run
from nldist.pipeline.select import select
from nldist.pipeline.stages.data import ingest

__all__ = ["Event", "RunContext", "diagnose", "dry_run", "experiment", "fit", "ingest", "log_line",
           "plan", "run", "select"]
