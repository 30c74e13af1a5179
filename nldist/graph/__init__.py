"""The one package that builds Dask graphs (ring 3 of ARCHITECTURE.md).

It maps the pure kernels of :mod:`nldist.scores`, :mod:`nldist.train` and
:mod:`nldist.precond` over row blocks of a row-chunked X (n, d) and y (n,), reduces small
per-block results in a tree of bounded fan-in (``split_every``), and brings only small
things to the driver: R (q, q), scalars, the sample. No (n, .) array is ever computed on
the driver. Passes are computed one at a time (pass 1 eagerly, pass 2 lazily) so that X
blocks are read once per pass and never held in memory between passes.

==========================  ===========================================================
module                      graphs
==========================  ===========================================================
:mod:`~.inputs`             X, y as row-chunked dask arrays; the row blocks; computing
                            them with chunk progress; the tree reduction; store reads
:mod:`~.passes`             pass 1 / pass 2 of exact scores, the one-read sampler's pass
                            and exact row values, the row-sketch approximation
:mod:`~.draws`              draws from a distributed probability vector, the fused
                            pass 2 + sample + gather, evaluation rows, gathering rows
:mod:`~.oracles`            full-data loss, gradient and Gauss-Newton passes
:mod:`~.writes`             resumable writes of the score store
:mod:`~.memory`             X in worker memory, memory limits, stored arrays
:mod:`~.reports`            the report's and diagnostics' passes
:mod:`~.tables`             the distributed ingest of CSV / Parquet tables
==========================  ===========================================================

Callers import the package and name the module: ``graph.passes.pass1(...)``.
"""

from nldist.graph import draws, inputs, memory, oracles, passes, reports, tables, writes

__all__ = ["draws", "inputs", "memory", "oracles", "passes", "reports", "tables", "writes"]
