"""The stages as plain functions, one module each: every stage reads one partition of the lake and
replaces one partition. Dagster assets call these; so do benchmarks and the GPU check (which have
no Dagster). Each returns a small dict of numbers that the asset reports as metadata.

ingest (raw_documents) -> chunks -> buckets (length_buckets) -> embed (embeddings) -> documents
(document_embeddings). The tables' names and schemas are in `embedding_assets.lib.lake.tables`.
"""

from embedding_assets.lib.stages.buckets import BUCKET_WIDTH, bucket_batch
from embedding_assets.lib.stages.chunks import chunk_batch
from embedding_assets.lib.stages.documents import document_vectors
from embedding_assets.lib.stages.embed import EmbedPlan, embed_batch, plan_embeddings
from embedding_assets.lib.stages.ingest import AllDocumentsRejected, ingest_batch

__all__ = [
    "AllDocumentsRejected", "BUCKET_WIDTH", "EmbedPlan", "bucket_batch", "chunk_batch", "document_vectors",
    "embed_batch", "ingest_batch", "plan_embeddings",
]
