"""The code location: every asset, check, job, sensor, resource and the executor, in one place.

    raw_documents (+ rejected_documents) -> chunks -> length_buckets -> embeddings -> document_embeddings
    (each a Delta table under EMBEDDING_LAKE, one dynamic partition per landed batch)

- `defs.ingest`: the landing sensor, the `embed_batch` job it launches, and raw_documents with
  rejected_documents (one step writes both).
- `defs.embedding`: chunks, length_buckets, embeddings (with its blocking checks) and
  document_embeddings, and the model resource.
- Project-wide: the lake resource both domains read, and the executor (`defs.deployment`:
  in-process locally, a Kubernetes Job per step on k8s).

Loading this module imports neither torch nor the model; the model loads in the first step
that needs it, once per process.
"""

import dagster as dg

from embedding_assets.defs import embedding, ingest
from embedding_assets.defs.deployment import executor_def
from embedding_assets.defs.resources import LakeResource

ASSETS = [*ingest.ASSETS, *embedding.ASSETS]

defs = dg.Definitions.merge(
    ingest.defs,
    embedding.defs,
    dg.Definitions(resources={"lake": LakeResource()}, executor=executor_def()),
)
