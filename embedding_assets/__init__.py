"""embedding_assets: bulk text embeddings as partitioned Delta tables, orchestrated by Dagster.

`embedding_assets.lib` is the framework-free core (ingest, chunking, bucketing, the encoder
engine, Delta helpers); `embedding_assets.defs` is the thin Dagster layer over it, and
`embedding_assets.definitions` is the code location's entry point.
"""
