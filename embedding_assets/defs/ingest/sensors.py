"""The landing sensor and the partition sync it shares with `embedding-assets sync`.

Each tick the sensor takes every batch's landing fingerprint (`lib.storage.landing.batch_states`:
names, sizes and ctime/mtime/inode of its files, or size and last-modified time in object storage)
and compares it with the data version of the latest raw_documents materialization of that partition, read from the
instance in one query. A batch runs when the two differ and it has settled: a new batch, a file
added (whatever its mtime), rewritten (even with its mtime put back) or deleted, or every file
deleted (the run then empties the batch downstream). A batch whose files match what was last
ingested never runs again, so the first tick after `make demo` requests nothing.

The cursor stays small whatever the number of batches: the fingerprints of runs requested but not
yet ingested (at most `MAX_PENDING`), and short digests of the invalid folders already logged
(each is logged once; the tick's skip reason names them every time).
"""

import hashlib
import json

import dagster as dg
from dagster._core.events import DagsterEventType

from embedding_assets.defs.partitions import batches
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib.lake import tables
from embedding_assets.lib.storage import READY_MARKER, new_batches
from embedding_assets.lib.storage.landing import BatchState, batch_states

embed_batch_job = dg.define_asset_job(
    "embed_batch",
    selection=dg.AssetSelection.assets(tables.RAW, tables.REJECTED).downstream(),
    partitions_def=batches,
    description="Ingest, chunk, tokenize and embed one landed batch, then build its document vectors.",
)

CURSOR_VERSION = 2
MAX_PENDING = 1000
MAX_LOGGED = 512
FINGERPRINT_TAG = "embedding_assets/landing_fingerprint"
_DATA_VERSION_TAG = "dagster/data_version"


def sync_partitions(instance: dg.DagsterInstance, landing: str, settle_seconds: float = 0.0) -> tuple[list[str], list[str], list[str]]:
    """Registers every ready landed batch the instance does not know yet. Returns (added, waiting, invalid)."""
    known = set(instance.get_dynamic_partitions(batches.name))
    added, waiting, invalid = new_batches(landing, known, settle_seconds)
    if added:
        instance.add_dynamic_partitions(batches.name, added)
    return added, waiting, invalid


def ingested_fingerprints(instance: dg.DagsterInstance, names: list[str]) -> dict[str, str]:
    """{batch: landing fingerprint of its latest raw_documents materialization} (its data version)."""
    if not names:
        return {}
    tags = instance.event_log_storage.get_latest_tags_by_partition(
        dg.AssetKey(tables.RAW), DagsterEventType.ASSET_MATERIALIZATION, [_DATA_VERSION_TAG], asset_partitions=names
    )
    return {name: values[_DATA_VERSION_TAG] for name, values in tags.items() if _DATA_VERSION_TAG in values}


def _load_cursor(raw: str | None) -> dict:
    try:
        cursor = json.loads(raw) if raw else {}
    except json.JSONDecodeError:
        cursor = {}
    if not isinstance(cursor, dict) or cursor.get("v") != CURSOR_VERSION:
        return {"v": CURSOR_VERSION, "pending": {}, "logged": []}  # older cursors: the instance knows what ran
    return {"v": CURSOR_VERSION, "pending": dict(cursor.get("pending", {})), "logged": list(cursor.get("logged", []))}


def _digest(name: str, reason: str) -> str:
    return hashlib.blake2b(f"{name}\0{reason}".encode("utf-8", "surrogateescape"), digest_size=6).hexdigest()


def _names(items: list[str], limit: int = 10) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


@dg.sensor(
    job=embed_batch_job,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Runs the whole chain for each landed batch whose files changed since it was last ingested "
    "(new, added, rewritten or deleted files), once it has settled; says in each tick why a batch waits.",
)
def landing_sensor(context: dg.SensorEvaluationContext, lake: LakeResource):
    landing, settle = lake.landing_root, lake.settle_time
    cursor = _load_cursor(context.cursor)
    pending: dict[str, str] = cursor["pending"]
    states, invalid = batch_states(landing)

    # Invalid folders: logged once each, named in every skip reason.
    digests = {_digest(name, why): (name, why) for name, why in invalid.items()}
    logged = [d for d in cursor["logged"] if d in digests]
    for digest, (name, why) in digests.items():
        if digest not in logged:
            context.log.warning(f"landing folder {name!r} is skipped: {why}")
            logged.append(digest)

    ingested = ingested_fingerprints(context.instance, [s.name for s in states])
    known = set(context.instance.get_dynamic_partitions(batches.name))
    present = {s.name for s in states}
    pending = {b: fp for b, fp in pending.items() if b in present and ingested.get(b) != fp}

    run_requests, to_add = [], []
    up_to_date, in_flight, settling, empty = [], [], [], []
    for state in states:
        fingerprint = state.fingerprint
        if ingested.get(state.name) == fingerprint:
            up_to_date.append(state.name)
        elif pending.get(state.name) == fingerprint:
            in_flight.append(state.name)
        elif state.n_files == 0 and state.name not in ingested:
            empty.append(state.name)  # nothing landed yet (an emptied, already ingested batch does run)
        elif not state.settled(settle):
            settling.append(f"{state.name} ({state.settles_in(settle):.0f} s to go, or add {READY_MARKER})")
        else:
            if state.name not in known:
                to_add.append(state.name)
            run_requests.append(_request(state))
            pending[state.name] = fingerprint
    while len(pending) > MAX_PENDING:  # the oldest requests: their run keys still stop duplicates
        pending.pop(next(iter(pending)))

    new_cursor = json.dumps({"v": CURSOR_VERSION, "pending": pending, "logged": logged[-MAX_LOGGED:]}, sort_keys=True)
    if run_requests:
        return dg.SensorResult(
            run_requests=run_requests,
            dynamic_partitions_requests=[batches.build_add_request(to_add)] if to_add else [],
            cursor=new_cursor,
        )
    if new_cursor != context.cursor:
        context.update_cursor(new_cursor)
    return dg.SkipReason(_skip_reason(landing, up_to_date, in_flight, settling, empty, invalid))


def _request(state: BatchState) -> dg.RunRequest:
    # The run key is the batch's fingerprint: one run per state of the files, never two.
    return dg.RunRequest(
        partition_key=state.name,
        run_key=f"{state.name}@{state.fingerprint}",
        tags={FINGERPRINT_TAG: state.fingerprint},
    )


def _skip_reason(landing: str, up_to_date: list[str], in_flight: list[str], settling: list[str], empty: list[str], invalid: dict[str, str]) -> str:
    if not (up_to_date or in_flight or settling or empty or invalid):
        return f"no batches under {landing}"
    parts = [f"no batch under {landing} has changed since it was last ingested ({len(up_to_date)} up to date)"]
    if in_flight:
        parts.append(f"run requested, not yet ingested: {_names(in_flight)}")
    if settling:
        parts.append(f"still settling (files changed less than EMBEDDING_SETTLE_SECONDS ago): {_names(settling)}")
    if empty:
        parts.append(f"no readable files yet: {_names(empty)}")
    if invalid:
        parts.append("cannot be batches: " + _names([f"{name!r} ({why})" for name, why in invalid.items()]))
    return "; ".join(parts)
