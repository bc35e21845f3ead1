"""The core of embedding_assets, with no Dagster imports.

Everything here runs on a machine that has only torch, transformers, tokenizers and pyarrow
(a GPU node, a benchmark box): ingest, chunking, bucketing, batching, the encoder engine and
the Delta read/write helpers (the last two import deltalake/polars lazily).
"""
