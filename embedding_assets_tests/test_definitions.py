"""The code location loads fast and light, and the README documents what the code reads."""

import os
import subprocess
import sys

from embedding_assets.defs.deployment import K8S_ENV_VARS
from embedding_assets.lib.settings import ENV_VARS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_loading_definitions_imports_no_torch_and_loads_no_model():
    code = (
        "import sys, embedding_assets.definitions as d\n"
        "heavy = [m for m in ('torch', 'sentence_transformers', 'transformers', 'onnxruntime') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "keys = {k.to_user_string() for k in d.defs.resolve_asset_graph().get_all_asset_keys()}\n"
        "assert keys == {'raw_documents', 'rejected_documents', 'chunks', 'length_buckets', 'embeddings', 'document_embeddings'}, keys\n"
        "assert d.defs.resolve_sensor_def('landing_sensor')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_engine_core_imports_without_dagster():
    code = (
        "import sys, embedding_assets.lib.encoders, embedding_assets.lib.batching, embedding_assets.lib.chunking\n"
        "assert 'dagster' not in sys.modules and 'deltalake' not in sys.modules and 'polars' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_readme_documents_every_variable_and_the_ci_command():
    readme = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()
    for name in [*ENV_VARS, *K8S_ENV_VARS]:
        assert f"`{name}`" in readme, f"{name} is not in the README's environment table"
    ci = open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8").read()
    assert "make test" in ci and "make test" in readme
