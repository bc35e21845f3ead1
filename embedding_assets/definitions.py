"""The code location: every asset, check, job, sensor, resource and the executor, in one place.

    raw_documents -> chunks -> length_buckets -> embeddings -> document_embeddings
    (each a Delta table under EMBEDDING_LAKE, one dynamic partition per landed batch)

Loading this module imports neither torch nor the model; the model loads in the first step
that needs it, once per process.
"""

import dagster as dg

from embedding_assets.defs.assets import ASSETS
from embedding_assets.defs.deployment import executor_def
from embedding_assets.defs.resources import LakeResource, ModelResource
from embedding_assets.defs.sensors import embed_batch_job, landing_sensor

defs = dg.Definitions(
    assets=ASSETS,
    jobs=[embed_batch_job],
    sensors=[landing_sensor],
    resources={"lake": LakeResource(), "model": ModelResource()},
    executor=executor_def(),
)
