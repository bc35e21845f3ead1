"""Can torch really use CUDA here? Decide before loading a model, and say exactly why not.

`resolve_cuda_device(requested)` returns the device to use ("cpu", "cuda" or "cuda:N"), or raises
`CudaUnavailableError` whose `reason` names the problem:

- ``torch-missing``: torch is not installed (the slim CPU image runs every step but embeddings).
- ``cpu-build``: torch is a CPU-only build (installed from a CPU wheel index, or a ``+cpu`` wheel).
- ``not-visible``: the container sees no GPU: ``NVIDIA_VISIBLE_DEVICES`` or ``CUDA_VISIBLE_DEVICES``
  hides every device, or the pod asked for none.
- ``no-driver``: no NVIDIA driver reached the container (no GPU on the node, or the NVIDIA container
  runtime did not mount it).
- ``driver-too-old``: the node's driver predates torch's CUDA (torch 2.13.0 from PyPI is a CUDA 13
  build and needs driver >= 580); both versions are named.
- ``out-of-range``: ``cuda:N`` names a device that is not there.
- ``unavailable``: torch still cannot use CUDA, for a reason none of the checks above found.

When CUDA is required: ``cuda`` or ``cuda:N`` is asked for, or ``auto`` is asked for in a container
that was given a GPU (``NVIDIA_VISIBLE_DEVICES`` names a device, as the NVIDIA device plugin sets it
in a pod that requests ``nvidia.com/gpu``): a GPU pod never falls back to CPU silently. ``auto``
elsewhere (a laptop, a CPU pod) picks CUDA when torch can use it and CPU otherwise. ``cpu`` is
never checked and never imports torch.

No Dagster here; torch is imported only when a check needs it. The few torch calls made
(``torch.__version__``, ``torch.version.cuda``, ``torch.cuda.is_available()``,
``torch.cuda.device_count()``, ``torch._C._cuda_getDriverVersion()``) come from the `torch` argument
when one is given, which is how the tests simulate a GPU node on a CPU machine.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Callable, Mapping

# Oldest Linux driver for each CUDA major version (CUDA minor-version compatibility: a CUDA 13.x
# build runs on any driver of the 13 line, >= 580; 12.x on >= 525; 11.x on >= 450).
MIN_DRIVER_FOR_CUDA_MAJOR = {13: "580", 12: "525", 11: "450"}
_HIDDEN = {"", "void", "none", "-1", "nodevfiles"}
_NVIDIA_VERSION_FILE = Path("/proc/driver/nvidia/version")


class CudaUnavailableError(RuntimeError):
    """CUDA was required and torch cannot use it; `reason` says which problem it is."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def gpu_given_to_container(environ: Mapping[str, str] | None = None) -> bool:
    """True when the NVIDIA runtime was told to expose a device (a pod that requested a GPU)."""
    env = os.environ if environ is None else environ
    value = env.get("NVIDIA_VISIBLE_DEVICES")
    return value is not None and value.strip().lower() not in _HIDDEN


def cuda_required(requested: str, environ: Mapping[str, str] | None = None) -> bool:
    """Must `requested` end on a GPU? `cuda`/`cuda:N` always; `auto` when the container was given one."""
    requested = requested.strip().lower()
    if requested == "cpu":
        return False
    if requested == "auto":
        return gpu_given_to_container(environ)
    return True


def nvidia_driver_version(path: Path = _NVIDIA_VERSION_FILE) -> str | None:
    """The kernel driver's version (e.g. '575.57.08') from /proc, or None where there is none."""
    try:
        text = path.read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module(?:\s+for\s+\S+)?\s+(\d+(?:\.\d+)+)", text) or re.search(r"\s(\d{3}\.\d+(?:\.\d+)?)\s", text)
    return match.group(1) if match else None


def _cuda_tuple(version: str) -> tuple[int, int]:
    major, _, minor = version.partition(".")
    return int(major), int(minor.split(".")[0] or 0)


def _driver_cuda(torch: Any) -> tuple[int, int] | None:
    """The newest CUDA the installed driver supports (cuDriverGetVersion, e.g. 12080 -> (12, 8))."""
    getter = getattr(getattr(torch, "_C", None), "_cuda_getDriverVersion", None)
    if getter is None:
        return None
    try:
        value = int(getter())
    except Exception:  # no libcuda in the container: torch raises or returns 0
        return None
    return (value // 1000, (value % 1000) // 10) if value > 0 else None


def _visibility_problem(env: Mapping[str, str]) -> str | None:
    for name in ("NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES"):
        value = env.get(name)
        if value is not None and value.strip().lower() in _HIDDEN:
            return f"{name}={value!r} hides every GPU from this container"
    return None


def resolve_cuda_device(
    requested: str,
    *,
    torch: Any = None,
    environ: Mapping[str, str] | None = None,
    driver_version: Callable[[], str | None] = nvidia_driver_version,
) -> str:
    """The device to run on for `requested` (auto, cpu, cuda, cuda:N); raises CudaUnavailableError."""
    env = os.environ if environ is None else environ
    device = requested.strip().lower()
    if device not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", device):
        raise ValueError(f"EMBEDDING_DEVICE={requested!r}: use auto, cpu, cuda or cuda:N")
    if device == "cpu":
        return "cpu"
    required = cuda_required(device, env)
    why = (f"EMBEDDING_DEVICE={requested}" if device != "auto"
           else f"EMBEDDING_DEVICE=auto in a container given a GPU (NVIDIA_VISIBLE_DEVICES={env.get('NVIDIA_VISIBLE_DEVICES')})")

    if torch is None:
        try:
            import torch  # noqa: PLC0415 - only when a device check needs it
        except ImportError:
            if not required:
                return "cpu"
            raise CudaUnavailableError(
                "torch-missing",
                f"{why}, but torch is not installed in this image. The slim CPU image has no torch: the "
                "embeddings step must run the GPU image (EMBEDDING_K8S_GPU_IMAGE, k8s/README.md).",
            ) from None

    build_cuda = getattr(getattr(torch, "version", None), "cuda", None)
    if not build_cuda:
        if not required:
            return "cpu"
        raise CudaUnavailableError(
            "cpu-build",
            f"{why}, but torch {torch.__version__} is a CPU-only build (torch.version.cuda is None). Install "
            f"torch=={str(torch.__version__).split('+')[0]} from PyPI (the CUDA build), not from a CPU wheel index.",
        )

    if torch.cuda.is_available():
        if device.startswith("cuda:"):
            index, count = int(device.split(":")[1]), torch.cuda.device_count()
            if index >= count:
                raise CudaUnavailableError(
                    "out-of-range",
                    f"EMBEDDING_DEVICE={requested}, but this container sees {count} GPU(s) (cuda:0..cuda:{count - 1}; "
                    f"CUDA_VISIBLE_DEVICES={env.get('CUDA_VISIBLE_DEVICES')!r}, "
                    f"NVIDIA_VISIBLE_DEVICES={env.get('NVIDIA_VISIBLE_DEVICES')!r}).",
                )
            return device
        return "cuda"
    if not required:
        return "cpu"

    # torch cannot use CUDA: find out why, most specific first.
    hidden = _visibility_problem(env)
    if hidden:
        raise CudaUnavailableError(
            "not-visible",
            f"{why}, but no GPU is visible: {hidden}. On Kubernetes the embeddings step pod must request a GPU "
            "(EMBEDDING_K8S_GPUS >= 1); elsewhere unset the variable or name a device.",
        )
    major, minor = _cuda_tuple(build_cuda)
    needed = MIN_DRIVER_FOR_CUDA_MAJOR.get(major)
    driver = driver_version()
    supported = _driver_cuda(torch)
    if driver is None and supported is None:
        raise CudaUnavailableError(
            "no-driver",
            f"{why}, but no NVIDIA driver is reachable in this container (no /proc/driver/nvidia/version, no "
            "libcuda): the node has no GPU or the NVIDIA container runtime did not expose one. Check that the "
            "pod requested nvidia.com/gpu and landed on a GPU node.",
        )
    too_old = (supported is not None and supported[0] < major) or (
        driver is not None and needed is not None and int(driver.split(".")[0]) < int(needed))
    if too_old:
        found = f"NVIDIA driver {driver or 'unknown version'}"
        if supported is not None:
            found += f" (supports CUDA up to {supported[0]}.{supported[1]})"
        raise CudaUnavailableError(
            "driver-too-old",
            f"{why}, but the {found} is too old for torch {torch.__version__}, a CUDA {major}.{minor} build, which needs "
            f"NVIDIA driver >= {needed or 'a newer release'}. Upgrade the node's driver (GPU Operator driver version) or "
            "schedule on nodes with a newer one.",
        )
    count = torch.cuda.device_count() if hasattr(torch.cuda, "device_count") else 0
    raise CudaUnavailableError(
        "unavailable",
        f"{why}, but torch {torch.__version__} (CUDA {build_cuda}) cannot use CUDA (NVIDIA driver "
        f"{driver or 'unknown'}, {count} device(s) counted). Run `nvidia-smi` in the pod to see what the driver reports.",
    )


def main(argv: list[str] | None = None) -> int:
    """`python -m embedding_assets.lib.encoders.cuda_check [DEVICE]`: prints the device, or why CUDA is unusable."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    requested = args[0] if args else os.environ.get("EMBEDDING_DEVICE", "auto") or "auto"
    try:
        print(resolve_cuda_device(requested))
    except CudaUnavailableError as exc:
        print(f"{exc.reason}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
