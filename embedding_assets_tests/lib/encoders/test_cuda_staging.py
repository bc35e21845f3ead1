"""The CUDA feed: pinned host buffers reused round-robin, asynchronous copies on a side stream, and the
engine's pipeline (batch n+1 staged before batch n is awaited).

There is no GPU on the test machines, so CUDA is mocked here, and only here: `FakeTorch` stands in
for torch's pinned allocation, streams, events and host->device copies with numpy arrays and a log
of calls. What is asserted is the CPU-visible logic: buffer reuse and growth, shapes, that a slot
is never rewritten before its previous copy finished, and the order of stage / launch / finish.
"""

import contextlib

import numpy as np

from embedding_assets.lib.batching import collate
from embedding_assets.lib.encoders.engine import EncoderEngine, EngineStats
from embedding_assets.lib.encoders.torch_backend import PinnedStaging


class FakeTensor:
    def __init__(self, array, log, device="cpu", pinned=False):
        self.array, self.log, self.device, self.pinned = array, log, device, pinned

    def numel(self):
        return self.array.size

    def __getitem__(self, index):
        return FakeTensor(self.array[index], self.log, self.device, self.pinned)

    def copy_(self, other):
        self.array[...] = other.array
        return self

    def to(self, device, non_blocking=False):
        self.log.append(("copy", device, non_blocking, self.pinned, self.array.size))
        return FakeTensor(self.array.copy(), self.log, device)

    def view(self, shape):
        return FakeTensor(self.array.reshape(shape), self.log, self.device)


class FakeTorch:
    """torch, as far as PinnedStaging uses it (CUDA mocked)."""

    int64 = np.int64

    def __init__(self):
        self.log = []
        self.allocations = []
        torch = self

        class Stream:
            def __init__(self, device=None):
                self.device = device

        class Event:
            def __init__(self):
                self.recorded = self.synced = False
                torch.events.append(self)

            def record(self, stream):
                self.recorded = True
                torch.log.append(("record", stream))

            def synchronize(self):
                self.synced = True
                torch.log.append(("sync", self))

        self.events = []
        self.cuda = type("cuda", (), {})()
        self.cuda.Stream, self.cuda.Event = Stream, Event
        self.current = None

        @contextlib.contextmanager
        def stream(s):
            self.current = s
            try:
                yield
            finally:
                self.current = None

        self.cuda.stream = stream

    def empty(self, n, dtype, pin_memory=False):
        self.allocations.append(n)
        return FakeTensor(np.zeros(n, dtype=dtype), self.log, pinned=pin_memory)

    def from_numpy(self, array):
        return FakeTensor(array, self.log)


def _batch(rng, rows, longest):
    return collate([rng.integers(1, 999, size=int(k)) for k in rng.integers(1, longest + 1, size=rows)])


def test_staging_copies_through_reused_pinned_buffers_on_the_side_stream():
    torch, rng = FakeTorch(), np.random.default_rng(0)
    staging = PinnedStaging(torch, "cuda:0", slots=2)
    batches = [_batch(rng, 8, 20), _batch(rng, 4, 10), _batch(rng, 8, 20), _batch(rng, 16, 40)]
    for batch in batches:
        ids, mask, ready = staging.to_device(batch)
        assert ids.device == mask.device == "cuda:0"
        np.testing.assert_array_equal(ids.array, batch.input_ids)  # shapes and values intact
        np.testing.assert_array_equal(mask.array, batch.attention_mask)
        assert ready.recorded
    copies = [entry for entry in torch.log if entry[0] == "copy"]
    assert all(device == "cuda:0" and non_blocking and pinned for _, device, non_blocking, pinned, _ in copies)
    # Two slots, allocated once each, and a slot grows only when a batch outgrows it (doubling).
    sizes = [b.input_ids.size * 2 for b in batches]
    assert torch.allocations[:2] == sizes[:2]
    assert len(torch.allocations) == 2 + (sizes[2] > sizes[0]) + (sizes[3] > max(sizes[1], 2 * sizes[1]))


def test_a_slot_is_rewritten_only_after_its_previous_copy_finished():
    torch, rng = FakeTorch(), np.random.default_rng(1)
    staging = PinnedStaging(torch, "cuda:0", slots=2)
    readies = [staging.to_device(_batch(rng, 4, 8))[2] for _ in range(5)]
    # Batch k (k >= 2) reuses batch k-2's slot: it waited for that copy, and for no other.
    assert [e.synced for e in readies] == [True, True, True, False, False]
    syncs = [entry[1] for entry in torch.log if entry[0] == "sync"]
    assert syncs == readies[:3]


class PipelinedBackend:
    """A backend with the CUDA pipeline's interface, recording the order of its calls (GPU mocked)."""

    name, device, precision, dimension, pooling, recipe = "torch", "cuda:0", "fp16", 3, None, None
    pipelined = True

    def __init__(self, oom_rows=None):
        self.calls, self.oom_rows = [], oom_rows

    def _vectors(self, batch):
        return np.repeat(batch.input_ids[:, :1].astype(np.float32), 3, axis=1)

    def stage(self, batch):
        self.calls.append(("stage", int(batch.rows[0])))
        return (batch,)

    def launch(self, staged):
        batch = staged[0]
        self.calls.append(("launch", int(batch.rows[0])))
        if self.oom_rows is not None and len(batch.rows) > self.oom_rows:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return batch

    def finish(self, out):
        self.calls.append(("finish", int(out.rows[0])))
        return self._vectors(out)

    def encode(self, batch):
        if self.oom_rows is not None and len(batch.rows) > self.oom_rows:
            raise RuntimeError("CUDA out of memory. Tried to allocate 1 GiB")
        return self._vectors(batch)


def _engine(backend, in_flight=2):
    return EncoderEngine(model="m", backends=[backend], tokenizer=None, fingerprint="m/fp16", in_flight=in_flight)


def _batches(n):
    return [collate([np.array([100 + i, 7])], rows=np.array([i])) for i in range(n)]


def test_engine_launches_the_next_batch_before_it_waits_for_the_current_one():
    backend = PipelinedBackend()
    out = list(_engine(backend).encode_batches(_batches(4)))
    assert [int(b.rows[0]) for b, _ in out] == [0, 1, 2, 3]  # in order, every batch once
    assert [v[0, 0] for _, v in out] == [100, 101, 102, 103]
    # Batch n+1 is staged and launched (queued behind batch n) before batch n is awaited.
    assert backend.calls == [
        ("stage", 0), ("launch", 0),
        ("stage", 1), ("launch", 1), ("finish", 0),
        ("stage", 2), ("launch", 2), ("finish", 1),
        ("stage", 3), ("launch", 3), ("finish", 2),
        ("finish", 3),
    ]


def test_the_engine_keeps_up_to_in_flight_batches_launched_and_returns_them_in_order():
    backend = PipelinedBackend()
    out = list(_engine(backend, in_flight=3).encode_batches(_batches(5)))
    assert [int(b.rows[0]) for b, _ in out] == [0, 1, 2, 3, 4]
    assert backend.calls == [
        ("stage", 0), ("launch", 0), ("stage", 1), ("launch", 1),
        ("stage", 2), ("launch", 2), ("finish", 0),
        ("stage", 3), ("launch", 3), ("finish", 1),
        ("stage", 4), ("launch", 4), ("finish", 2),
        ("finish", 3), ("finish", 4),
    ]


def test_pipelined_out_of_memory_halves_the_batch_and_loses_no_row():
    backend = PipelinedBackend(oom_rows=2)
    rows = [np.array([100 + i, 7]) for i in range(6)]
    stats = EngineStats()
    [(batch, vectors)] = list(_engine(backend).encode_batches([collate(rows)], stats))
    np.testing.assert_array_equal(vectors[:, 0], np.arange(100, 106))
    assert stats.oom_splits >= 1 and stats.rows == 6
