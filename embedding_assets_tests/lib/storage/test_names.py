"""The batch-name rule: the whole name must match, so nothing (not even a newline) can trail it."""

from __future__ import annotations

import pytest

from embedding_assets.lib.storage import BATCH_NAME, validate_batch
from embedding_assets.lib.storage.landing import batch_states


@pytest.mark.parametrize("name", ["b1", "2024-05-01", "a.b_c=d-e", "x" * 128])
def test_valid_batch_names(name):
    assert validate_batch(name) == name


@pytest.mark.parametrize("name", ["a\n", "", "_b", ".b", "a/b", "..", "a..b", "a b", "x" * 129, "é", "a\x00"])
def test_invalid_batch_names(name):
    with pytest.raises(ValueError, match="one folder name"):
        validate_batch(name)


def test_a_trailing_newline_is_refused_by_the_pattern_itself():
    assert BATCH_NAME.match("a\n") is not None  # why the rule matches the whole name, never with .match
    assert BATCH_NAME.fullmatch("a\n") is None


def test_landing_folders_follow_the_same_rule(tmp_path):
    for name in ("good", "bad name", "a\n"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "doc.txt").write_text("text")
    found, invalid = batch_states(str(tmp_path))
    assert [batch.name for batch in found] == ["good"]
    assert sorted(invalid) == ["a\n", "bad name"]
