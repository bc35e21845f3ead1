"""Resources: each field described with its variable and default, resolved from the environment at run time."""

import pytest

from embedding_assets.defs.embedding.resources import ModelResource
from embedding_assets.defs.resources import LakeResource
from embedding_assets.lib.settings import ENV_VARS


def test_every_field_says_what_it_does_and_which_variable_sets_it():
    for resource in (LakeResource, ModelResource):
        for name, field in resource.model_fields.items():
            assert field.description and "EMBEDDING_" in field.description and "Unset:" in field.description, (resource, name)
            assert field.default is None  # nothing is read when the definitions load


def test_unset_fields_follow_the_environment_at_run_time(monkeypatch):
    lake = LakeResource()  # built first, as the definitions build it at load time
    monkeypatch.delenv("EMBEDDING_LAKE", raising=False)
    monkeypatch.delenv("EMBEDDING_MAX_REJECT_FRACTION", raising=False)
    assert lake.lake_root == ENV_VARS["EMBEDDING_LAKE"][0]
    assert lake.reject_threshold == float(ENV_VARS["EMBEDDING_MAX_REJECT_FRACTION"][0])
    monkeypatch.setenv("EMBEDDING_LAKE", "s3://bucket/lake")
    monkeypatch.setenv("EMBEDDING_COMMIT_SECONDS", "5")
    assert lake.lake_root == "s3://bucket/lake" and lake.commit_interval == 5.0
    assert LakeResource(lake="/set/in/code").lake_root == "/set/in/code"  # a configured value wins
    monkeypatch.setenv("EMBEDDING_TOKEN_BUDGET", "")
    assert ModelResource()._settings()[4] is None  # empty = tuned or default budget


def test_a_malformed_value_names_its_variable(monkeypatch):
    monkeypatch.setenv("EMBEDDING_MAX_REJECT_FRACTION", "1.5")
    with pytest.raises(ValueError, match="EMBEDDING_MAX_REJECT_FRACTION='1.5'"):
        LakeResource().reject_threshold
    monkeypatch.setenv("EMBEDDING_CHUNK_OVERLAP", "lots")
    with pytest.raises(ValueError, match="EMBEDDING_CHUNK_OVERLAP='lots'"):
        LakeResource().overlap
