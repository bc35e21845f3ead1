"""What the hardware did during a step: GPU utilization and memory, CPU use, tokens/s per device.

No Dagster here. `Telemetry(devices)` is a context manager around the embedding work:

- per CUDA device: peak memory allocated and reserved by torch's caching allocator (its peak
  counters are reset on entry), and utilization sampled on a thread through NVML (the
  `nvidia-ml-py` package, imported as `pynvml`) when it is installed and a driver answers; when it
  is not, no utilization is reported and nothing fails;
- on CPU: the process's CPU utilization (CPU seconds over wall seconds times the CPUs it may use)
  and the most threads it ran;
- per device, tokens/s: `count_tokens(engine)` wraps the engine's backends for the duration, so each
  device's tokens are counted where they are embedded.

`figures()` returns flat {name: number} pairs, e.g. `cuda:0/utilization_mean_pct`,
`cuda:0/peak_allocated_bytes`, `cuda:0/tokens_per_s`, `cpu/utilization_pct`, `cpu/threads_max`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any



def _load_nvml():
    try:
        import pynvml
    except ImportError:
        return None
    return pynvml


@dataclass
class _DeviceTally:
    tokens: int = 0
    rows: int = 0
    busy_s: float = 0.0


@dataclass
class _GpuSamples:
    utilization: list[float] = field(default_factory=list)
    memory_utilization: list[float] = field(default_factory=list)
    used_bytes: int = 0


class _Counted:
    """A backend that tallies the tokens it embeds and the time it spends (everything else passes through)."""

    def __init__(self, backend, telemetry: "Telemetry"):
        self._backend = backend
        self._telemetry = telemetry

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def encode(self, batch):
        started = time.perf_counter()
        vectors = self._backend.encode(batch)
        self._telemetry._add(self._backend.device, batch.real_tokens, len(batch.rows), started, time.perf_counter())
        return vectors


def _visible_index(ordinal: int) -> str | int:
    """The NVML identity of CUDA ordinal N: an index, or a UUID, as CUDA_VISIBLE_DEVICES maps it."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if ordinal < len(visible):
        entry = visible[ordinal]
        return int(entry) if entry.isdigit() else entry
    return ordinal


class Telemetry:
    """Samples the step's devices from `__enter__` to `__exit__`; see the module docstring."""

    def __init__(self, devices: list[str], interval_s: float = 0.5, nvml: Any = None):
        self.devices = [d.strip() for d in devices if d.strip()]
        self.cuda = [d for d in self.devices if d.startswith("cuda")]
        self.interval_s = interval_s
        self._nvml = nvml if nvml is not None else (_load_nvml() if self.cuda else None)
        self._handles: dict[str, Any] = {}
        self._samples: dict[str, _GpuSamples] = {d: _GpuSamples() for d in self.cuda}
        self._tally: dict[str, _DeviceTally] = {}
        self._first_start: float | None = None
        self._last_end: float | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._threads_max = 0
        self._cpu_start = self._cpu_end = 0.0
        self._wall_start = self._wall_end = 0.0
        self.nvml_error: str | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def __enter__(self) -> "Telemetry":
        self._wall_start = time.perf_counter()
        self._cpu_start = self._cpu_seconds()
        if self.cuda and "torch" in sys.modules:
            torch = sys.modules["torch"]
            for device in self.cuda:
                with contextlib.suppress(Exception):
                    torch.cuda.reset_peak_memory_stats(device)
        self._open_nvml()
        self._sample_once()
        self._thread = threading.Thread(target=self._run, name="telemetry", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample_once()
        self._wall_end = time.perf_counter()
        self._cpu_end = self._cpu_seconds()
        if self._handles and self._nvml is not None:
            with contextlib.suppress(Exception):
                self._nvml.nvmlShutdown()

    @contextlib.contextmanager
    def count_tokens(self, engine):
        """Counts tokens per device while embedding: wraps `engine.backends` for the duration."""
        original = list(engine.backends)
        engine.backends[:] = [_Counted(b, self) for b in original]
        try:
            yield
        finally:
            engine.backends[:] = original

    # --- sampling --------------------------------------------------------------------------

    def _open_nvml(self) -> None:
        if not self.cuda or self._nvml is None:
            return
        nvml = self._nvml
        try:
            nvml.nvmlInit()
        except Exception as exc:  # no driver, or a library without NVML: report nothing
            self.nvml_error = f"NVML unavailable: {exc}"
            return
        for device in self.cuda:
            ordinal = int(device.split(":", 1)[1]) if ":" in device else 0
            try:
                identity = self._torch_uuid(ordinal) or _visible_index(ordinal)
                if isinstance(identity, int):
                    self._handles[device] = nvml.nvmlDeviceGetHandleByIndex(identity)
                else:
                    self._handles[device] = nvml.nvmlDeviceGetHandleByUUID(identity)
            except Exception as exc:
                self.nvml_error = f"NVML has no handle for {device}: {exc}"
        if not self._handles:
            with contextlib.suppress(Exception):
                nvml.nvmlShutdown()

    @staticmethod
    def _torch_uuid(ordinal: int) -> str | None:
        torch = sys.modules.get("torch")
        if torch is None:
            return None
        try:
            uuid = str(torch.cuda.get_device_properties(ordinal).uuid)
        except Exception:
            return None
        return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._sample_once()

    def _sample_once(self) -> None:
        with contextlib.suppress(Exception):
            import psutil

            self._threads_max = max(self._threads_max, psutil.Process().num_threads())
        nvml = self._nvml
        for device, handle in list(self._handles.items()):
            samples = self._samples[device]
            try:
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                samples.utilization.append(float(rates.gpu))
                samples.memory_utilization.append(float(rates.memory))
                samples.used_bytes = max(samples.used_bytes, int(nvml.nvmlDeviceGetMemoryInfo(handle).used))
            except Exception as exc:  # a device that stops answering is dropped, not fatal
                self.nvml_error = f"NVML stopped answering for {device}: {exc}"
                self._handles.pop(device, None)

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
        return times.user + times.system

    def _add(self, device: str, tokens: int, rows: int, started: float, ended: float) -> None:
        with self._lock:
            tally = self._tally.setdefault(device, _DeviceTally())
            tally.tokens += int(tokens)
            tally.rows += int(rows)
            tally.busy_s += ended - started
            self._first_start = started if self._first_start is None else min(self._first_start, started)
            self._last_end = ended if self._last_end is None else max(self._last_end, ended)

    # --- results ---------------------------------------------------------------------------

    def figures(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {}
        span = (self._last_end - self._first_start) if self._first_start is not None and self._last_end is not None else 0.0
        for device, tally in sorted(self._tally.items()):
            out[f"{device}/tokens"] = tally.tokens
            out[f"{device}/tokens_per_s"] = round(tally.tokens / span, 1) if span > 0 else 0.0
            out[f"{device}/busy_fraction"] = round(min(1.0, tally.busy_s / span), 4) if span > 0 else 0.0
        torch = sys.modules.get("torch")
        if self.cuda and torch is not None:
            for device in self.cuda:
                with contextlib.suppress(Exception):
                    out[f"{device}/peak_allocated_bytes"] = int(torch.cuda.max_memory_allocated(device))
                    out[f"{device}/peak_reserved_bytes"] = int(torch.cuda.max_memory_reserved(device))
        for device, samples in self._samples.items():
            if not samples.utilization:
                continue
            out[f"{device}/utilization_mean_pct"] = round(sum(samples.utilization) / len(samples.utilization), 1)
            out[f"{device}/utilization_max_pct"] = max(samples.utilization)
            out[f"{device}/memory_busy_mean_pct"] = round(sum(samples.memory_utilization) / len(samples.memory_utilization), 1)
            out[f"{device}/memory_used_max_bytes"] = samples.used_bytes
            out[f"{device}/utilization_samples"] = len(samples.utilization)
        if self.nvml_error and self.cuda:
            out["gpu/nvml"] = self.nvml_error
        if "cpu" in self.devices or not self.cuda:
            wall = self._wall_end - self._wall_start
            cpus = _available_cpus()
            used = self._cpu_end - self._cpu_start
            out["cpu/utilization_pct"] = round(100.0 * used / (wall * cpus), 1) if wall > 0 else 0.0
            out["cpu/cpu_seconds"] = round(used, 3)
            out["cpu/available_cpus"] = cpus
            out["cpu/threads_max"] = self._threads_max
            if torch is not None:
                with contextlib.suppress(Exception):
                    out["cpu/torch_threads"] = int(torch.get_num_threads())
        return out


def _available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
