"""Hex digests held as raw bytes in `KeyIndex`: same lookups as the text keys, half the memory."""

import numpy as np
import pyarrow as pa

from embedding_assets.lib.keys import KeyIndex, compact, pack_hex, to_arrow, unpack_hex


def test_pack_round_trips_and_flags_non_hex():
    keys = np.array([b"00ff", b"a1b2", b"zz00", b"ABCD"], dtype="S4")
    packed, ok = pack_hex(keys)
    assert ok.tolist() == [True, True, False, False]  # upper case is not the digests' form
    assert unpack_hex(packed[:2]).tolist() == [b"00ff", b"a1b2"]
    assert compact(keys)[1] is False and compact(keys[:2])[1] is True


def test_packed_index_finds_what_the_text_index_finds():
    rng = np.random.default_rng(0)
    digests = [f"{int(x):064x}" for x in rng.integers(0, 2**62, size=500)]
    digests += ["00" * 32, "f0" + "00" * 31]  # trailing zero bytes once packed
    index = KeyIndex(pa.array(digests + digests[:50]))
    assert index.packed and index.width == 32 and len(index) == len(digests)
    queries = digests[::3] + ["not-a-digest", digests[0].upper(), digests[1] + "0", digests[2][:-2], "0" * 64]
    groups = index.group(pa.array(queries))
    found = [q for q, g in zip(queries, groups) if g >= 0]
    assert found == digests[::3] + ["0" * 64]  # the all-zero digest is indexed too
    assert to_arrow(index.keys(groups[groups >= 0])).to_pylist() == found


def test_compact_keys_packs_part_by_part_and_falls_back_on_a_non_hex_part():
    from embedding_assets.lib.keys import CompactKeys

    hexes = [f"{i:032x}" for i in range(10)]
    all_hex = CompactKeys()
    all_hex.add(pa.array(hexes[:4]))
    all_hex.add(pa.array([], pa.string()))
    all_hex.add(pa.array(hexes[4:]))
    keys, packed = all_hex.result()
    assert packed and keys.dtype.itemsize == 16 and unpack_hex(keys).tolist() == [h.encode() for h in hexes]
    mixed = CompactKeys()
    mixed.add(pa.array(hexes[:4]))
    mixed.add(pa.array(["c1", "c22"]))
    keys, packed = mixed.result()
    assert not packed and [k.decode() for k in keys.tolist()] == hexes[:4] + ["c1", "c22"]
    assert KeyIndex(keys, packed=False).group(pa.array(["c22", hexes[2], "zz"])).tolist()[2] == -1


def test_keys_sharing_their_first_eight_bytes_are_told_apart():
    keys = [f"prefix--{i}" for i in range(50)] + ["prefix--", "prefix-", "other"]
    index = KeyIndex(pa.array(keys))
    queries = keys[::-1] + ["prefix--x", "prefix--100", "prefix"]
    groups = index.group(pa.array(queries))
    assert [index.keys(np.array([g]))[0].decode() if g >= 0 else None for g in groups] == keys[::-1] + [None, None, None]
