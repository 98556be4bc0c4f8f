from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from infrastructure import smt
from infrastructure.smt import EMPTY_ROOT, MissingNodeError, encode_value


class MemoryNodes:
    """A dict-backed node store: the simplest `read` the tree logic accepts."""

    def __init__(self) -> None:
        self.nodes: dict[bytes, bytes] = {}

    def read(self, h: bytes) -> bytes:
        try:
            return self.nodes[h]
        except KeyError:
            raise MissingNodeError(h) from None

    def apply(self, root: bytes, changes: dict[bytes, bytes | None]) -> bytes:
        new_root, written, _ = smt.update(self.read, root, changes)
        self.nodes.update(written)
        return new_root


def v(text: str) -> bytes:
    return encode_value(text.encode())


def keys_below(nodes: MemoryNodes, h: bytes, depth: int, prefix: list[int]) -> list[bytes]:
    """Check the Jellyfish shape under `h` and return the key hashes it holds."""
    encoded = nodes.read(h)
    if smt.is_leaf(encoded):
        kh, _ = smt.decode_leaf(encoded)
        assert [smt._nibble(kh, d) for d in range(depth)] == prefix
        return [kh]
    out: list[bytes] = []
    for nibble, child in smt.decode_internal(encoded).items():
        out += keys_below(nodes, child, depth + 1, [*prefix, nibble])
    # An internal node over fewer than two keys would have collapsed: canonical shape.
    assert len(out) >= 2
    return out


def path_to(nodes: MemoryNodes, root: bytes, key: bytes) -> list[bytes]:
    kh = smt.key_hash(key)
    path, current, depth = [], root, 0
    while True:
        path.append(current)
        encoded = nodes.read(current)
        if smt.is_leaf(encoded):
            return path
        current = smt.decode_internal(encoded)[smt._nibble(kh, depth)]
        depth += 1


KEYS = st.sampled_from([b"k%d" % i for i in range(40)])
VALUES = st.one_of(st.none(), st.sampled_from([v("a"), v("b"), v("c")]))
BATCHES = st.lists(st.dictionaries(KEYS, VALUES, max_size=12), min_size=1, max_size=8)


@settings(max_examples=150, deadline=None)
@given(batches=BATCHES, data=st.data())
def test_the_same_key_value_set_gives_the_same_root_whatever_the_update_order(
    batches: list[dict[bytes, bytes | None]], data: st.DataObject
) -> None:
    nodes = MemoryNodes()
    root = EMPTY_ROOT
    final: dict[bytes, bytes] = {}
    for batch in batches:
        root = nodes.apply(root, batch)
        for key, value in batch.items():
            if value is None:
                final.pop(key, None)
            else:
                final[key] = value
    one_shot = MemoryNodes().apply(EMPTY_ROOT, dict(final))
    assert root == one_shot
    one_by_one, other = EMPTY_ROOT, MemoryNodes()
    for key in data.draw(st.permutations(sorted(final))):
        one_by_one = other.apply(one_by_one, {key: final[key]})
    assert one_by_one == root
    if final:
        assert sorted(keys_below(nodes, root, 0, [])) == sorted(map(smt.key_hash, final))
    else:
        assert root == EMPTY_ROOT
    for key, value in final.items():
        assert smt.get(nodes.read, root, key) == value


def test_get_after_update_returns_the_value_and_none_for_absent_keys() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"alice": v("1"), b"bob": v("2")})
    assert smt.get(nodes.read, root, b"alice") == v("1")
    assert smt.get(nodes.read, root, b"bob") == v("2")
    assert smt.get(nodes.read, root, b"carol") is None
    assert smt.get(nodes.read, EMPTY_ROOT, b"alice") is None


def test_a_single_key_tree_is_just_its_leaf() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"alice": v("1")})
    assert root == smt.node_hash(smt.encode_leaf(smt.key_hash(b"alice"), v("1")))


def test_deleting_a_sibling_collapses_the_parent_into_the_remaining_leaf() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"alice": v("1"), b"bob": v("2"), b"carol": v("3")})
    root = nodes.apply(root, {b"bob": None, b"carol": None})
    assert root == MemoryNodes().apply(EMPTY_ROOT, {b"alice": v("1")})
    assert nodes.apply(root, {b"alice": None}) == EMPTY_ROOT


def test_deleting_an_absent_key_keeps_the_root() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"alice": v("1"), b"bob": v("2")})
    assert nodes.apply(root, {b"nobody": None}) == root


def test_every_node_on_the_new_path_is_written_even_if_it_already_exists() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"k%d" % i: v("x") for i in range(300)})
    new_root, written, _ = smt.update(nodes.read, root, {b"k7": v("x")})
    assert new_root == root
    assert set(path_to(nodes, root, b"k7")) <= set(written)


def test_a_reverted_value_reuses_the_old_leaf_hash_and_rewrites_it() -> None:
    nodes = MemoryNodes()
    root0 = nodes.apply(EMPTY_ROOT, {b"k%d" % i: v("old") for i in range(100)})
    old_path = path_to(nodes, root0, b"k42")
    root1 = nodes.apply(root0, {b"k42": v("new")})
    root2, written, _ = smt.update(nodes.read, root1, {b"k42": v("old")})
    assert root2 == root0
    assert set(old_path) <= set(written)


def test_replaced_hashes_are_the_old_path_that_the_new_root_no_longer_uses() -> None:
    nodes = MemoryNodes()
    root0 = nodes.apply(EMPTY_ROOT, {b"k%d" % i: v("old") for i in range(100)})
    old_path = path_to(nodes, root0, b"k42")
    root1, written, replaced = smt.update(nodes.read, root0, {b"k42": v("new")})
    nodes.nodes.update(written)
    assert set(replaced) == set(old_path)
    assert not set(replaced) & set(smt.reachable(nodes.read, root1))


def test_a_split_leaf_moves_down_and_is_written_on_its_new_path() -> None:
    nodes = MemoryNodes()
    root0 = nodes.apply(EMPTY_ROOT, {b"alice": v("1")})
    _, written, replaced = smt.update(nodes.read, root0, {b"bob": v("2")})
    assert root0 in written  # the alice leaf, now one level down
    assert replaced == []


def test_values_round_trip_plain_and_as_objects() -> None:
    field_root = smt.sha256(b"fields")
    assert smt.decode_value(encode_value(b"raw")) == (b"raw", None)
    assert smt.decode_value(encode_value(b"obj", field_root)) == (b"obj", field_root)
    with pytest.raises(smt.MalformedNodeError):
        smt.decode_value(b"\x07junk")


def test_children_of_a_leaf_are_its_embedded_object_root_if_any() -> None:
    kh = smt.key_hash(b"o")
    field_root = smt.sha256(b"fields")
    assert smt.children(smt.encode_leaf(kh, encode_value(b"obj", field_root))) == [field_root]
    assert smt.children(smt.encode_leaf(kh, encode_value(b"obj", EMPTY_ROOT))) == []
    assert smt.children(smt.encode_leaf(kh, encode_value(b"plain"))) == []


def test_children_of_an_internal_node_are_in_nibble_order() -> None:
    a, b = smt.sha256(b"a"), smt.sha256(b"b")
    assert smt.children(smt.encode_internal({9: b, 2: a})) == [a, b]
    with pytest.raises(smt.MalformedNodeError):
        smt.children(b"\x09")


def test_a_nested_object_tree_is_reachable_through_its_leaf() -> None:
    nodes = MemoryNodes()
    field_root = nodes.apply(EMPTY_ROOT, {b"f%d" % i: v("field") for i in range(20)})
    root = nodes.apply(EMPTY_ROOT, {b"obj": encode_value(b"obj", field_root), b"x": v("1")})
    _, embedded = smt.decode_value(smt.get(nodes.read, root, b"obj") or b"")
    assert embedded == field_root
    assert smt.get(nodes.read, field_root, b"f3") == v("field")
    assert set(smt.reachable(nodes.read, field_root)) <= set(smt.reachable(nodes.read, root))


def test_a_missing_node_raises_missing_node_error_with_its_hash() -> None:
    nodes = MemoryNodes()
    root = nodes.apply(EMPTY_ROOT, {b"alice": v("1"), b"bob": v("2")})
    del nodes.nodes[root]
    with pytest.raises(MissingNodeError) as caught:
        smt.get(nodes.read, root, b"alice")
    assert caught.value.node_hash == root


def test_update_rejects_a_value_without_a_valid_tag() -> None:
    with pytest.raises(smt.MalformedNodeError):
        smt.update(MemoryNodes().read, EMPTY_ROOT, {b"k": b"\x05oops"})
