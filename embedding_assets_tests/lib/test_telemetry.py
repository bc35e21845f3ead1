"""Step telemetry: the NVML path with a stand-in for the NVML API only; the CPU path for real.

The stand-in implements the handful of `pynvml` functions `lib.telemetry` calls; everything else
(the sampling thread, the per-device token counting through the engine's backends, the figures)
is the real code.
"""

import threading
import time
import types

import numpy as np

from embedding_assets.lib.telemetry import Telemetry


class FakeNvml(types.SimpleNamespace):
    """The NVML calls telemetry makes, answering for two GPUs with fixed utilization."""

    def __init__(self, utilization=(80, 40), fail_init=False):
        super().__init__()
        self.utilization = utilization
        self.fail_init = fail_init
        self.calls: list[str] = []
        self.initialized = False
        self.lock = threading.Lock()

    def nvmlInit(self):
        self.calls.append("init")
        if self.fail_init:
            raise RuntimeError("NVML Shared Library Not Found")
        self.initialized = True

    def nvmlShutdown(self):
        self.calls.append("shutdown")
        self.initialized = False

    def nvmlDeviceGetHandleByIndex(self, index):
        self.calls.append(f"handle {index}")
        return ("gpu", index)

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.calls.append(f"uuid {uuid}")
        return ("gpu", uuid)

    def nvmlDeviceGetUtilizationRates(self, handle):
        index = handle[1] if isinstance(handle[1], int) else 0
        return types.SimpleNamespace(gpu=self.utilization[index], memory=self.utilization[index] // 2)

    def nvmlDeviceGetMemoryInfo(self, handle):
        return types.SimpleNamespace(used=(1 + (handle[1] if isinstance(handle[1], int) else 0)) << 30, total=80 << 30)


class FakeBatch:
    def __init__(self, rows, tokens):
        self.rows = list(range(rows))
        self.real_tokens = tokens


class FakeBackend:
    def __init__(self, device):
        self.device = device
        self.dimension = 4

    def encode(self, batch):
        time.sleep(0.01)
        return np.zeros((len(batch.rows), self.dimension), np.float32)


class FakeEngine:
    def __init__(self, devices):
        self.backends = [FakeBackend(d) for d in devices]


def test_nvml_utilization_is_sampled_per_cuda_device_during_the_step(monkeypatch):
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    nvml = FakeNvml()
    engine = FakeEngine(["cuda:0", "cuda:1"])
    with Telemetry(["cuda:0", "cuda:1"], interval_s=0.01, nvml=nvml) as telemetry:
        with telemetry.count_tokens(engine):
            assert all(type(b).__name__ == "_Counted" for b in engine.backends)
            for _ in range(3):
                engine.backends[0].encode(FakeBatch(8, 1000))
            engine.backends[1].encode(FakeBatch(4, 500))
            assert engine.backends[0].dimension == 4  # everything else passes through
        time.sleep(0.05)
    assert all(isinstance(b, FakeBackend) for b in engine.backends)  # restored
    figures = telemetry.figures()
    assert nvml.calls[:3] == ["init", "handle 0", "handle 1"] and nvml.calls[-1] == "shutdown"
    assert figures["cuda:0/utilization_mean_pct"] == 80.0 and figures["cuda:1/utilization_max_pct"] == 40.0
    assert figures["cuda:0/memory_busy_mean_pct"] == 40.0
    assert figures["cuda:1/memory_used_max_bytes"] == 2 << 30
    assert figures["cuda:0/utilization_samples"] >= 3
    assert figures["cuda:0/tokens"] == 3000 and figures["cuda:1/tokens"] == 500
    assert figures["cuda:0/tokens_per_s"] > figures["cuda:1/tokens_per_s"] > 0
    assert 0 < figures["cuda:1/busy_fraction"] < figures["cuda:0/busy_fraction"] <= 1
    assert "gpu/nvml" not in figures and "cpu/utilization_pct" not in figures


def test_cuda_visible_devices_maps_ordinals_to_nvml_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,GPU-8a1b")
    nvml = FakeNvml()
    with Telemetry(["cuda:0", "cuda:1"], interval_s=10, nvml=nvml):
        pass
    assert "handle 3" in nvml.calls and "uuid GPU-8a1b" in nvml.calls


def test_without_nvml_nothing_is_sampled_and_nothing_fails(monkeypatch):
    failing = FakeNvml(fail_init=True)
    with Telemetry(["cuda:0"], interval_s=0.01, nvml=failing) as telemetry:
        time.sleep(0.03)
    figures = telemetry.figures()
    assert not any("utilization" in key for key in figures)
    assert "NVML unavailable" in figures["gpu/nvml"]
    # The package itself absent: no error either.
    import embedding_assets.lib.telemetry as module

    monkeypatch.setattr(module, "_load_nvml", lambda: None)
    with Telemetry(["cuda:0"], interval_s=0.01) as telemetry:
        pass
    assert not any("utilization" in key for key in telemetry.figures())


def test_cpu_steps_report_cpu_utilization_and_threads():
    engine = FakeEngine(["cpu"])
    with Telemetry(["cpu"], interval_s=0.01) as telemetry:
        with telemetry.count_tokens(engine):
            engine.backends[0].encode(FakeBatch(2, 100))
        deadline = time.perf_counter() + 0.2
        while time.perf_counter() < deadline:  # some CPU work to measure
            sum(i * i for i in range(1000))
    figures = telemetry.figures()
    assert figures["cpu/utilization_pct"] > 0 and figures["cpu/cpu_seconds"] > 0
    assert figures["cpu/threads_max"] >= 2  # this thread and the sampler
    assert figures["cpu/available_cpus"] >= 1
    assert figures["cpu/tokens"] == 100 and figures["cpu/tokens_per_s"] > 0
