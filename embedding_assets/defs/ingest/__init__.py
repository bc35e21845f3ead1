"""The ingest domain: landed batches -> partitions and runs (the landing sensor) -> raw_documents."""

import dagster as dg

from embedding_assets.defs.ingest.assets import ASSETS
from embedding_assets.defs.ingest.sensors import embed_batch_job, landing_sensor

defs = dg.Definitions(assets=ASSETS, jobs=[embed_batch_job], sensors=[landing_sensor])
