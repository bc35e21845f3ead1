"""The Delta lake: table names and schemas (`tables`), table I/O (`io`), the bounded-memory
streaming writer (`writer`), per-partition locks (`locks`), and the rewrite of partitions written
by an earlier version (`migrate`, also `python -m embedding_assets.lib.lake.migrate`; not imported
here, so that the command runs cleanly).

`from embedding_assets.lib import lake; lake.read_partition(...)` is the usual way in. deltalake is
imported lazily, on the first table access.
"""

from embedding_assets.lib.lake import tables
from embedding_assets.lib.lake.io import (
    DamagedTable,
    append,
    compact_partition,
    create_table,
    dataset,
    delete_partition,
    exists,
    open_table,
    partitions,
    read_partition,
    read_table,
    replace_partition,
    scan_partition,
    storage_options,
    table_uri,
    transaction_version,
    vacuum,
)
from embedding_assets.lib.lake.locks import PartitionBusy, partition_lock
from embedding_assets.lib.lake.writer import ROW_GROUP_ROWS

__all__ = [
    "DamagedTable", "PartitionBusy", "ROW_GROUP_ROWS", "append", "compact_partition", "create_table", "dataset", "delete_partition", "exists",
    "open_table", "partition_lock", "partitions", "read_partition", "read_table", "replace_partition",
    "scan_partition", "storage_options", "table_uri", "tables", "transaction_version", "vacuum",
]
