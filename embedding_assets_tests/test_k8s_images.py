"""The two images' contents: the lock files agree with pyproject.toml, and the CPU stages need no torch.

All offline: the locks are read as committed (k8s/lock.py writes them), and the CPU stages run in a
fresh interpreter that sees only the packages of the CPU lock (a filtered copy of this environment's
site-packages, as in the slim image: no torch, transformers, sentence-transformers, ONNX).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "k8s"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def _load_lock_tool():
    spec = importlib.util.spec_from_file_location("k8s_lock", K8S / "lock.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


lock_tool = _load_lock_tool()


def read_lock(name: str) -> dict[str, dict]:
    return lock_tool.parse_lock((K8S / name).read_text())


@pytest.fixture(scope="module")
def gpu_lock():
    return read_lock("requirements-gpu.lock")


@pytest.fixture(scope="module")
def cpu_lock():
    return read_lock("requirements-cpu.lock")


def _image_requirements() -> list[Requirement]:
    return [Requirement(r) for r in lock_tool.project_requirements(PYPROJECT)]


def test_the_gpu_lock_satisfies_every_requirement_of_pyproject(gpu_lock):
    for req in _image_requirements():
        name = canonicalize_name(req.name)
        assert name in gpu_lock, f"{req} is missing from requirements-gpu.lock: run `python k8s/lock.py`"
        version = gpu_lock[name]["version"]
        assert req.specifier.contains(version, prereleases=True), f"lock has {name}=={version}, pyproject wants {req}"
        if str(req.specifier).startswith("=="):
            assert version == str(req.specifier)[2:], f"{name}: pinned {req.specifier} in pyproject, {version} in the lock"


def test_the_cpu_lock_is_the_gpu_lock_without_the_encoder(cpu_lock, gpu_lock):
    gpu_only = {canonicalize_name(n) for n in lock_tool.GPU_ONLY}
    for req in _image_requirements():
        name = canonicalize_name(req.name)
        if name in gpu_only:
            assert name not in cpu_lock, f"{name} is in the slim CPU image"
        else:
            assert name in cpu_lock and req.specifier.contains(cpu_lock[name]["version"], prereleases=True), req
    # same versions and the same hashes as the GPU image
    for name, entry in cpu_lock.items():
        assert name in gpu_lock and entry["block"] == gpu_lock[name]["block"], name
    # nothing that only the encoder pulls in: no CUDA libraries, no triton
    heavy = [n for n in cpu_lock if n.startswith(("nvidia-", "cuda-", "torch", "triton", "onnx", "transformers", "sentence-transformers"))]
    assert heavy == []
    # and exactly what k8s/lock.py computes from the GPU lock (so a hand edit shows)
    assert lock_tool.cpu_subset(gpu_lock) == sorted(cpu_lock)


def test_the_gpu_lock_has_the_cuda_13_build_of_torch(gpu_lock):
    assert gpu_lock["torch"]["version"] == "2.13.0"
    assert gpu_lock["nvidia-cuda-runtime"]["version"].startswith("13.")
    assert "nvidia-cudnn-cu13" in gpu_lock and not [n for n in gpu_lock if n.endswith("-cu12")]


def test_the_dagster_family_is_on_one_release_line(gpu_lock, cpu_lock):
    for lock in (gpu_lock, cpu_lock):
        core = Version(lock["dagster"]["version"])
        family = {n: Version(e["version"]) for n, e in lock.items() if n == "dagster" or n.startswith("dagster-")}
        assert {"dagster-k8s", "dagster-postgres", "dagster-aws", "dagster-webserver"} <= set(family)
        for name, version in family.items():
            if version.major >= 1:  # dagster, dagster-webserver, dagster-graphql, dagster-pipes, dagster-shared
                assert version == core, f"{name}=={version} is not on dagster {core}'s line"
            else:  # the libraries: 0.(minor + 16).patch
                assert (version.minor, version.micro) == (core.minor + 16, core.micro), f"{name}=={version} vs dagster {core}"


def test_every_locked_package_is_pinned_with_hashes():
    for name in ("requirements-gpu.lock", "requirements-cpu.lock", "requirements-build.lock"):
        text = (K8S / name).read_text()
        assert "CPython 3.11" in text.splitlines()[1], name
        for package, entry in lock_tool.parse_lock(text).items():
            assert re.fullmatch(r"[0-9][0-9A-Za-z.+!-]*", entry["version"]), (name, package)
            assert any("--hash=sha256:" in line for line in entry["block"]), f"{name}: {package} has no hash"


def test_the_build_lock_satisfies_the_build_system():
    build = read_lock("requirements-build.lock")
    for raw in PYPROJECT["build-system"]["requires"]:
        req = Requirement(raw)
        name = canonicalize_name(req.name)
        assert name in build and req.specifier.contains(build[name]["version"]), raw


def test_the_locks_are_for_the_images_python():
    dockerfile = (K8S / "Dockerfile").read_text()
    python = re.search(r"^ARG PYTHON_IMAGE=python:(\d+\.\d+)\.", dockerfile, re.M).group(1)
    assert python == lock_tool.PYTHON_VERSION
    assert Requirement(f"x{PYPROJECT['project']['requires-python']}").specifier.contains(f"{python}.0")


# --- the CPU stages run with the slim image's packages alone ------------------------------------


def _cpu_image_site(tmp_path: Path, cpu_lock: dict[str, dict]) -> Path:
    """A folder that links to this environment's installed distributions named in the CPU lock, only."""
    import importlib.metadata as md

    site = tmp_path / "cpu-site"
    site.mkdir()
    wanted = set(cpu_lock) | {"packaging"}
    for dist in md.distributions():
        name = canonicalize_name(dist.metadata["Name"] or "")
        if name not in wanted or name == "embedding-assets":
            continue
        base = Path(dist._path).parent  # noqa: SLF001 - the site-packages folder of this distribution
        tops = {Path(dist._path).name}  # noqa: SLF001
        for file in dist.files or []:
            parts = Path(str(file)).parts
            if parts and parts[0] != ".." and not parts[0].endswith(".pth"):
                tops.add(parts[0])
        for top in tops:
            target, link = base / top, site / top
            if target.exists() and not link.exists():
                link.symlink_to(target)
    return site


def test_cpu_stages_run_without_torch(tmp_path, cpu_lock):
    """raw_documents, chunks and length_buckets through the dagster CLI, with no torch importable."""
    site = _cpu_image_site(tmp_path, cpu_lock)
    assert not (site / "torch").exists() and not (site / "transformers").exists()
    landing, lake, home = tmp_path / "landing", tmp_path / "lake", tmp_path / "dagster_home"
    for folder in (landing, lake, home):
        folder.mkdir()
    batch = landing / "b1"
    batch.mkdir()
    (batch / "a.txt").write_text("Delta tables keep every version. " * 40)
    (batch / "b.md").write_text("# Notes\n\nPartitions are written one batch at a time.\n\nChunks never exceed the model's limit.\n")
    (batch / "_READY").write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EMBEDDING_", "PYTHON", "DAGSTER_"))}
    env.update(EMBEDDING_LANDING=str(landing), EMBEDDING_LAKE=str(lake), DAGSTER_HOME=str(home), HF_HUB_OFFLINE="1",
               EMBEDDING_DEPLOYMENT="local", PYTHONPATH=os.pathsep.join([str(REPO), str(site)]))
    # -S: no site-packages but the filtered folder; torch is not there, as in the slim image.
    python = [sys.executable, "-S"]
    probe = subprocess.run([*python, "-c", "import importlib.util as u; print(u.find_spec('torch'))"], env=env,
                           capture_output=True, text=True, timeout=60)
    assert probe.stdout.strip() == "None", probe.stderr
    add = ("import dagster as dg\n"
           "from embedding_assets.definitions import defs\n"
           "partitions = defs.resolve_assets_def('raw_documents').partitions_def\n"
           "dg.DagsterInstance.get().add_dynamic_partitions(partitions.name, ['b1'])\n")
    proc = subprocess.run([*python, "-c", add], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    proc = subprocess.run(
        [*python, "-m", "dagster", "asset", "materialize", "-m", "embedding_assets.definitions",
         "--select", "raw_documents,chunks,length_buckets", "--partition", "b1"],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "RUN_SUCCESS" in output, output[-6000:]
    assert "torch" not in {line.split()[0] for line in output.splitlines() if line.startswith("ModuleNotFoundError")}
    for table in ("raw_documents", "chunks", "length_buckets"):
        assert any((lake / table).rglob("*.parquet")), f"{table} wrote nothing"
