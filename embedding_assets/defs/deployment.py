"""Where the code location runs: one local process, or a pod per step on Kubernetes.

`EMBEDDING_DEPLOYMENT` picks the mode:

- ``local`` (default): the in-process executor, so one process holds the model for the whole run,
  and no step carries Kubernetes configuration.
- ``k8s``: `dagster_k8s.k8s_job_executor` launches every step as its own Kubernetes Job. The
  embeddings step asks for GPUs and runs the GPU image (`gpu_step_tags`: `EMBEDDING_K8S_GPU_IMAGE`,
  with torch and `EMBEDDING_DEVICE=cuda`); every other step runs the code location's own slim CPU
  image (no torch) with CPU and memory only (`cpu_step_tags`). The code server and the run worker carry no GPU request at all, so a GPU is
  held only while the embeddings step runs. How many embeddings steps run at once across all runs
  (a backfill fans batches out as parallel runs) is capped by the Dagster concurrency pool
  `GPU_POOL`; set its limit to the number of GPUs (k8s/README.md).

Everything is read from the environment when the definitions load (the code server and every
run/step pod load them with the same environment, set in k8s/values.yaml). The variables are listed
in `K8S_ENV_VARS`; a malformed value fails the load with a ValueError that names the variable.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import dagster as dg

GPU_POOL = "embedding_gpu"

DEPLOYMENTS = ("local", "k8s")
K8S_CONFIG_TAG = "dagster-k8s/config"

_DEFAULT_GPU_NODE_SELECTOR = {"nvidia.com/gpu.present": "true"}
_DEFAULT_GPU_TOLERATIONS = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]

# name -> (default, meaning); empty default = not set.
K8S_ENV_VARS: dict[str, tuple[str, str]] = {
    "EMBEDDING_K8S_GPU_IMAGE": (
        "",
        "k8s: image of the embeddings step pod (the GPU image, with torch); empty = the code location's image.",
    ),
    "EMBEDDING_K8S_GPUS": (
        "1",
        "k8s: GPUs the embeddings step pod requests (and is limited to); 0 runs it as a CPU pod.",
    ),
    "EMBEDDING_K8S_GPU_RESOURCE": (
        "nvidia.com/gpu",
        "k8s: extended resource name of a GPU (e.g. nvidia.com/mig-1g.10gb for a MIG slice).",
    ),
    "EMBEDDING_K8S_GPU_MEMORY": ("32Gi", "k8s: memory request and limit of the embeddings step pod."),
    "EMBEDDING_K8S_GPU_CPU": ("4", "k8s: CPU request of the embeddings step pod (no CPU limit)."),
    "EMBEDDING_K8S_GPU_NODE_SELECTOR": (
        json.dumps(_DEFAULT_GPU_NODE_SELECTOR),
        "k8s: JSON object, node selector of the embeddings step pod ({} for none).",
    ),
    "EMBEDDING_K8S_GPU_TOLERATIONS": (
        json.dumps(_DEFAULT_GPU_TOLERATIONS),
        "k8s: JSON list, tolerations of the embeddings step pod ([] for none).",
    ),
    "EMBEDDING_K8S_CPU_REQUEST": ("2", "k8s: CPU request of every other step pod (no CPU limit)."),
    "EMBEDDING_K8S_CPU_MEMORY": ("8Gi", "k8s: memory request and limit of every other step pod."),
    "EMBEDDING_K8S_MAX_CONCURRENT": (
        "4",
        "k8s: step pods one run may have at once (the GPU cap across runs is the embedding_gpu pool).",
    ),
    "EMBEDDING_K8S_STEP_TTL_SECONDS": (
        "3600",
        "k8s: finished step Jobs (and their pods and logs) are deleted this many seconds later.",
    ),
}

# A Kubernetes resource quantity: 2, 500m, 1.5, 32Gi, 1e3, ...
_QUANTITY = re.compile(r"^[+]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$")
_LABEL_KEY = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
_TOLERATION_KEYS = {"key", "operator", "value", "effect", "tolerationSeconds"}
# registry[:port]/path[:tag][@sha256:digest], no spaces or upper-case repository.
_IMAGE = re.compile(r"^[a-z0-9]+([._-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-]+[a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[0-9a-f]{64})?$")


def deployment() -> str:
    """`EMBEDDING_DEPLOYMENT`: 'local' (default) or 'k8s'."""
    value = os.environ.get("EMBEDDING_DEPLOYMENT", "").strip()
    if value == "":
        return "local"
    if value.lower() not in DEPLOYMENTS:
        raise ValueError(
            f"EMBEDDING_DEPLOYMENT={value!r} is not a deployment this code location knows: "
            "use 'local' (one process, in-process executor) or 'k8s' (a Kubernetes pod per step)"
        )
    return value.lower()


def _env(name: str) -> str:
    value = os.environ.get(name, "").strip()
    return value if value else K8S_ENV_VARS[name][0]


def _env_is_set(name: str) -> bool:
    return os.environ.get(name, "").strip() != ""


def _int_env(name: str, minimum: int) -> int:
    raw = _env(name)
    try:
        value = int(raw)
    except ValueError:
        value = None
    if value is None or value < minimum:
        raise ValueError(f"{name}={raw!r}: expected a whole number >= {minimum}")
    return value


def _quantity_env(name: str) -> str:
    raw = _env(name)
    if not _QUANTITY.match(raw):
        raise ValueError(f"{name}={raw!r}: expected a Kubernetes quantity such as 2, 500m, 8Gi or 32Gi")
    return raw


def _json_env(name: str) -> Any:
    raw = _env(name)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{name} is not valid JSON ({exc.msg} at position {exc.pos})") from None


def _node_selector(name: str) -> dict[str, str]:
    value = _json_env(name)
    if not isinstance(value, dict):
        raise ValueError(f'{name}: expected a JSON object of label -> value, e.g. {{"nvidia.com/gpu.present": "true"}}')
    for key, label in value.items():
        if not isinstance(label, str) or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(label):
            raise ValueError(f"{name}: {key!r}: {label!r} is not a valid Kubernetes label key and string value")
    return value


def _tolerations(name: str) -> list[dict[str, Any]]:
    value = _json_env(name)
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ValueError(
            f'{name}: expected a JSON list of tolerations, e.g. [{{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}}]'
        )
    for item in value:
        unknown = set(item) - _TOLERATION_KEYS
        if unknown:
            raise ValueError(f"{name}: unknown toleration field(s) {sorted(unknown)}; allowed: {sorted(_TOLERATION_KEYS)}")
        if item.get("operator", "Equal") not in ("Equal", "Exists"):
            raise ValueError(f"{name}: toleration operator must be 'Equal' or 'Exists', got {item['operator']!r}")
        if item.get("effect", "") not in ("", "NoSchedule", "PreferNoSchedule", "NoExecute"):
            raise ValueError(f"{name}: toleration effect must be NoSchedule, PreferNoSchedule or NoExecute, got {item['effect']!r}")
    return value


def _k8s_executor_config() -> dict[str, Any]:
    """The configuration `executor_def()` gives `k8s_job_executor` (defaults for every step pod)."""
    return {
        "max_concurrent": _int_env("EMBEDDING_K8S_MAX_CONCURRENT", 1),
        "step_k8s_config": {
            # A failed step is retried by Dagster (a new Job), never by Kubernetes restarting it
            # behind Dagster's back; finished Jobs are cleaned up.
            "job_spec_config": {
                "backoff_limit": 0,
                "ttl_seconds_after_finished": _int_env("EMBEDDING_K8S_STEP_TTL_SECONDS", 0),
            },
            # An embeddings step evicted by a scale-down loses its uncommitted work: don't.
            "pod_template_spec_metadata": {
                "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "false"},
            },
        },
    }


def executor_def() -> dg.ExecutorDefinition:
    """In-process locally (one process holds the model); one Kubernetes Job per step on k8s."""
    if deployment() == "local":
        return dg.in_process_executor
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor.configured(_k8s_executor_config(), name="embedding_k8s_job_executor")


def gpu_step_tags() -> dict[str, Any]:
    """`op_tags` of the embeddings step: on k8s, the GPU image in a pod with GPUs on a GPU node; locally, none."""
    if deployment() == "local":
        return {}
    gpus = _int_env("EMBEDDING_K8S_GPUS", 0)
    memory = _quantity_env("EMBEDDING_K8S_GPU_MEMORY")
    cpu = _quantity_env("EMBEDDING_K8S_GPU_CPU")
    requests: dict[str, str] = {"cpu": cpu, "memory": memory}
    limits: dict[str, str] = {"memory": memory}
    pod_spec: dict[str, Any] = {}
    if gpus > 0:
        resource = _env("EMBEDDING_K8S_GPU_RESOURCE")
        if not _LABEL_KEY.match(resource) or "/" not in resource:
            raise ValueError(f"EMBEDDING_K8S_GPU_RESOURCE={resource!r}: expected an extended resource name such as nvidia.com/gpu")
        # Extended resources cannot be overcommitted: request and limit must be equal.
        requests[resource] = str(gpus)
        limits[resource] = str(gpus)
    selector_var, tolerations_var = "EMBEDDING_K8S_GPU_NODE_SELECTOR", "EMBEDDING_K8S_GPU_TOLERATIONS"
    # With no GPU the GPU-node defaults do not apply; values set explicitly still do.
    if gpus > 0 or _env_is_set(selector_var):
        selector = _node_selector(selector_var)
        if selector:
            pod_spec["node_selector"] = selector
    if gpus > 0 or _env_is_set(tolerations_var):
        tolerations = _tolerations(tolerations_var)
        if tolerations:
            pod_spec["tolerations"] = tolerations
    container: dict[str, Any] = {"resources": {"requests": requests, "limits": limits}}
    image = _env("EMBEDDING_K8S_GPU_IMAGE")
    if image:
        if not _IMAGE.match(image):
            raise ValueError(f"EMBEDDING_K8S_GPU_IMAGE={image!r}: expected an image reference such as registry.example.com/embedding-assets:0.1.0-gpu")
        container["image"] = image
    if gpus > 0:
        # A pod that holds a GPU must use it: EMBEDDING_DEVICE=cuda makes the model resource fail at
        # once (embedding_assets.lib.encoders.cuda_check) on an old driver or a CPU-only torch, instead of
        # "auto" quietly embedding on the pod's CPU.
        device = os.environ.get("EMBEDDING_DEVICE", "").strip().lower()
        if device == "cpu":
            raise ValueError(
                f"EMBEDDING_DEVICE=cpu with EMBEDDING_K8S_GPUS={gpus}: the embeddings pod would hold GPUs it never uses; "
                "set EMBEDDING_K8S_GPUS=0 for CPU embeddings, or unset EMBEDDING_DEVICE"
            )
        if not device.startswith("cuda"):
            container["env"] = [{"name": "EMBEDDING_DEVICE", "value": "cuda"}]
    config: dict[str, Any] = {"container_config": container}
    if pod_spec:
        config["pod_spec_config"] = pod_spec
    return {K8S_CONFIG_TAG: config}


def cpu_step_tags() -> dict[str, Any]:
    """`op_tags` of every other step: on k8s, CPU and memory only (no GPU, no GPU node); locally, none."""
    if deployment() == "local":
        return {}
    memory = _quantity_env("EMBEDDING_K8S_CPU_MEMORY")
    cpu = _quantity_env("EMBEDDING_K8S_CPU_REQUEST")
    return {
        K8S_CONFIG_TAG: {
            "container_config": {
                "resources": {"requests": {"cpu": cpu, "memory": memory}, "limits": {"memory": memory}},
                # Wherever the NVIDIA runtime is the default, an image that sets
                # NVIDIA_VISIBLE_DEVICES=all (CUDA base images do) sees every GPU of the node: a CPU
                # step that lands on a GPU node must not see (or initialise) a GPU.
                "env": [{"name": "NVIDIA_VISIBLE_DEVICES", "value": "void"}],
            },
        }
    }
