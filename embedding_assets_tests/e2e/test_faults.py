"""Fault injection: killed processes, commits that fail half-way, concurrent writers, retries and a
model change that fails half-way. Real processes, real Delta tables, the real bundled model.

Each test would fail without the behaviour it names: a re-run that does not resume from the
staging checkpoints embeds everything again; an append retried without its transaction id writes
its rows twice; a first writer that streams its rows loses the race to create the table; a
partition lock that outlives its holder blocks the retry; a fingerprint change that writes
straight into the embeddings partition shows readers a mix.
"""

import contextlib
import dataclasses
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import dagster as dg
import deltalake
from deltalake.exceptions import CommitFailedError

from embedding_assets.definitions import ASSETS
from embedding_assets.defs.stage import RETRY
from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib import lake, stages
from embedding_assets.lib.lake import tables

BIN = os.path.dirname(sys.executable)
BATCH = "b1"
WORDS = (
    "delta table partition vector model token batch commit stream reader writer column schema "
    "river mountain garden window engine signal harbor market letter planet winter summer "
    "quietly slowly carefully often rarely always never bright heavy narrow ancient modern "
    "builds reads writes measures compares stores returns keeps moves opens closes finds "
    "the a every each some many few one two three of in on with under over between after"
).split()


def prose(seed: int, sentences: int) -> str:
    """Deterministic English-like text: distinct per seed, about 12 tokens a sentence."""
    rng = random.Random(seed)
    out = []
    for _ in range(sentences):
        words = [rng.choice(WORDS) for _ in range(rng.randint(7, 12))]
        out.append(" ".join(words).capitalize() + ".")
    return f"Document {seed}. " + " ".join(out)


def write_docs(batch_dir: str, docs: dict[str, str]) -> None:
    os.makedirs(batch_dir, exist_ok=True)
    for name, text in docs.items():
        with open(os.path.join(batch_dir, name), "w", encoding="utf-8") as handle:
            handle.write(text)


def engine():
    """The bundled model, loaded once per test process (the resource caches it)."""
    return ModelResource().engine()


def prepare(dirs, docs: dict[str, str], batch: str = BATCH) -> None:
    """raw_documents, chunks and length_buckets for a batch, with the stage functions."""
    write_docs(os.path.join(dirs["landing"], batch), docs)
    tokenizer = engine().tokenizer
    stages.ingest_batch(dirs["landing"], dirs["lake"], batch, 2**20, log=quiet)
    stages.chunk_batch(dirs["lake"], batch, tokenizer, None, 32, log=quiet)
    stages.bucket_batch(dirs["lake"], batch, tokenizer, log=quiet)


def resources(dirs, commit_seconds: float = 0.0) -> dict:
    return {"lake": LakeResource(landing=dirs["landing"], lake=dirs["lake"], commit_seconds=commit_seconds), "model": ModelResource()}


def materialize(dirs, instance, selection, batch: str = BATCH, raise_on_error: bool = True):
    return dg.materialize(
        ASSETS, selection=selection, partition_key=batch, instance=instance, resources=resources(dirs), raise_on_error=raise_on_error
    )


def metadata(result, asset: str) -> dict:
    [event] = [e for e in result.get_asset_materialization_events() if e.asset_key == dg.AssetKey(asset)]
    return {k: v.value for k, v in event.materialization.metadata.items()}


def events(result, event_type: str) -> list:
    return [e for e in result.all_events if e.event_type_value == event_type]


def assert_one_vector_per_chunk(lake_root: str, batch: str = BATCH) -> None:
    chunks = lake.read_partition(lake_root, tables.CHUNKS, batch, columns=["chunk_id", "text_hash"])
    emb = lake.read_partition(lake_root, tables.EMBEDDINGS, batch, columns=["chunk_id", "text_hash", "model"])
    assert sorted(emb.column("chunk_id").to_pylist()) == sorted(chunks.column("chunk_id").to_pylist())  # no duplicates, no gaps
    assert len(pc.unique(emb.column("model"))) == 1


def staging_rows(lake_root: str, batch: str = BATCH) -> pa.Table | None:
    """The checkpointed rows (text_hash, model) of the partition: the data files its checkpoint
    records name, read as they are (no Delta reader sees them); None before the first checkpoint."""
    records = lake.read_partition(lake_root, tables.STAGING, batch, columns=["path"])
    if records is None:
        return None
    parts = [pq.read_table(os.path.join(lake_root, tables.EMBEDDINGS, path), columns=["text_hash", "model"]) for path in records.column("path").to_pylist()]
    return pa.concat_tables(parts) if parts else pa.table({"text_hash": pa.array([], pa.string()), "model": pa.array([], pa.string())})


def quiet(message: str) -> None:
    pass


# ---------------------------------------------------------------- a killed run resumes from its checkpoints


def test_sigkill_mid_embedding_then_rerun_resumes_with_exactly_one_vector_per_chunk(dirs, tmp_path):
    # 32 one-chunk documents of ~110 tokens, ~8 batches at a 512-token budget, a checkpoint after each.
    write_docs(os.path.join(dirs["landing"], BATCH), {f"doc{i:02d}.txt": prose(i, 9) for i in range(32)})
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        materialize(dirs, instance, ["raw_documents", "chunks", "length_buckets"])
        chunks = lake.read_partition(dirs["lake"], tables.CHUNKS, BATCH, columns=["chunk_id", "text_hash"])
        distinct = len(set(chunks.column("text_hash").to_pylist()))
        assert distinct == 32

        env = {
            **os.environ,
            "DAGSTER_HOME": dirs["home"],
            "EMBEDDING_LANDING": dirs["landing"],
            "EMBEDDING_LAKE": dirs["lake"],
            "EMBEDDING_COMMIT_SECONDS": "0",  # commit after every batch: the earliest possible kill
            "EMBEDDING_TOKEN_BUDGET": "512",
            "EMBEDDING_DEVICE": "cpu",
            "HF_HUB_OFFLINE": "1",
        }
        log_path = tmp_path / "killed_run.log"
        command = [f"{BIN}/dagster", "asset", "materialize", "-m", "embedding_assets.definitions", "--select", "embeddings", "--partition", BATCH]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 300
            while True:
                assert proc.poll() is None, f"the run ended before its first checkpoint:\n{log_path.read_text()[-4000:]}"
                assert time.monotonic() < deadline, f"no checkpoint within 300 s:\n{log_path.read_text()[-4000:]}"
                staged = staging_rows(dirs["lake"])
                if staged is not None and staged.num_rows:
                    break
                time.sleep(0.05)
            os.killpg(proc.pid, signal.SIGKILL)  # the whole process group, like a pod eviction
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
        assert proc.returncode == -signal.SIGKILL

        staged = staging_rows(dirs["lake"])
        checkpointed = staged.num_rows
        assert 0 < checkpointed < distinct, "the kill should land mid-embedding"
        assert len(set(staged.column("text_hash").to_pylist())) == checkpointed
        emb = lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH)
        assert emb is None or emb.num_rows == 0  # nothing was swapped in by the killed run

        result = materialize(dirs, instance, ["embeddings"])
        md = metadata(result, "embeddings")
        assert md["resumed_from_checkpoint"] == checkpointed
        assert md["embedded_texts"] == distinct - checkpointed  # only what the killed run had not committed
        assert md["embedded_texts"] < distinct
        assert_one_vector_per_chunk(dirs["lake"])
        assert staging_rows(dirs["lake"]).num_rows == 0
        for check in result.get_asset_check_evaluations():
            assert check.passed, check.check_name


# ---------------------------------------------------------------- commits that fail half-way


REAL_COMMIT = deltalake.DeltaTable.create_write_transaction


def _is_staging_append(table, mode) -> bool:
    return str(table.table_uri).rstrip("/").endswith(tables.STAGING) and mode == "append"


def _parquet_files(folder: str) -> set[str]:
    return {name for name in os.listdir(folder) if name.endswith(".parquet")} if os.path.isdir(folder) else set()


def test_commit_failing_after_its_data_file_was_written_leaves_no_duplicates(dirs, monkeypatch):
    """The data file is written, the commit fails: nothing is committed, the file is deleted, and
    the retry embeds only what the earlier commits did not hold."""
    prepare(dirs, {f"d{i}.txt": prose(100 + i, 2) for i in range(12)})
    staging_appends = []
    checkpoint_files = []
    left_behind = []
    folder = os.path.join(dirs["lake"], tables.STAGING, f"batch={BATCH}")

    def crash_before_commit(self, actions, mode, *args, **kwargs):
        if _is_staging_append(self, mode):
            # A checkpoint's record: one row per data file (its rows are counted from the file it names).
            recorded = [pq.read_table(os.path.join(dirs["lake"], tables.STAGING, a.path)) for a in actions]
            staging_appends.append(sum(pc.sum(r.column("num_rows")).as_py() for r in recorded))
            checkpoint_files.append([p for r in recorded for p in r.column("path").to_pylist()])
            if len(staging_appends) == 2:
                left_behind.extend(a.path for a in actions)
                assert all(os.path.exists(os.path.join(dirs["lake"], tables.STAGING, path)) for path in left_behind)
                raise OSError("simulated crash: data file written, commit not")
        return REAL_COMMIT(self, actions, mode, *args, **kwargs)

    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", crash_before_commit)
    with pytest.raises(OSError, match="simulated crash"):
        stages.embed_batch(dirs["lake"], BATCH, engine(), token_budget=64, commit_seconds=0.0, log=quiet)
    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", REAL_COMMIT)

    assert left_behind and not any(os.path.exists(os.path.join(dirs["lake"], tables.STAGING, p)) for p in left_behind)
    # The failed checkpoint's data files in the embeddings partition's folder are gone too; the first one's stay.
    assert checkpoint_files[1] and not any(os.path.exists(os.path.join(dirs["lake"], tables.EMBEDDINGS, p)) for p in checkpoint_files[1])
    assert {os.path.basename(p) for p in checkpoint_files[0]} == _parquet_files(os.path.join(dirs["lake"], tables.EMBEDDINGS, f"batch={BATCH}"))
    committed = staging_rows(dirs["lake"])
    assert committed.num_rows == staging_appends[0]
    fingerprint = engine().fingerprint
    assert lake.transaction_version(dirs["lake"], tables.STAGING, f"embeddings/{BATCH}/{fingerprint}") == 0  # only the first commit
    referenced = {os.path.basename(u) for u in lake.open_table(dirs["lake"], tables.STAGING).file_uris()}
    assert _parquet_files(folder) == referenced  # no data file outside the log

    result = stages.embed_batch(dirs["lake"], BATCH, engine(), token_budget=64, commit_seconds=0.0, log=quiet)  # the retry
    assert result["resumed_from_checkpoint"] == staging_appends[0]
    assert result["embedded_texts"] + result["resumed_from_checkpoint"] == result["distinct_texts"]
    assert_one_vector_per_chunk(dirs["lake"])


def test_commit_that_landed_but_raised_is_not_written_again(dirs, monkeypatch):
    """An ambiguous commit (it landed, the caller saw an error): the retry must be a no-op."""
    prepare(dirs, {f"d{i}.txt": prose(200 + i, 2) for i in range(12)})
    staging_appends = []

    def lost_reply(self, actions, mode, *args, **kwargs):
        out = REAL_COMMIT(self, actions, mode, *args, **kwargs)
        if _is_staging_append(self, mode):
            staging_appends.append(len(actions))
            if len(staging_appends) == 2:
                raise CommitFailedError("simulated: the commit landed but its reply was lost")
        return out

    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", lost_reply)
    result = stages.embed_batch(dirs["lake"], BATCH, engine(), token_budget=64, commit_seconds=0.0, log=quiet)
    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", REAL_COMMIT)
    assert result["commits"] >= 3 and len(staging_appends) == result["commits"]
    assert_one_vector_per_chunk(dirs["lake"])

    # The checkpoint records just before they were cleared: one per checkpoint file, every text once
    # (one-chunk documents: a row per text).
    table = lake.open_table(dirs["lake"], tables.STAGING)
    table.load_as_version(table.version() - 1)
    records = table.to_pyarrow_table(columns=["path", "num_rows"])
    assert records.num_rows == result["commits"] == len(set(records.column("path").to_pylist()))
    assert pc.sum(records.column("num_rows")).as_py() == result["distinct_texts"]


def test_append_with_a_transaction_id_is_exactly_once(dirs, monkeypatch):
    root = dirs["lake"]
    rows = pa.table({"batch": ["p"] * 3, "x": [1, 2, 3]})
    failures: list[tuple[str, Exception]] = []  # (when, error) for the next commit

    def flaky(self, actions, mode, *args, **kwargs):
        when, error = failures.pop() if failures else (None, None)
        if when == "before":
            raise error
        out = REAL_COMMIT(self, actions, mode, *args, **kwargs)
        if when == "after":
            raise error
        return out

    monkeypatch.setattr(deltalake.DeltaTable, "create_write_transaction", flaky)
    lake.append(root, "t", rows, app_transaction=("app", 1))
    assert lake.transaction_version(root, "t", "app") == 1

    # Landed, then a retryable commit error: the retry sees the transaction version and writes nothing.
    failures.append(("after", CommitFailedError("simulated: landed, reply lost")))
    lake.append(root, "t", rows, app_transaction=("app", 2))
    # Landed, then any other error: treated as success.
    failures.append(("after", OSError("simulated: connection reset after the commit")))
    lake.append(root, "t", rows, app_transaction=("app", 3))
    # A replay of a committed version is a no-op: no new table version.
    version = lake.open_table(root, "t").version()
    lake.append(root, "t", rows, app_transaction=("app", 3))
    assert lake.open_table(root, "t").version() == version
    # A failure before anything was committed is an error, commits nothing, and leaves no data file.
    failures.append(("before", OSError("simulated: failed before anything was written")))
    with pytest.raises(OSError, match="before anything"):
        lake.append(root, "t", rows, app_transaction=("app", 4))
    assert lake.transaction_version(root, "t", "app") == 3
    assert lake.read_partition(root, "t", "p").num_rows == 9  # three appends, each exactly once
    referenced = {os.path.basename(u) for u in lake.open_table(root, "t").file_uris()}
    assert _parquet_files(os.path.join(root, "t", "batch=p")) == referenced
    # Without a transaction id, a commit that landed but raised is recognised by its files.
    failures.append(("after", OSError("simulated: reply lost")))
    lake.append(root, "t", rows)
    assert lake.read_partition(root, "t", "p").num_rows == 12


# ---------------------------------------------------------------- concurrent writers, one partition each

WRITER = textwrap.dedent("""
    import sys, time
    import pyarrow as pa
    from embedding_assets.lib import lake
    root, batch, rounds, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    while time.time() < start:
        time.sleep(0.001)
    for r in range(rounds):
        rows = pa.table({"batch": [batch] * 4, "round": [r] * 4, "i": list(range(4))})
        # Streamed and in-memory overwrites of the partition, an exactly-once append, a delete.
        data = pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches()) if r % 2 == 0 else rows
        lake.replace_partition(root, "replaced", batch, data)
        lake.append(root, "appended", rows, app_transaction=(f"writer/{batch}", r + 1))
        lake.replace_partition(root, "scratch", batch, rows)
        lake.delete_partition(root, "scratch", batch, f"i < {r % 4}")
    print("done", batch, flush=True)
""")


def test_concurrent_writers_on_different_partitions_both_succeed_and_lose_nothing(dirs, tmp_path):
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    rounds, writers = 6, ("p1", "p2", "p3")
    start = time.time() + 4  # every writer has imported its libraries by then, and the tables do not exist yet
    procs = [
        subprocess.Popen([sys.executable, str(script), dirs["lake"], batch, str(rounds), str(start)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for batch in writers
    ]
    outputs = [p.communicate(timeout=240) for p in procs]
    for batch, (out, err) in zip(writers, outputs):
        assert f"done {batch}" in out, err[-3000:]

    root = dirs["lake"]
    assert lake.partitions(root, "replaced") == list(writers)
    for batch in writers:
        last = lake.read_partition(root, "replaced", batch)
        assert sorted(last.column("i").to_pylist()) == [0, 1, 2, 3] and set(last.column("round").to_pylist()) == {rounds - 1}
        appended = lake.read_partition(root, "appended", batch)
        assert sorted(appended.column("round").to_pylist()) == sorted(r for r in range(rounds) for _ in range(4))
        assert lake.transaction_version(root, "appended", f"writer/{batch}") == rounds
        scratch = lake.read_partition(root, "scratch", batch)
        assert sorted(scratch.column("i").to_pylist()) == list(range((rounds - 1) % 4, 4))


def test_streamed_first_write_that_loses_the_create_race_still_lands(dirs, monkeypatch):
    """Another writer creates the table between our existence check and our write (deterministic)."""
    root = dirs["lake"]
    lake.replace_partition(root, "t", "other", pa.table({"batch": ["other"], "x": [0]}))
    real_exists = lake.io.exists
    stale = [True]  # the first check still sees no table: the race window

    def stale_exists(r, name):
        if stale:
            stale.pop()
            return False
        return real_exists(r, name)

    monkeypatch.setattr(lake.io, "exists", stale_exists)
    rows = pa.table({"batch": ["mine"] * 2, "x": [1, 2]})
    lake.replace_partition(root, "t", "mine", pa.RecordBatchReader.from_batches(rows.schema, rows.to_batches()))
    monkeypatch.setattr(lake.io, "exists", real_exists)
    assert sorted(lake.read_partition(root, "t", "mine").column("x").to_pylist()) == [1, 2]
    assert lake.read_partition(root, "t", "other").column("x").to_pylist() == [0]


def test_pipeline_stages_on_two_partitions_at_once_from_empty_tables(dirs):
    """Two threads run every stage for their own batch at the same time, starting with no tables."""
    for i, batch in enumerate(("left", "right")):
        write_docs(os.path.join(dirs["landing"], batch), {f"{batch}{j}.txt": prose(300 + 10 * i + j, 3) for j in range(4)})
    eng = engine()
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(batch):
        try:
            barrier.wait()
            stages.ingest_batch(dirs["landing"], dirs["lake"], batch, 2**20, log=quiet)
            stages.chunk_batch(dirs["lake"], batch, eng.tokenizer, None, 32, log=quiet)
            stages.bucket_batch(dirs["lake"], batch, eng.tokenizer, log=quiet)
            stages.embed_batch(dirs["lake"], batch, eng, token_budget=128, commit_seconds=0.0, log=quiet)
            stages.document_vectors(dirs["lake"], batch, log=quiet)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in ("left", "right")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for batch in ("left", "right"):
        assert_one_vector_per_chunk(dirs["lake"], batch)
        assert lake.read_partition(dirs["lake"], tables.DOCUMENTS, batch).num_rows == 4
        assert staging_rows(dirs["lake"], batch).num_rows == 0


# ---------------------------------------------------------------- one partition is never embedded twice at once

HOLDER = textwrap.dedent("""
    import sys, time
    from embedding_assets.lib import lake
    with lake.partition_lock(sys.argv[1], "embeddings", sys.argv[2]):
        print("locked", flush=True)
        time.sleep(600)
""")


def _hold_lock(tmp_path, lake_root: str, batch: str) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    proc = subprocess.Popen([sys.executable, str(script), lake_root, batch], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_same_partition_is_busy_while_held_and_free_once_the_holder_is_killed(dirs, tmp_path):
    holder = _hold_lock(tmp_path, dirs["lake"], BATCH)
    try:
        with pytest.raises(lake.PartitionBusy, match=f"pid {holder.pid}"):
            with lake.partition_lock(dirs["lake"], "embeddings", BATCH):
                pass
        with lake.partition_lock(dirs["lake"], "embeddings", "another-batch"):
            pass  # other partitions are not blocked
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait()
    with lake.partition_lock(dirs["lake"], "embeddings", BATCH):
        pass


def test_embeddings_step_retries_while_another_process_holds_the_partition(dirs, tmp_path, monkeypatch):
    write_docs(os.path.join(dirs["landing"], BATCH), {f"d{i}.txt": prose(400 + i, 2) for i in range(3)})
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        materialize(dirs, instance, ["raw_documents", "chunks", "length_buckets"])
        holder = _hold_lock(tmp_path, dirs["lake"], BATCH)
        real_lock = lake.partition_lock
        busy = []

        @contextlib.contextmanager
        def lock_then_kill_holder(*args):
            try:
                with real_lock(*args):
                    yield
            except lake.PartitionBusy as exc:
                busy.append(str(exc))
                holder.kill()  # the other run dies (SIGKILL); the kernel drops its lock
                holder.wait()
                raise

        monkeypatch.setattr(lake, "partition_lock", lock_then_kill_holder)
        try:
            result = materialize(dirs, instance, ["embeddings"])
        finally:
            holder.kill()
            holder.wait()
    assert len(busy) == 1 and f"pid {holder.pid}" in busy[0]
    [retry] = events(result, "STEP_UP_FOR_RETRY")
    assert "being written by" in str(retry.event_specific_data.error)
    assert_one_vector_per_chunk(dirs["lake"])


# ---------------------------------------------------------------- transient failures are retried


def test_transient_error_is_retried_by_the_retry_policy(dirs, monkeypatch):
    assert RETRY.max_retries >= 1 and RETRY.delay and RETRY.backoff == dg.Backoff.EXPONENTIAL
    write_docs(os.path.join(dirs["landing"], BATCH), {"a.txt": "A document that is read on the second attempt."})
    real = stages.ingest_batch
    attempts = []

    def flaky(*args, **kwargs):
        attempts.append(1)
        if len(attempts) == 1:
            raise OSError("simulated storage hiccup")
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "ingest_batch", flaky)
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        result = materialize(dirs, instance, ["raw_documents"])
    assert result.success and len(attempts) == 2
    assert len(events(result, "STEP_UP_FOR_RETRY")) == 1 and len(events(result, "STEP_RESTARTED")) == 1
    assert metadata(result, "raw_documents")["documents"] == 1


def test_bad_batch_fails_at_once_without_retries(dirs):
    batch_dir = os.path.join(dirs["landing"], BATCH)
    os.makedirs(batch_dir)
    open(os.path.join(batch_dir, "empty.txt"), "w").close()
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        result = materialize(dirs, instance, ["raw_documents"], raise_on_error=False)
    assert not result.success
    assert not events(result, "STEP_UP_FOR_RETRY")
    assert "every document was rejected" in str(events(result, "STEP_FAILURE")[0].event_specific_data.error)


# ---------------------------------------------------------------- a new model fingerprint


def test_new_fingerprint_keeps_old_vectors_visible_until_the_new_set_is_complete(dirs, monkeypatch):
    docs = {f"d{i}.txt": prose(500 + i, 2) for i in range(10)}
    write_docs(os.path.join(dirs["landing"], BATCH), docs)
    old = engine()
    model_label, rest = old.fingerprint.split("@", 1)
    new = dataclasses.replace(old, fingerprint=f"{model_label}@newrevision0/{rest.split('/', 1)[1]}")
    assert new.fingerprint != old.fingerprint
    with dg.instance_for_test(temp_dir=dirs["home"]) as instance:
        instance.add_dynamic_partitions("batches", [BATCH])
        materialize(dirs, instance, ["raw_documents", "chunks", "length_buckets", "embeddings"])
        table = lake.open_table(dirs["lake"], tables.EMBEDDINGS)
        before_version = table.version()
        before = lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH)
        assert set(before.column("model").to_pylist()) == {old.fingerprint}

        # The new fingerprint's run fails part-way, after some of its vectors were checkpointed.
        real_encode = new.encode_batches

        def encode_then_fail(batches, stats=None, **kwargs):
            for n, item in enumerate(real_encode(batches, stats, **kwargs)):
                if n == 2:
                    raise RuntimeError("simulated: the GPU node went away")
                yield item

        new.encode_batches = encode_then_fail
        with pytest.raises(RuntimeError, match="GPU node went away"):
            stages.embed_batch(dirs["lake"], BATCH, new, token_budget=64, commit_seconds=0.0, log=quiet)
        staged = staging_rows(dirs["lake"])
        assert staged.num_rows >= 1 and set(staged.column("model").to_pylist()) == {new.fingerprint}
        # Readers still see the old, complete set: same table version, same rows.
        assert lake.open_table(dirs["lake"], tables.EMBEDDINGS).version() == before_version
        assert lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH).equals(before)
        assert_one_vector_per_chunk(dirs["lake"])

        # A full run under the new fingerprint resumes and swaps the partition in one commit.
        new.encode_batches = real_encode
        monkeypatch.setattr(ModelResource, "engine", lambda self, log=None, lake_root=None: new)
        result = materialize(dirs, instance, ["embeddings"])
    md = metadata(result, "embeddings")
    assert md["model"] == new.fingerprint and md["resumed_from_checkpoint"] == staged.num_rows
    assert md["embedded_texts"] == md["distinct_texts"] - staged.num_rows
    checks = {c.check_name: c.passed for c in result.get_asset_check_evaluations()}
    assert checks["single_fingerprint"] and all(checks.values()), checks
    table = lake.open_table(dirs["lake"], tables.EMBEDDINGS)
    assert table.version() == before_version + 1  # one commit: old set out, new set in
    after = lake.read_partition(dirs["lake"], tables.EMBEDDINGS, BATCH)
    assert set(after.column("model").to_pylist()) == {new.fingerprint}
    assert_one_vector_per_chunk(dirs["lake"])
