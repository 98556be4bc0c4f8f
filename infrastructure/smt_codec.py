"""The sparse Merkle tree's node format: canonical encodings of leaves, internal nodes and
values, and their hashes. Pure functions, no I/O; `infrastructure.smt` re-exports them."""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping

HASH_LEN = 32
EMPTY_ROOT = b"\x00" * HASH_LEN
INTERNAL_TAG = 0x01
LEAF_TAG = 0x02
PLAIN_VALUE_TAG = 0x00
OBJECT_VALUE_TAG = 0x01
MAX_DEPTH = HASH_LEN * 2  # nibbles in a key hash

ReadNode = Callable[[bytes], bytes]
FetchNodes = Callable[[list[bytes]], Mapping[bytes, bytes]]  # batched read: found ones only


class MissingNodeError(LookupError):
    """A node that a root refers to is not in the store."""

    def __init__(self, node_hash: bytes) -> None:
        super().__init__(f"missing node {node_hash.hex()}")
        self.node_hash = node_hash


class MalformedNodeError(ValueError):
    """Bytes that are not a valid node or value encoding."""


def sha256(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def key_hash(key: bytes) -> bytes:
    return hashlib.sha256(key).digest()


def node_hash(encoded: bytes) -> bytes:
    return hashlib.sha256(encoded).digest()


# --- values -------------------------------------------------------------------------------


def encode_value(raw: bytes, object_root: bytes | None = None) -> bytes:
    """A plain value, or an object value that embeds the root of its own field tree."""
    if object_root is None:
        return bytes((PLAIN_VALUE_TAG,)) + raw
    if len(object_root) != HASH_LEN:
        raise MalformedNodeError("object root must be 32 bytes")
    return bytes((OBJECT_VALUE_TAG,)) + object_root + raw


def decode_value(value: bytes) -> tuple[bytes, bytes | None]:
    """Return `(raw, object_root or None)`."""
    if not value:
        raise MalformedNodeError("empty value")
    if value[0] == PLAIN_VALUE_TAG:
        return value[1:], None
    if value[0] == OBJECT_VALUE_TAG and len(value) >= 1 + HASH_LEN:
        return value[1 + HASH_LEN :], value[1 : 1 + HASH_LEN]
    raise MalformedNodeError(f"bad value tag {value[0]}")


# --- node encodings -----------------------------------------------------------------------


def encode_leaf(kh: bytes, value: bytes) -> bytes:
    return bytes((LEAF_TAG,)) + kh + value


def encode_internal(children_by_nibble: Mapping[int, bytes]) -> bytes:
    bitmap = 0
    for nibble in children_by_nibble:
        bitmap |= 1 << nibble
    body = b"".join(children_by_nibble[n] for n in sorted(children_by_nibble))
    return bytes((INTERNAL_TAG,)) + bitmap.to_bytes(2, "big") + body


@functools.lru_cache(maxsize=1 << 16)
def _nibbles_of(bitmap: int) -> tuple[int, ...]:
    return tuple(n for n in range(16) if bitmap >> n & 1)


def decode_internal(encoded: bytes) -> dict[int, bytes]:
    nibbles = _nibbles_of(int.from_bytes(encoded[1:3], "big"))
    return {n: encoded[3 + i * HASH_LEN : 35 + i * HASH_LEN] for i, n in enumerate(nibbles)}


def decode_leaf(encoded: bytes) -> tuple[bytes, bytes]:
    """Return `(key_hash, value)`."""
    return encoded[1 : 1 + HASH_LEN], encoded[1 + HASH_LEN :]


def is_leaf(encoded: bytes) -> bool:
    return encoded[0] == LEAF_TAG


def children(encoded: bytes) -> list[bytes]:
    """The hashes a node refers to; what a reachability traversal follows.

    Hot path (once per node over millions of nodes): slicing only, no per-nibble loop.
    """
    tag = encoded[0]
    if tag == INTERNAL_TAG:
        count = (len(encoded) - 3) // HASH_LEN
        if int.from_bytes(encoded[1:3], "big").bit_count() != count:
            raise MalformedNodeError("internal node bitmap does not match its length")
        return [encoded[i : i + HASH_LEN] for i in range(3, 3 + count * HASH_LEN, HASH_LEN)]
    if tag == LEAF_TAG:
        # Leaf = tag, key hash (32), value; an object value embeds its field-tree root.
        if len(encoded) > 1 + HASH_LEN and encoded[1 + HASH_LEN] == OBJECT_VALUE_TAG:
            root = encoded[2 + HASH_LEN : 2 + 2 * HASH_LEN]
            return [] if root == EMPTY_ROOT else [root]
        return []
    raise MalformedNodeError(f"bad node tag {tag}")
