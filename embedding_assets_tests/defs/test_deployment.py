"""The Kubernetes deployment: step pods rendered by dagster-k8s itself, manifests, values and docs.

The step Jobs are built the way `k8s_job_executor` builds them at run time: the run launcher's
configuration (k8s/values.yaml) merged with the code location's container context (what the chart
passes from the user deployment), the executor's own step defaults (from `executor_def()`), and the
step's `dagster-k8s/config` tag, taken from the real `embedding_assets.definitions` loaded with
EMBEDDING_DEPLOYMENT=k8s and the EMBEDDING_K8S_* variables of k8s/values.yaml; then
`dagster_k8s.job.construct_dagster_k8s_job`. The run's image is the slim CPU image (the code server's);
the embeddings step must name the GPU image, every other step must keep the CPU one. The resulting Jobs and
every raw manifest under k8s/ are validated offline against the Kubernetes OpenAPI schema
(kubernetes-validate ships the schemas).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import kubernetes
import kubernetes_validate
import pytest
import yaml

from embedding_assets.defs import deployment

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
VALUES = K8S / "values.yaml"
README = K8S / "README.md"
RELEASE = "dagster"
# The code location's (and so the run's) image: the slim CPU image.
IMAGE = "registry.example.com/embedding-assets:test"
# The oldest Kubernetes the README supports, and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.28.0", kubernetes_validate.latest_version())

CPU_ASSETS = ("raw_documents", "chunks", "length_buckets", "document_embeddings")
GPU_ASSET = "embeddings"
GPU_RESOURCE = "nvidia.com/gpu"

_DEFINITIONS_PROBE = r"""
import importlib, json, os, sys
from dagster._core.definitions.reconstruct import repository_def_from_target_def
from dagster._core.execution.api import create_execution_plan
from dagster._core.workspace.autodiscovery import loadable_targets_from_loaded_module


def snapshot():
    module = importlib.import_module("embedding_assets.definitions")
    targets = loadable_targets_from_loaded_module(module)
    repo = repository_def_from_target_def(targets[0].target_definition)
    assets = {}
    for key, assets_def in repo.assets_defs_by_key.items():
        if not assets_def.is_executable:
            continue
        op = assets_def.op
        assets[key.path[-1]] = {"op": op.name, "tags": dict(op.tags), "pool": op.pool, "step_tags": None}
    executors = {}
    for job in repo.get_all_jobs():
        schema = job.executor_def.config_schema
        if hasattr(schema, "resolve_config"):  # a configured executor
            resolved = schema.resolve_config({})
        else:
            from dagster._config import process_config
            resolved = process_config(schema.config_type, {})
        value = resolved.value if resolved.success else None
        if isinstance(value, dict) and set(value) == {"config"}:
            value = value["config"]
        executors[job.name] = {
            "name": job.executor_def.name,
            "is_k8s": job.executor_def.executor_creation_fn.__module__.startswith("dagster_k8s"),
            "is_in_process": job.executor_def.executor_creation_fn.__name__ == "in_process_executor",
            "config": value,
            "config_errors": None if resolved.success else [str(e) for e in resolved.errors],
        }
        if job.name.startswith("__ASSET_JOB"):
            steps = {step.key: dict(step.tags) for step in create_execution_plan(job).steps}
            for info in assets.values():
                if info["op"] in steps:
                    info["step_tags"] = steps[info["op"]]
    return {"assets": assets, "executors": executors}


result = {}
for mode in sys.argv[1:]:
    # The definitions read the environment when they are imported: import them afresh per mode.
    for name in [m for m in sys.modules if m == "embedding_assets" or m.startswith("embedding_assets.")]:
        del sys.modules[name]
    os.environ["EMBEDDING_DEPLOYMENT"] = mode
    result[mode] = snapshot()
json.dump(result, sys.stdout, default=str)
"""


@pytest.fixture(scope="module")
def definitions_by_mode() -> dict[str, dict[str, Any]]:
    """What the real definitions hold in k8s and in local mode (loaded in a fresh interpreter)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDDING_K8S_") and k != "EMBEDDING_DEVICE"}
    # The run worker loads the definitions with the user deployment's environment (values.yaml).
    values_env = yaml.safe_load(VALUES.read_text())["dagster-user-deployments"]["deployments"][0]["env"]
    env.update({e["name"]: e["value"] for e in values_env if e["name"].startswith("EMBEDDING_K8S_")})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    try:
        proc = subprocess.run([sys.executable, "-c", _DEFINITIONS_PROBE, "k8s", "local"], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired:
        pytest.fail("loading embedding_assets.definitions took over 300 s")
    if proc.returncode != 0:
        pytest.fail(f"loading embedding_assets.definitions failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout)


@pytest.fixture(scope="module")
def k8s_defs(definitions_by_mode) -> dict[str, Any]:
    return definitions_by_mode["k8s"]


@pytest.fixture(scope="module")
def local_defs(definitions_by_mode) -> dict[str, Any]:
    return definitions_by_mode["local"]


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    return yaml.safe_load(VALUES.read_text())


@pytest.fixture
def k8s_env(monkeypatch):
    for name in list(os.environ):
        if name.startswith("EMBEDDING_K8S_") or name == "EMBEDDING_DEVICE":
            monkeypatch.delenv(name)
    monkeypatch.setenv("EMBEDDING_DEPLOYMENT", "k8s")
    return monkeypatch


# --- rendering step Jobs the way k8s_job_executor does ----------------------------------------


def _user_deployment(values: dict[str, Any]) -> dict[str, Any]:
    return values["dagster-user-deployments"]["deployments"][0]


def _snake_run_k8s_config(camel: dict[str, Any]) -> dict[str, Any]:
    names = {"containerConfig": "container_config", "podSpecConfig": "pod_spec_config",
             "podTemplateSpecMetadata": "pod_template_spec_metadata", "jobSpecConfig": "job_spec_config",
             "jobMetadata": "job_metadata"}
    return {names[k]: v for k, v in (camel or {}).items() if v}


def _run_launcher_context(values: dict[str, Any]):
    """What the chart writes into dagster.yaml's K8sRunLauncher, as dagster-k8s reads it for a step."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    rl = values["runLauncher"]["config"]["k8sRunLauncher"]
    return K8sContainerContext(
        image_pull_policy=rl.get("imagePullPolicy"),
        service_account_name=f"{RELEASE}",
        env_config_maps=[m["name"] for m in rl.get("envConfigMaps") or [] if "name" in m],
        env_secrets=[s["name"] for s in rl.get("envSecrets") or [] if "name" in s],
        env_vars=rl.get("envVars") or [],
        volume_mounts=rl.get("volumeMounts") or [],
        volumes=rl.get("volumes") or [],
        labels=rl.get("labels") or {},
        namespace=rl.get("jobNamespace") or "embedding-assets",
        resources=rl.get("resources") or {},
        scheduler_name=rl.get("schedulerName"),
        security_context=rl.get("securityContext") or {},
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(_snake_run_k8s_config(rl.get("runK8sConfig"))),
    )


def _code_location_context(values: dict[str, Any]):
    """The container context the chart gives the code server (includeConfigInLaunchedRuns)."""
    from dagster_k8s.container_context import K8sContainerContext

    dep = _user_deployment(values)
    assert dep.get("includeConfigInLaunchedRuns", {"enabled": True})["enabled"]
    k8s: dict[str, Any] = {
        "image_pull_policy": dep["image"]["pullPolicy"],
        "env_config_maps": [f"{RELEASE}-{dep['name']}-user-env"] + [m["name"] for m in dep.get("envConfigMaps") or []],
        "namespace": "embedding-assets",
        "service_account_name": f"{RELEASE}-dagster-user-deployments",
        "run_k8s_config": {"pod_spec_config": {"automount_service_account_token": True}},
    }
    if dep.get("envSecrets"):
        k8s["env_secrets"] = [s["name"] for s in dep["envSecrets"]]
    for key, name in (("volumeMounts", "volume_mounts"), ("volumes", "volumes"), ("labels", "labels"), ("resources", "resources")):
        if dep.get(key):
            k8s[name] = dep[key]
    if isinstance(dep.get("env"), list) and dep["env"]:
        k8s["env"] = dep["env"]
    if dep.get("annotations"):
        k8s["run_k8s_config"]["pod_template_spec_metadata"] = {"annotations": dep["annotations"]}
    return K8sContainerContext.create_from_config({"k8s": k8s})


def _executor_context(executor_config: dict[str, Any]):
    """Mirrors the body of dagster_k8s.k8s_job_executor."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig

    cfg = executor_config
    return K8sContainerContext(
        image_pull_policy=cfg.get("image_pull_policy"),
        image_pull_secrets=cfg.get("image_pull_secrets"),
        service_account_name=cfg.get("service_account_name"),
        env_config_maps=cfg.get("env_config_maps"),
        env_secrets=cfg.get("env_secrets"),
        env_vars=cfg.get("env_vars"),
        volume_mounts=cfg.get("volume_mounts"),
        volumes=cfg.get("volumes"),
        labels=cfg.get("labels"),
        namespace=cfg.get("job_namespace"),
        resources=cfg.get("resources"),
        scheduler_name=cfg.get("scheduler_name"),
        security_context=cfg.get("security_context"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(cfg.get("step_k8s_config", {})),
    )


def _tags_as_strings(tags: dict[str, Any]) -> dict[str, str]:
    """Op tags as Dagster stores them (non-string values JSON-encoded)."""
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in tags.items()}


def render_step_job(values: dict[str, Any], executor_config: dict[str, Any], step_key: str, step_tags: dict[str, Any]) -> dict[str, Any]:
    """The Kubernetes Job k8s_job_executor would create for one step, as a JSON-ready dict."""
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job, get_k8s_job_name, get_user_defined_k8s_config

    run_id = "3f2a2c1e-0000-4000-8000-000000000000"
    context = (
        _run_launcher_context(values)
        .merge(_code_location_context(values))
        .merge(_executor_context(executor_config))
        .merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(_tags_as_strings(step_tags))))
        .merge(K8sContainerContext(run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(
            executor_config.get("per_step_k8s_config", {}).get(step_key, {}))))
    )
    run_launcher = SimpleNamespace(
        job_image=None,
        dagster_home=values["global"]["dagsterHome"],
        instance_config_map=f"{RELEASE}-instance",
        postgres_password_secret=values["global"]["postgresqlSecretName"],
    )
    job_config = context.get_k8s_job_config(IMAGE, run_launcher)
    job_name = f"dagster-step-{get_k8s_job_name(run_id, step_key)}"
    job = construct_dagster_k8s_job(
        job_config=job_config,
        args=["dagster", "api", "execute_step"],
        job_name=job_name,
        pod_name=job_name,
        component="step_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/job": "__ASSET_JOB", "dagster/op": step_key, "dagster/run-id": run_id},
        env_vars=[{"name": "DAGSTER_RUN_JOB_NAME", "value": "__ASSET_JOB"}, {"name": "DAGSTER_RUN_STEP_KEY", "value": step_key}],
    )
    manifest = kubernetes.client.ApiClient().sanitize_for_serialization(job)
    manifest["metadata"]["namespace"] = context.namespace
    return manifest


def validate_manifest(manifest: dict[str, Any]) -> None:
    for version in K8S_VERSIONS:
        try:
            kubernetes_validate.validate(manifest, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{manifest.get('kind')}/{manifest.get('metadata', {}).get('name')} is not valid Kubernetes {version}: "
                f"{exc.message} at {list(exc.absolute_path)}"
            ) from None
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise AssertionError(exc.message) from None


_QUANTITY = re.compile(r"^([0-9.]+)([a-zA-Z]*)$")
_SUFFIX = {"": 1, "m": Decimal("0.001"), "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18,
           "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}


def quantity(value: str | int) -> Decimal:
    match = _QUANTITY.match(str(value))
    assert match and match.group(2) in _SUFFIX, f"not a Kubernetes quantity: {value!r}"
    return Decimal(match.group(1)) * _SUFFIX[match.group(2)]


def _container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def assert_schedulable_resources(manifest: dict[str, Any]) -> None:
    """Kubernetes rejects a pod whose request exceeds its limit (the schema does not check it)."""
    resources = _container(manifest).get("resources") or {}
    requests, limits = resources.get("requests") or {}, resources.get("limits") or {}
    for name, limit in limits.items():
        if name in requests:
            assert quantity(requests[name]) <= quantity(limit), f"{name}: request {requests[name]} > limit {limit}"
    for name in requests:
        if "/" in name:  # extended resources (GPUs) cannot be overcommitted
            assert limits.get(name) == requests[name], f"{name} must have limit == request"
    assert "memory" in limits, "every step pod needs a memory limit"


def assert_gpu_job(manifest: dict[str, Any], gpus: str = "1", memory: str = "32Gi",
                   node_selector: dict[str, str] | None = None, toleration: dict[str, str] | None = None) -> None:
    container = _container(manifest)
    pod = manifest["spec"]["template"]["spec"]
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert requests[GPU_RESOURCE] == gpus and limits[GPU_RESOURCE] == gpus
    assert requests["memory"] == memory and limits["memory"] == memory
    assert pod["nodeSelector"] == (node_selector or {"nvidia.com/gpu.present": "true"})
    assert (toleration or {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}) in pod["tolerations"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("NVIDIA_VISIBLE_DEVICES") != "void", "the GPU step must see its GPU"
    # the last EMBEDDING_DEVICE wins in a pod: a GPU pod must never quietly embed on its CPU
    assert [e.get("value") for e in container["env"] if e["name"] == "EMBEDDING_DEVICE"][-1] == "cuda"
    assert_schedulable_resources(manifest)


def assert_cpu_job(manifest: dict[str, Any], image: str = IMAGE) -> None:
    container = _container(manifest)
    assert container["image"] == image, f"a CPU step runs {container['image']}, not the CPU image {image}"
    pod = manifest["spec"]["template"]["spec"]
    resources = container["resources"]
    for section in ("requests", "limits"):
        assert not [k for k in (resources.get(section) or {}) if "gpu" in k.lower()], f"CPU step asks for a GPU: {resources}"
    assert not [k for k in (pod.get("nodeSelector") or {}) if "gpu" in k.lower() or "accelerator" in k.lower()]
    assert not [t for t in pod.get("tolerations") or [] if "gpu" in (t.get("key") or "").lower()]
    assert quantity(resources["requests"]["cpu"]) > 0 and quantity(resources["requests"]["memory"]) > 0
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env["NVIDIA_VISIBLE_DEVICES"] == "void"
    assert_schedulable_resources(manifest)


def _k8s_executor_config(k8s_defs: dict[str, Any]) -> dict[str, Any]:
    executors = k8s_defs["executors"]
    assert executors, "the definitions have no job"
    for name, executor in executors.items():
        assert executor["is_k8s"], f"job {name} runs with {executor['name']}, not k8s_job_executor, in k8s mode"
        assert executor["config"] is not None, executor["config_errors"]
    return next(iter(executors.values()))["config"]


def _step_tags(k8s_defs: dict[str, Any], asset: str) -> dict[str, Any]:
    info = k8s_defs["assets"][asset]
    return info["step_tags"] if info["step_tags"] is not None else info["tags"]


# --- the real definitions in k8s mode ----------------------------------------------------------


def test_definitions_have_the_expected_steps(k8s_defs):
    assert set(CPU_ASSETS) | {GPU_ASSET} <= set(k8s_defs["assets"]), sorted(k8s_defs["assets"])


def test_embeddings_step_job_requests_gpus_on_gpu_nodes(k8s_defs, values):
    manifest = render_step_job(values, _k8s_executor_config(k8s_defs), GPU_ASSET, _step_tags(k8s_defs, GPU_ASSET))
    validate_manifest(manifest)
    assert_gpu_job(manifest)
    pod = manifest["spec"]["template"]
    container = _container(manifest)
    assert pod["spec"]["restartPolicy"] == "Never" and manifest["spec"]["backoffLimit"] == 0
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 3600
    assert pod["metadata"]["annotations"]["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
    assert container["image"] == _values_env(values)["EMBEDDING_K8S_GPU_IMAGE"] != IMAGE
    # the code location's environment and object-storage secret reach the step pod
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["EMBEDDING_DEPLOYMENT"] == "k8s" and env["EMBEDDING_LAKE"].startswith(("s3://", "gs://", "az://"))
    assert {"secretRef": {"name": "embedding-object-storage"}} in container["envFrom"]


@pytest.mark.parametrize("asset", CPU_ASSETS)
def test_cpu_step_jobs_have_no_gpu(k8s_defs, values, asset):
    manifest = render_step_job(values, _k8s_executor_config(k8s_defs), asset, _step_tags(k8s_defs, asset))
    validate_manifest(manifest)
    assert_cpu_job(manifest)


def test_the_two_images_and_their_steps(k8s_defs, values):
    """The GPU image is named by the embeddings step alone; every other step runs the run's CPU image."""
    gpu_image = _values_env(values)["EMBEDDING_K8S_GPU_IMAGE"]
    assert gpu_image and gpu_image != IMAGE
    images = {}
    for asset in (*CPU_ASSETS, GPU_ASSET):
        manifest = render_step_job(values, _k8s_executor_config(k8s_defs), asset, _step_tags(k8s_defs, asset))
        validate_manifest(manifest)
        images[asset] = _container(manifest)["image"]
    assert images == {**{a: IMAGE for a in CPU_ASSETS}, GPU_ASSET: gpu_image}


def test_only_the_embeddings_step_takes_a_gpu_pool_slot(k8s_defs):
    assets = k8s_defs["assets"]
    assert assets[GPU_ASSET]["pool"] == deployment.GPU_POOL == "embedding_gpu"
    assert [name for name, info in assets.items() if info["pool"] == deployment.GPU_POOL] == [GPU_ASSET]


def test_local_mode_is_one_process_without_k8s_config(local_defs):
    for name, executor in local_defs["executors"].items():
        assert executor["is_in_process"], f"job {name} runs with {executor['name']} locally"
    for name, info in local_defs["assets"].items():
        assert deployment.K8S_CONFIG_TAG not in info["tags"], name


# --- deployment.py on its own --------------------------------------------------------------


def test_executor_def_follows_embedding_deployment(monkeypatch):
    import dagster as dg
    from dagster_k8s import k8s_job_executor

    monkeypatch.delenv("EMBEDDING_DEPLOYMENT", raising=False)
    assert deployment.deployment() == "local" and deployment.executor_def() is dg.in_process_executor
    monkeypatch.setenv("EMBEDDING_DEPLOYMENT", "local")
    assert deployment.executor_def() is dg.in_process_executor
    assert deployment.gpu_step_tags() == {} and deployment.cpu_step_tags() == {}
    monkeypatch.setenv("EMBEDDING_DEPLOYMENT", "k8s")
    executor = deployment.executor_def()
    assert executor.executor_creation_fn is k8s_job_executor.executor_creation_fn
    resolved = executor.config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    assert resolved.value["config"]["max_concurrent"] == 4
    monkeypatch.setenv("EMBEDDING_DEPLOYMENT", "kubernetes")
    with pytest.raises(ValueError, match="EMBEDDING_DEPLOYMENT='kubernetes'.*'local'.*'k8s'"):
        deployment.deployment()


def _executor_config_now() -> dict[str, Any]:
    resolved = deployment.executor_def().config_schema.resolve_config({})
    assert resolved.success, resolved.errors
    return resolved.value["config"]


def _values_env(values: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in _user_deployment(values)["env"]}


def test_gpu_settings_come_from_the_environment(k8s_env, values):
    k8s_env.setenv("EMBEDDING_K8S_GPU_IMAGE", "registry.example.com:5000/team/embedding-assets:abc123-gpu")
    k8s_env.setenv("EMBEDDING_K8S_GPUS", "2")
    k8s_env.setenv("EMBEDDING_K8S_GPU_MEMORY", "48Gi")
    k8s_env.setenv("EMBEDDING_K8S_GPU_NODE_SELECTOR", '{"cloud.google.com/gke-accelerator": "nvidia-l4"}')
    k8s_env.setenv("EMBEDDING_K8S_GPU_TOLERATIONS", '[{"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"}]')
    manifest = render_step_job(values, _executor_config_now(), GPU_ASSET, deployment.gpu_step_tags())
    validate_manifest(manifest)
    assert_gpu_job(manifest, gpus="2", memory="48Gi",
                   node_selector={"cloud.google.com/gke-accelerator": "nvidia-l4"},
                   toleration={"key": "dedicated", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"})
    assert _container(manifest)["image"] == "registry.example.com:5000/team/embedding-assets:abc123-gpu"
    k8s_env.setenv("EMBEDDING_K8S_CPU_REQUEST", "500m")
    k8s_env.setenv("EMBEDDING_K8S_CPU_MEMORY", "3Gi")
    cpu = render_step_job(values, _executor_config_now(), "chunks", deployment.cpu_step_tags())
    validate_manifest(cpu)
    assert_cpu_job(cpu)
    assert _container(cpu)["resources"]["requests"] == {"cpu": "500m", "memory": "3Gi"}


def test_zero_gpus_makes_the_embeddings_step_a_cpu_pod(k8s_env, values):
    k8s_env.setenv("EMBEDDING_K8S_GPUS", "0")
    manifest = render_step_job(values, _executor_config_now(), GPU_ASSET, deployment.gpu_step_tags())
    validate_manifest(manifest)
    pod = manifest["spec"]["template"]["spec"]
    assert GPU_RESOURCE not in _container(manifest)["resources"]["requests"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    assert "EMBEDDING_DEVICE" not in {e["name"] for e in _container(manifest).get("env", [])}
    assert_schedulable_resources(manifest)


def test_gpu_step_without_a_gpu_image_keeps_the_runs_image(k8s_env, values):
    """One image for every pod still works (it must then be the GPU image); the pod is told to use CUDA."""
    manifest = render_step_job(values, _executor_config_now(), GPU_ASSET, deployment.gpu_step_tags())
    validate_manifest(manifest)
    assert _container(manifest)["image"] == IMAGE
    assert_gpu_job(manifest)


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_an_explicit_cuda_device_is_kept(k8s_env, device):
    k8s_env.setenv("EMBEDDING_DEVICE", device)
    env = deployment.gpu_step_tags()[deployment.K8S_CONFIG_TAG]["container_config"].get("env", [])
    assert "EMBEDDING_DEVICE" not in {e["name"] for e in env}  # the pod inherits EMBEDDING_DEVICE as set


def test_a_gpu_pod_told_to_embed_on_cpu_is_refused(k8s_env):
    k8s_env.setenv("EMBEDDING_DEVICE", "cpu")
    with pytest.raises(ValueError, match="EMBEDDING_DEVICE=cpu with EMBEDDING_K8S_GPUS=1"):
        deployment.gpu_step_tags()
    k8s_env.setenv("EMBEDDING_K8S_GPUS", "0")
    assert deployment.gpu_step_tags()


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("EMBEDDING_K8S_GPUS", "one", "EMBEDDING_K8S_GPUS='one'"),
        ("EMBEDDING_K8S_GPUS", "-1", "whole number >= 0"),
        ("EMBEDDING_K8S_GPU_MEMORY", "32 GB", "Kubernetes quantity"),
        ("EMBEDDING_K8S_GPU_NODE_SELECTOR", "{nvidia: true}", "EMBEDDING_K8S_GPU_NODE_SELECTOR is not valid JSON"),
        ("EMBEDDING_K8S_GPU_NODE_SELECTOR", '["a"]', "JSON object"),
        ("EMBEDDING_K8S_GPU_NODE_SELECTOR", '{"gpu": true}', "label"),
        ("EMBEDDING_K8S_GPU_TOLERATIONS", '{"key": "x"}', "JSON list"),
        ("EMBEDDING_K8S_GPU_TOLERATIONS", '[{"key": "x", "effect": "NoSchedul"}]', "effect"),
        ("EMBEDDING_K8S_GPU_TOLERATIONS", '[{"kee": "x"}]', "unknown toleration field"),
        ("EMBEDDING_K8S_GPU_IMAGE", "Registry.example.com/Embedding Assets:gpu", "image reference"),
    ],
)
def test_malformed_gpu_settings_are_refused_with_the_variable_name(k8s_env, name, value, message):
    k8s_env.setenv(name, value)
    with pytest.raises(ValueError, match=re.escape(message)):
        deployment.gpu_step_tags()


def test_k8s_env_vars_are_documented_and_set_in_values(values):
    readme = README.read_text()
    env = _values_env(values)
    for name, (default, meaning) in deployment.K8S_ENV_VARS.items():
        assert meaning
        shown = f"`{default or '(none)'}`"
        assert f"| `{name}` | {shown} |" in readme, f"{name} (default {default!r}) missing from the README table"
        assert name in env, f"values.yaml does not list {name}"
        if default:
            assert env[name] == default, f"values.yaml sets {name}={env[name]!r}, the documented default is {default!r}"
    # values.yaml lists every EMBEDDING_K8S_* variable, and only real ones
    assert {n for n in env if n.startswith("EMBEDDING_K8S_")} == set(deployment.K8S_ENV_VARS)


def test_the_install_command_sets_the_gpu_image_where_values_has_it(values):
    """The README (and values.yaml's header) set the GPU image with --set ...env[1].value."""
    env = _user_deployment(values)["env"]
    assert env[1]["name"] == "EMBEDDING_K8S_GPU_IMAGE"
    setting = '--set "dagster-user-deployments.deployments[0].env[1].value=$IMAGE_REPO:$IMAGE_TAG-gpu"'
    assert setting in README.read_text() and setting in VALUES.read_text()
    assert "--skip-schema-validation" in README.read_text() and "--skip-schema-validation" in VALUES.read_text()


def test_compute_logs_go_to_the_object_store_with_the_lake_secret(values):
    clm = values["computeLogManager"]
    assert clm["type"] == "S3ComputeLogManager"
    s3 = clm["config"]["s3ComputeLogManager"]
    lake = _values_env(values)["EMBEDDING_LAKE"]
    assert lake.startswith("s3://") and lake.split("/")[2] == s3["bucket"], "logs go to the lake's bucket"
    assert s3["prefix"] and not lake.split("/", 3)[3].startswith(s3["prefix"]), "logs stay outside the lake"
    # the same secret: the webserver reads the logs, the run and step pods (user deployment) write them
    secrets = [s["name"] for s in _user_deployment(values)["envSecrets"]]
    assert [s["name"] for s in values["dagsterWebserver"]["envSecrets"]] == secrets == ["embedding-object-storage"]
    # the writer needs dagster-aws of the dagster-k8s release line in both images
    for lock in ("requirements-cpu.lock", "requirements-gpu.lock"):
        text = (K8S / lock).read_text()
        k8s_version = re.search(r"^dagster-k8s==(\S+)", text, re.M).group(1)
        assert re.search(rf"^dagster-aws=={re.escape(k8s_version)} ", text, re.M), lock


# --- raw manifests ---------------------------------------------------------------------------


def _raw_manifests() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted(K8S.rglob("*.y*ml")):
        if path == VALUES:
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                found.append((path, doc))
    return found


def test_every_raw_manifest_is_valid_kubernetes():
    manifests = _raw_manifests()
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _path, doc in manifests}
    assert {("Namespace", "embedding-assets"), ("Secret", "embedding-object-storage"),
            ("Secret", "dagster-postgresql-secret")} <= kinds, kinds
    for path, doc in manifests:
        assert isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc, path
        try:
            validate_manifest(doc)
        except AssertionError as exc:
            raise AssertionError(f"{path.relative_to(REPO)}: {exc}") from None
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == "embedding-assets", f"{path.name}: {doc['kind']} outside the namespace"


def test_manifests_match_what_values_refers_to(values):
    by_kind: dict[tuple[str, str], dict[str, Any]] = {(d["kind"], d["metadata"]["name"]): d for _p, d in _raw_manifests()}
    for secret in _user_deployment(values)["envSecrets"]:
        assert ("Secret", secret["name"]) in by_kind
    pg_secret = by_kind[("Secret", values["global"]["postgresqlSecretName"])]
    assert "postgresql-password" in pg_secret["stringData"]
    pg = values["postgresql"]
    assert not pg["enabled"] and not values["generatePostgresqlPasswordSecret"]
    service = by_kind[("Service", pg["postgresqlHost"])]
    assert service["spec"]["ports"][0]["port"] == pg["service"]["port"]
    server = by_kind[("StatefulSet", pg["postgresqlHost"])]["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in server["env"]}
    assert env["POSTGRES_USER"]["value"] == pg["postgresqlUsername"]
    assert env["POSTGRES_DB"]["value"] == pg["postgresqlDatabase"]
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": values["global"]["postgresqlSecretName"], "key": "postgresql-password"}


# --- values.yaml and the README --------------------------------------------------------------

# Top-level keys of the dagster chart's values (a typo would be silently ignored by Helm).
_CHART_TOP_LEVEL_KEYS = {
    "global", "nameOverride", "fullnameOverride", "rbacEnabled", "postgresqlSecretName", "dagsterHome",
    "serviceAccount", "imagePullSecrets", "dagsterWebserver", "computeLogManager", "pythonLogs",
    "dagster-user-deployments", "pipelineRun", "scheduler", "runLauncher", "postgresql",
    "generatePostgresqlPasswordSecret", "generateCeleryConfigSecret", "rabbitmq", "redis", "flower", "ingress",
    "dagsterDaemon", "busybox", "migrate", "telemetry", "serviceMonitor", "retention", "additionalInstanceConfig",
    "concurrency", "defsStateStorage",
}


def _lookup(data: Any, path: str) -> Any:
    """'a.b[0].env[NAME]' -> value; [NAME] picks the list item whose name is NAME (and gives its value)."""
    for part in re.findall(r"[^.\[\]]+|\[[^\]]+\]", path):
        if part.startswith("["):
            key = part[1:-1]
            if key.isdigit():
                data = data[int(key)]
            else:
                matches = [item for item in data if item.get("name") == key]
                assert matches, f"{path}: no item named {key}"
                data = matches[0].get("value", matches[0])
        else:
            assert isinstance(data, dict) and part in data, f"{path}: no key {part!r}"
            data = data[part]
    return data


def _readme_values_table() -> list[tuple[str, Any]]:
    text = README.read_text()
    block = text.split("<!-- values-table:start -->", 1)[1].split("<!-- values-table:end -->", 1)[0]
    rows = []
    for line in block.splitlines():
        match = re.match(r"^\|\s*`([^`]+)`\s*\|\s*`([^`]+)`\s*\|$", line.strip())
        if match:
            rows.append((match.group(1), yaml.safe_load(match.group(2))))
    return rows


def test_values_set_what_the_readme_says(values):
    rows = _readme_values_table()
    documented = {key for key, _ in rows}
    for essential in (
        "dagster-user-deployments.deployments[0].dagsterApiGrpcArgs", "runLauncher.type", "postgresql.enabled",
        "postgresql.postgresqlHost", "dagsterDaemon.runRetries.enabled", "concurrency.enabled",
        "concurrency.pools.defaultLimit", "concurrency.pools.granularity",
        "dagster-user-deployments.deployments[0].env[EMBEDDING_DEPLOYMENT]",
    ):
        assert essential in documented, f"the README's values table lost {essential}"
    for key, expected in rows:
        assert _lookup(values, key) == expected, f"values.yaml {key} = {_lookup(values, key)!r}, README says {expected!r}"


def test_values_serve_the_project_module_without_a_gpu(values):
    assert set(values) <= _CHART_TOP_LEVEL_KEYS, set(values) - _CHART_TOP_LEVEL_KEYS
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    module = pyproject["tool"]["dagster"]["module_name"]
    dep = _user_deployment(values)
    args = dep["dagsterApiGrpcArgs"]
    assert args[args.index("--module-name") + 1] == module == "embedding_assets.definitions"
    # the code server (and with it the run worker) holds no GPU and lands on no GPU node
    for section in ("requests", "limits"):
        assert not [k for k in (dep.get("resources") or {}).get(section, {}) if "gpu" in k.lower()]
    assert not dep.get("nodeSelector") and not dep.get("tolerations")
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    assert "resources" not in values["runLauncher"]["config"]["k8sRunLauncher"] or not any(
        "gpu" in k for s in values["runLauncher"]["config"]["k8sRunLauncher"]["resources"].values() for k in s)
    assert values["dagsterDaemon"]["runRetries"]["enabled"] and values["dagsterDaemon"]["runRetries"]["maxRetries"] >= 1
    pools = values["concurrency"]["pools"]
    assert values["concurrency"]["enabled"] and pools["granularity"] == "op" and pools["defaultLimit"] >= 1


def test_readme_explains_the_gpu_pool():
    readme = README.read_text()
    assert f"dagster instance concurrency set {deployment.GPU_POOL}" in readme
    assert "concurrency.pools.defaultLimit" in readme
    for step in ("docker build -f k8s/Dockerfile", "docker push", "helm upgrade --install", "-f k8s/values.yaml",
                 "EMBEDDING_LAKE", "s3://", "_READY", "port-forward"):
        assert step in readme, step


def _dockerfile_stages() -> dict[str, str]:
    """Stage name -> its logical lines (continuations joined)."""
    logical = re.sub(r"\\\n", " ", (K8S / "Dockerfile").read_text())
    stages, name = {"": ""}, ""
    for line in logical.splitlines():
        match = re.match(r"^FROM\s+\S+(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            name = match.group(1) or f"unnamed{len(stages)}"
            stages[name] = ""
        stages[name] += line + "\n"
    return stages


def test_dockerfile_builds_a_cpu_and_a_gpu_image_from_the_locks():
    stages = _dockerfile_stages()
    assert {"base", "build", "cpu", "gpu"} <= set(stages)
    base = re.search(r"^ARG PYTHON_IMAGE=(\S+)", stages[""], re.M)
    # Python from an official Python image, patch version pinned; no CUDA base, no PPA
    assert base and re.fullmatch(r"python:3\.11\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", base.group(1)), base
    whole = "".join(stages.values())
    assert not re.search(r"^(FROM|ARG) .*nvidia/cuda", whole, re.M), "torch brings its own CUDA libraries"
    assert "add-apt-repository" not in whole and "ppa:" not in whole and "pip install --upgrade pip" not in whole
    assert list(stages)[-1] == "cpu", "a plain `docker build` gives the slim image"
    for kind in ("cpu", "gpu"):
        stage = stages[kind]
        assert re.search(rf"pip install --no-deps --require-hashes -r \S*requirements-{kind}\.lock", stage), kind
        assert re.search(r"pip install --no-deps \S*\.whl", stage), kind
        assert re.search(r"^USER (?!root|0\b)", stage, re.M), kind
    assert "--require-hashes -r /tmp/locks/requirements-build.lock" in stages["build"]
    assert "--no-build-isolation" in stages["build"]
    # the GPU build fails on a CPU-only torch or another CUDA line; the CPU build fails on any torch
    assert "torch.version.cuda" in stages["gpu"] and "'13'" in stages["gpu"]
    assert 'NVIDIA_REQUIRE_CUDA="cuda>=13.0"' in stages["gpu"]
    assert "find_spec('torch')" in stages["cpu"] and "sys.modules['torch'] = None" in stages["cpu"]
    assert "download.pytorch.org/whl/cpu" not in whole and "+cpu" not in whole
    ignore = (K8S / "Dockerfile.dockerignore").read_text()
    assert "!k8s/requirements-*.lock" in ignore
