"""embedding_assets.lib.encoders.cuda_check on a CPU machine: the GPU, the driver and torch are simulated.

Every test passes a stand-in for the few torch calls the check makes (`FakeTorch`) and a stand-in
for the driver's /proc version, so each failure a GPU node can have is reproduced without one.
"""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest

from embedding_assets.lib.encoders.cuda_check import CudaUnavailableError, cuda_required, nvidia_driver_version, resolve_cuda_device

GPU_POD = {"NVIDIA_VISIBLE_DEVICES": "GPU-6f1e0c3a-0000-4000-8000-000000000000"}


class FakeTorch:
    """A simulated torch: its build's CUDA version, what the driver supports, and the devices seen."""

    def __init__(self, cuda: str | None = "13.0", available: bool = True, devices: int = 1,
                 driver_cuda: int | None = 13000, version: str = "2.13.0"):
        self.__version__ = version if cuda else f"{version}+cpu"
        self.version = SimpleNamespace(cuda=cuda)
        self.cuda = SimpleNamespace(is_available=lambda: available, device_count=lambda: devices)

        def driver_version() -> int:
            if driver_cuda is None:
                raise RuntimeError("libcuda.so.1: cannot open shared object file")
            return driver_cuda

        self._C = SimpleNamespace(_cuda_getDriverVersion=driver_version)


def driver(version: str | None):
    return lambda: version


def check(requested: str, torch: FakeTorch, environ: dict | None = None, driver_version: str | None = "580.65.06") -> str:
    return resolve_cuda_device(requested, torch=torch, environ=environ or {}, driver_version=driver(driver_version))


def reason_of(requested: str, torch: FakeTorch, environ: dict | None = None, driver_version: str | None = "580.65.06"):
    with pytest.raises(CudaUnavailableError) as info:
        check(requested, torch, environ, driver_version)
    return info.value.reason, str(info.value)


# --- a working GPU (simulated) -------------------------------------------------------------------


@pytest.mark.parametrize(("requested", "expected"), [("cuda", "cuda"), ("auto", "cuda"), ("cuda:1", "cuda:1"), ("CUDA:0", "cuda:0")])
def test_a_usable_gpu_is_used(requested, expected):
    assert check(requested, FakeTorch(devices=2), GPU_POD) == expected


def test_cpu_is_never_checked():
    class Exploding:
        def __getattr__(self, name):
            raise AssertionError(f"cpu touched torch.{name}")

    assert resolve_cuda_device("cpu", torch=Exploding(), environ=GPU_POD) == "cpu"


def test_auto_off_a_gpu_pod_falls_back_to_cpu():
    """A laptop or a CPU pod: auto still means 'cuda when usable, else cpu'."""
    assert check("auto", FakeTorch(available=False, driver_cuda=None), {}, driver_version=None) == "cpu"
    assert check("auto", FakeTorch(cuda=None, available=False), {"NVIDIA_VISIBLE_DEVICES": "void"}) == "cpu"


def test_which_requests_require_cuda():
    assert cuda_required("cuda", {}) and cuda_required("cuda:3", {})
    assert not cuda_required("cpu", GPU_POD)
    assert cuda_required("auto", GPU_POD) and cuda_required("auto", {"NVIDIA_VISIBLE_DEVICES": "all"})
    for hidden in ({}, {"NVIDIA_VISIBLE_DEVICES": "void"}, {"NVIDIA_VISIBLE_DEVICES": "none"}, {"NVIDIA_VISIBLE_DEVICES": ""}):
        assert not cuda_required("auto", hidden), hidden


# --- each problem, named ---------------------------------------------------------------------


def test_cpu_only_torch_build():
    reason, message = reason_of("cuda", FakeTorch(cuda=None, available=False))
    assert reason == "cpu-build"
    assert "torch 2.13.0+cpu is a CPU-only build" in message and "torch==2.13.0 from PyPI" in message


def test_auto_on_a_gpu_pod_with_a_cpu_only_torch_fails_instead_of_running_on_cpu():
    reason, message = reason_of("auto", FakeTorch(cuda=None, available=False), GPU_POD)
    assert reason == "cpu-build" and "EMBEDDING_DEVICE=auto in a container given a GPU" in message


def test_driver_too_old_names_both_versions():
    torch = FakeTorch(cuda="13.0", available=False, driver_cuda=12080)
    reason, message = reason_of("cuda", torch, GPU_POD, driver_version="570.133.20")
    assert reason == "driver-too-old"
    assert "NVIDIA driver 570.133.20 (supports CUDA up to 12.8)" in message
    assert "torch 2.13.0, a CUDA 13.0 build" in message and "needs NVIDIA driver >= 580" in message


def test_driver_too_old_known_only_from_proc():
    torch = FakeTorch(cuda="13.0", available=False, driver_cuda=None)
    reason, message = reason_of("auto", torch, GPU_POD, driver_version="550.54.15")
    assert reason == "driver-too-old" and "550.54.15" in message and ">= 580" in message


def test_no_driver_in_the_container():
    reason, message = reason_of("cuda", FakeTorch(available=False, driver_cuda=None), {}, driver_version=None)
    assert reason == "no-driver" and "nvidia.com/gpu" in message


@pytest.mark.parametrize(("name", "value"), [("NVIDIA_VISIBLE_DEVICES", "void"), ("CUDA_VISIBLE_DEVICES", ""),
                                             ("CUDA_VISIBLE_DEVICES", "-1"), ("NVIDIA_VISIBLE_DEVICES", "none")])
def test_no_device_visible(name, value):
    reason, message = reason_of("cuda", FakeTorch(available=False, devices=0), {name: value})
    assert reason == "not-visible" and f"{name}={value!r}" in message


def test_hidden_by_cuda_visible_devices_on_a_gpu_pod():
    reason, message = reason_of("auto", FakeTorch(available=False, devices=0), {**GPU_POD, "CUDA_VISIBLE_DEVICES": ""})
    assert reason == "not-visible" and "CUDA_VISIBLE_DEVICES=''" in message


def test_device_index_out_of_range():
    reason, message = reason_of("cuda:2", FakeTorch(devices=2), {**GPU_POD, "CUDA_VISIBLE_DEVICES": "0,1"})
    assert reason == "out-of-range"
    assert "EMBEDDING_DEVICE=cuda:2" in message and "sees 2 GPU(s) (cuda:0..cuda:1" in message


def test_unexplained_failure_still_fails():
    reason, message = reason_of("cuda", FakeTorch(available=False, driver_cuda=13000), GPU_POD, driver_version="580.65.06")
    assert reason == "unavailable" and "nvidia-smi" in message


def test_torch_not_installed(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as in the slim CPU image
    with pytest.raises(CudaUnavailableError) as info:
        resolve_cuda_device("cuda", environ={})
    assert info.value.reason == "torch-missing" and "GPU image" in str(info.value)
    assert resolve_cuda_device("auto", environ={}) == "cpu"


def test_malformed_device():
    with pytest.raises(ValueError, match="EMBEDDING_DEVICE='gpu'"):
        resolve_cuda_device("gpu", torch=FakeTorch(), environ={})


def test_driver_version_from_proc(tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.65.06  Release Build  (dvs-builder@U16-I3-B03-4-3)  Tue Jul 22 2025\n"
                    "GCC version:  gcc version 12.3.0\n")
    assert nvidia_driver_version(proc) == "580.65.06"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.15  Tue Mar  5 22:23:56 UTC 2024\n")
    assert nvidia_driver_version(proc) == "550.54.15"
    assert nvidia_driver_version(tmp_path / "missing") is None


def test_command_line(capsys):
    from embedding_assets.lib.encoders import cuda_check

    assert cuda_check.main(["cpu"]) == 0 and capsys.readouterr().out.strip() == "cpu"
