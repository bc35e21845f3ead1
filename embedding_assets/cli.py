"""`embedding-assets`: sync landed batches, search the lake, tune the batch config, build a demo corpus.

    embedding-assets sync                      register landed batches as partitions
    embedding-assets search "text" [--batch B] [-k N]
    embedding-assets summary [--batch B]       row counts of every table
    embedding-assets tune [--quick]            measure and store the best token budget (in the lake)
    embedding-assets migrate-partitions [--check]  rewrite partitions an older release wrote
    embedding-assets demo-corpus [--batch demo]
"""

from __future__ import annotations

import argparse
import os
import sys

from embedding_assets.lib.settings import Settings


def _sync(args, settings: Settings) -> int:
    import dagster as dg

    from embedding_assets.defs.ingest.sensors import sync_partitions

    if not os.environ.get("DAGSTER_HOME"):
        print("DAGSTER_HOME is not set: partitions would go to a throw-away instance. Set it to your Dagster instance folder.", file=sys.stderr)
        return 2
    os.makedirs(os.environ["DAGSTER_HOME"], exist_ok=True)
    with dg.DagsterInstance.get() as instance:
        added, waiting, invalid = sync_partitions(instance, settings.landing, settle_seconds=0.0)
    for name in added:
        print(f"added partition {name}")
    for name in invalid:
        print(f"skipped folder {name!r}: not a valid batch name (letters, digits, . _ = - only)", file=sys.stderr)
    if not added:
        print(f"no new batches under {settings.landing}")
    return 0


def _engine(settings: Settings):
    from embedding_assets.defs.embedding.resources import ModelResource

    return ModelResource().engine()


def _search(args, settings: Settings) -> int:
    from embedding_assets.lib.search import search

    hits = search(settings.lake, _engine(settings), args.query, k=args.k, batch=args.batch)
    for rank, hit in enumerate(hits, 1):
        snippet = " ".join(hit.text.split())[:160]
        print(f"{rank:>2}. {hit.score:.4f}  {hit.batch}  {hit.doc_id}\n    {snippet}")
    return 0


def _summary(args, settings: Settings) -> int:
    from embedding_assets.lib import lake
    from embedding_assets.lib.lake import tables

    import pyarrow.compute as pc

    for name in (tables.RAW, tables.REJECTED, tables.CHUNKS, tables.BUCKETS, tables.EMBEDDINGS, tables.DOCUMENTS):
        where = None if args.batch is None else pc.field("batch") == args.batch
        table = lake.read_table(settings.lake, name, columns=["batch"], filter=where)
        rows = 0 if table is None else table.num_rows
        print(f"{name:<20} {rows:>8} rows  {lake.table_uri(settings.lake, name)}")
    return 0


def _tune(args, settings: Settings) -> int:
    from embedding_assets.lib.encoders.tuning import tune

    # Stored in the lake (every pod's model resource reads it from there) and in the local cache.
    result = tune(_engine(settings), quick=args.quick, cache_dir=settings.cache_dir, lake_root=settings.lake)
    print(f"chosen token budget: {result['chosen']} ({result['device']}, {result['precision']}); stored in {result['lake_table']} and {result['path']}")
    return 0


def _migrate_partitions(args, settings: Settings) -> int:
    from embedding_assets.lib.lake import migrate

    return migrate.main([settings.lake, *(["--check"] if args.check else [])])


def _demo_corpus(args, settings: Settings) -> int:
    from embedding_assets.lib.demo import build_demo_corpus

    out = os.path.join(os.path.expanduser(settings.landing), args.batch)
    info = build_demo_corpus(out)
    print(f"landed demo batch {args.batch!r}: {info['files']} files, {info['records']} records in {out}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="embedding-assets", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sync", help="register every landed batch the Dagster instance does not know yet").set_defaults(run=_sync)
    p = sub.add_parser("search", help="semantic search over the embeddings table")
    p.add_argument("query")
    p.add_argument("--batch", default=None, help="search one batch (default: the whole lake)")
    p.add_argument("-k", type=int, default=5, help="how many chunks to print")
    p.set_defaults(run=_search)
    p = sub.add_parser("summary", help="row counts of every table")
    p.add_argument("--batch", default=None)
    p.set_defaults(run=_summary)
    p = sub.add_parser("tune", help="measure throughput across token budgets and store the best")
    p.add_argument("--quick", action="store_true", help="a short measurement")
    p.set_defaults(run=_tune)
    p = sub.add_parser("migrate-partitions", help="rewrite partitions an older release wrote (partition folders, vector types)")
    p.add_argument("--check", action="store_true", help="list them and exit 1 if any, writing nothing")
    p.set_defaults(run=_migrate_partitions)
    p = sub.add_parser("demo-corpus", help="land a demo batch built from Python's own documentation")
    p.add_argument("--batch", default="demo")
    p.set_defaults(run=_demo_corpus)
    args = parser.parse_args(argv)
    try:
        return args.run(args, Settings.from_env())
    except (RuntimeError, ValueError) as exc:
        print(f"embedding-assets {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
