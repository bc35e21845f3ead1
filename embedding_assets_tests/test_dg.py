"""The dg CLI works on this project: `dg check defs` and `dg list defs` read [tool.dg] in pyproject.toml."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)


def _dg(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "VIRTUAL_ENV": os.path.dirname(BIN), "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    return subprocess.run([os.path.join(BIN, "dg"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_dg_check_defs_passes():
    done = _dg("check", "defs")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "All definitions loaded successfully" in done.stdout + done.stderr


def test_dg_list_defs_lists_every_asset_check_job_sensor_and_resource():
    done = _dg("list", "defs", "--json")
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout)
    assert {a["asset_key"] for a in listed["assets"]} == {
        "raw_documents", "rejected_documents", "chunks", "length_buckets", "embeddings", "document_embeddings",
    }
    assert len(listed["asset_checks"]) == 6
    assert [j["name"] for j in listed["jobs"]] == ["embed_batch"]
    assert [s["name"] for s in listed["sensors"]] == ["landing_sensor"]
    assert sorted(r["name"] for r in listed["resources"]) == ["lake", "model"]
