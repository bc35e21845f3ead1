"""The landing sensor and the partition sync it shares with `embedding-assets sync`."""


import json

import dagster as dg

from embedding_assets.defs.partitions import batches
from embedding_assets.lib.storage import landed_batches, new_batches
from embedding_assets.lib.settings import env

embed_batch_job = dg.define_asset_job(
    "embed_batch",
    selection=dg.AssetSelection.assets("raw_documents").downstream(),
    partitions_def=batches,
    description="Ingest, chunk, tokenize and embed one landed batch, then build its document vectors.",
)


def sync_partitions(instance: dg.DagsterInstance, landing: str, settle_seconds: float = 0.0) -> tuple[list[str], list[str], list[str]]:
    """Registers every ready landed batch the instance does not know yet. Returns (added, waiting, invalid)."""
    known = set(instance.get_dynamic_partitions(batches.name))
    added, waiting, invalid = new_batches(landing, known, settle_seconds)
    if added:
        instance.add_dynamic_partitions(batches.name, added)
    return added, waiting, invalid


@dg.sensor(
    job=embed_batch_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Turns each newly landed (and settled) batch into a partition and a run of the whole chain.",
)
def landing_sensor(context: dg.SensorEvaluationContext):
    landing = env("EMBEDDING_LANDING")
    settle = float(env("EMBEDDING_SETTLE_SECONDS"))
    requested: dict[str, float] = json.loads(context.cursor) if context.cursor else {}
    found, invalid = landed_batches(landing)
    for name in invalid:
        context.log.warning(f"landing folder {name!r} is not a valid batch name (letters, digits, . _ = - only); skipped")
    known = set(context.instance.get_dynamic_partitions(batches.name))
    to_add, run_requests = [], []
    for batch in found:
        if not batch.ready(settle):
            continue
        if requested.get(batch.name) == batch.newest_mtime:
            continue
        if batch.name not in known:
            to_add.append(batch.name)
        # The run key includes the batch's newest modification time: a batch whose files change
        # later gets one new run (which re-embeds only what changed), never two for one state.
        run_requests.append(dg.RunRequest(partition_key=batch.name, run_key=f"{batch.name}@{batch.newest_mtime:.6f}"))
        requested[batch.name] = batch.newest_mtime
    if not run_requests:
        return dg.SkipReason(f"no new settled batches under {landing}")
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=[batches.build_add_request(to_add)] if to_add else [],
        cursor=json.dumps(requested, sort_keys=True),
    )
