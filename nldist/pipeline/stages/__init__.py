"""The stages of a job, one function each, over a :class:`~nldist.pipeline.context.RunContext`.

Every reusable output declares what invalidates it in one place,
:data:`nldist.pipeline.stages.data.KEYS`: the job fields it depends on and the inputs from
outside the job its stage passes (the source's fingerprint, theta, the chunking, ...); the
output is reused by a later run only when the digest of those (:func:`~.data.stage_key`;
for scores, their provenance narrowed by the kind) matches what was recorded with it
(:mod:`nldist.store`). Stages do no numerics themselves: they call
:mod:`nldist.graph` (distributed passes), :mod:`nldist.train` (single-node training) and the
stores.

=================  =====================================================================
module             stages
=================  =====================================================================
:mod:`~.data`      ingest (``OUT/dataset.zarr``, or a Parquet table in place), X and y
                   for the passes, store-counted reads, the model, target checks, KEYS
:mod:`~.theta`     theta* (``OUT/theta_star.npz``), the pilot theta_0 and its rows
                   (``OUT/theta_pilot.npz``), a given theta, sample sizes
:mod:`~.scoring`   exact two-pass scores (``OUT/scores.zarr/<kind>``), the fused pass 2 +
                   sample + gather
:mod:`~.fitting`   draws, ``sample.parquet``, training on a sample, full-data losses
:mod:`~.outputs`   the output directory made this job's and marked complete (the run
                   manifest of :mod:`nldist.store.manifest`)
=================  =====================================================================

Callers import the package and name the module: ``stages.data.xy(ctx)``.
"""

from nldist.pipeline.stages import data, fitting, outputs, scoring, theta

__all__ = ["data", "fitting", "outputs", "scoring", "theta"]
