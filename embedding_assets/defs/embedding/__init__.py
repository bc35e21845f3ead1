"""The embedding domain: chunks -> length_buckets -> embeddings -> document_embeddings, with the
model resource and the blocking checks on the vectors."""

import dagster as dg

from embedding_assets.defs.embedding.assets import ASSETS
from embedding_assets.defs.embedding.resources import ModelResource

defs = dg.Definitions(assets=ASSETS, resources={"model": ModelResource()})
