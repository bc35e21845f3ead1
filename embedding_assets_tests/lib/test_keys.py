"""Vectorized key lookups: fixed-width keys, the key index, first-unseen claims."""

import numpy as np
import pyarrow as pa
import pytest

from embedding_assets.lib.chunking import text_hash
from embedding_assets.lib.keys import KeyIndex, claim_new, first_in_batch, fixed_width


def test_fixed_width_is_zero_copy_for_equal_lengths_and_exact_otherwise():
    hashes = pa.array([text_hash(t) for t in ("a", "b", "c")])
    column = fixed_width(hashes.slice(1))
    assert column.dtype == np.dtype("S64") and [k.decode() for k in column] == hashes.slice(1).to_pylist()
    assert np.shares_memory(column, np.frombuffer(hashes.buffers()[2], dtype=np.uint8))
    mixed = fixed_width(pa.chunked_array([["ab", "c"], ["", "déf"]]))
    assert [k.decode() for k in mixed] == ["ab", "c", "", "déf"]
    with pytest.raises(ValueError, match="null"):
        fixed_width(pa.array(["a", None]))


def test_key_index_finds_every_row_of_a_key_and_rejects_unknown_keys():
    keys = pa.chunked_array([["k2", "k1", "k2", "k3"], ["k1", "k2"]])
    index = KeyIndex(keys)
    assert len(index) == 3 and index.rows == 6
    groups = index.group(pa.array(["k2", "nope", "k1", "k2", "k22", "k"]))
    assert groups[1] == groups[4] == groups[5] == -1
    assert groups[0] == groups[3] and groups[0] != groups[2] and groups[0] >= 0
    rows, owner = index.rows_of(groups[[0, 2]])
    assert sorted(rows[owner == 0].tolist()) == [0, 2, 5]  # every row holding k2
    assert sorted(rows[owner == 1].tolist()) == [1, 4]
    assert index.group(np.array([b"k3"])).tolist() == [index.group(pa.array(["k3"]))[0]]
    # A query key longer than any indexed key is simply absent.
    assert index.group(pa.array(["k3-and-much-longer"])).tolist() == [-1]
    assert KeyIndex(pa.array([], pa.string())).group(pa.array(["x"])).tolist() == [-1]


def test_first_in_batch_keeps_one_of_each():
    assert first_in_batch(np.array([3, 1, 3, -1, 1, 2])).tolist() == [True, True, False, True, False, True]
    assert first_in_batch(np.array([], dtype=np.int64)).tolist() == []


def test_claim_new_takes_each_key_once_across_batches():
    index = KeyIndex(pa.array(["a", "b", "c", "b"]))
    claimed = np.zeros(len(index), dtype=bool)
    picked, groups = claim_new(index, claimed, pa.array(["b", "x", "b", "a"]))
    assert picked.tolist() == [0, 3] and len(set(groups.tolist())) == 2
    picked, _ = claim_new(index, claimed, pa.array(["a", "c", "c"]))
    assert picked.tolist() == [1] and claimed.all()
