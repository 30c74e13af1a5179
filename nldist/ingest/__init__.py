"""The ingest (ring 3): a source table as a row-chunked Zarr dataset, or a Parquet table
scored in place. One plan for every path: a table in memory is one partition through the
same statistics, plan and encoding as a table on a cluster.

==========================  ===========================================================
module                      role
==========================  ===========================================================
:mod:`~.sources`            reading a source, listing a table's files and schemas, the
                            source fingerprint
:mod:`~.plan`               the kernels (pure pandas/NumPy): per-partition statistics,
                            their merge, the encoding plan, encoding a partition
:mod:`~.frame`              the in-memory ingest: one partition through the plan
:mod:`~.tables`             the distributed ingest and the in-place Parquet table
==========================  ===========================================================

The front door (the API of an ingest) is re-exported here: :func:`ingest`,
:func:`ingest_table`, :func:`prepare`, :func:`table_view`, :func:`open_table_view`,
:func:`table_format`, :func:`read_source`, :func:`source_fingerprint`,
:func:`dataset_attrs`, and the settings of every ingest,
:class:`~nldist.options.IngestOptions` (the ``ingest`` verb's, a job's ``dataset:``
section's, the API's; its digest keys the ingest).
"""

from nldist.ingest.frame import dataset_attrs, ingest, prepare
from nldist.ingest.sources import read_source, source_fingerprint, table_format
from nldist.ingest.tables import ingest_table, open_table_view, table_view
from nldist.options import IngestOptions
from nldist.store.dataset import RESERVOIR_ROWS

__all__ = ["RESERVOIR_ROWS", "IngestOptions", "dataset_attrs", "ingest", "ingest_table",
           "open_table_view", "prepare", "read_source", "source_fingerprint", "table_format",
           "table_view"]
