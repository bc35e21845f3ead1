"""Rewrites the partitions of tables written before the lake stored every file the way Delta readers
expect: files under an unescaped partition folder (`batch=a=b/` where delta-rs writes
`batch=a%3Db/`; polars refuses the table), and files holding a column in another type than the Delta
schema names (a vector as a fixed-size list where the log says list; polars refuses those too).

Nothing needs this to keep working: deltalake reads such tables, and every stage replaces its
partition on each run, which writes it the right way. It makes the whole lake readable by every
reader at once: `python -m embedding_assets.lib.lake.migrate [LAKE] [--check]` (LAKE defaults to
$EMBEDDING_LAKE). Each stale partition is rewritten in one commit (an overwrite of that partition,
streamed, bounded memory) under its partition lock; rows and other partitions are untouched, and
the replaced files go at the next vacuum.
"""

from __future__ import annotations

import argparse
import sys
import urllib.parse

import pyarrow as pa
import pyarrow.compute as pc

from embedding_assets.lib.lake import io, tables, writer
from embedding_assets.lib.lake.locks import partition_lock

TABLES = (tables.RAW, tables.REJECTED, tables.CHUNKS, tables.BUCKETS, tables.EMBEDDINGS, tables.STAGING, tables.DOCUMENTS)


def stale_partitions(root: str, name: str) -> dict[str, list[str]]:
    """{batch: reasons} for each partition of the table with a file a strict Delta reader refuses."""
    import pyarrow.parquet as pq

    if not io.exists(root, name):
        return {}
    table = io.open_table(root, name)
    schema = pa.schema(table.schema().to_arrow())
    filesystem = writer._table_filesystem(io.table_uri(root, name), io.storage_options(root))
    actions = pa.table(table.get_add_actions(flatten=True)).select(["path", "partition.batch"]).to_pylist()
    stale: dict[str, list[str]] = {}
    for action in actions:
        # The log holds each path URI-escaped (`batch=a%253Db/...` for the folder `batch=a%3Db`).
        path, batch = urllib.parse.unquote(action["path"]), action["partition.batch"]
        reasons = []
        folder = writer.partition_folder(batch)
        if not path.startswith(folder + "/"):
            reasons.append(f"{path} is not under {folder}/")
        with filesystem.open_input_file(path) as handle:
            file_schema = pq.read_schema(handle)
        for field in file_schema:
            index = schema.get_field_index(field.name)
            if index >= 0 and not writer.same_parquet_kind(field.type, schema.field(index).type):
                reasons.append(f"{path} stores {field.name} as {field.type}, the table says {schema.field(index).type}")
        if reasons:
            stale.setdefault(batch, []).extend(reasons)
    return stale


def migrate_partitions(root: str, names=TABLES, log=print) -> dict[str, list[str]]:
    """Rewrites every stale partition of the named tables; returns {table: [batches rewritten]}."""
    done: dict[str, list[str]] = {}
    for name in names:
        for batch, reasons in sorted(stale_partitions(root, name).items()):
            log(f"{name} batch {batch!r}: {reasons[0]}" + (f" (and {len(reasons) - 1} more)" if len(reasons) > 1 else ""))
            with partition_lock(root, name, batch):
                rewrite_partition(root, name, batch)
            done.setdefault(name, []).append(batch)
    return done


def rewrite_partition(root: str, name: str, batch: str) -> None:
    """Reads one partition and writes it back in one commit (streamed: one row group in memory)."""
    dataset = io.open_table(root, name).to_pyarrow_dataset()
    scanner = dataset.scanner(filter=pc.field("batch") == batch, batch_size=writer.ROW_GROUP_ROWS, batch_readahead=2, fragment_readahead=1)
    io.replace_partition(root, name, batch, scanner.to_reader())


def main(argv: list[str] | None = None) -> int:
    from embedding_assets.lib.settings import env

    parser = argparse.ArgumentParser(prog="python -m embedding_assets.lib.lake.migrate", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("lake", nargs="?", default=None, help="the lake root (default: $EMBEDDING_LAKE)")
    parser.add_argument("--check", action="store_true", help="list stale partitions and exit 1 if any, writing nothing")
    args = parser.parse_args(argv)
    root = args.lake or env("EMBEDDING_LAKE")
    if args.check:
        stale = {name: stale_partitions(root, name) for name in TABLES}
        for name, partitions in stale.items():
            for batch, reasons in sorted(partitions.items()):
                print(f"{name} batch {batch!r}: {reasons[0]}")
        return 1 if any(stale.values()) else 0
    done = migrate_partitions(root)
    print(f"rewrote {sum(map(len, done.values()))} partitions" + "".join(f"\n  {n}: {', '.join(b)}" for n, b in done.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
