"""Jellyfish-style sparse Merkle tree: pure functions, no I/O.

Nodes are content-addressed (`node_hash = sha256(encoding)`) and reached through a `read`
callable, so the same logic serves an in-memory dict in tests and SQLite in production.

Shape (canonical): a leaf sits at the shallowest depth where its key-hash prefix is unique,
and every internal node holds at least two keys below it. Leaves do not encode their depth,
so a leaf moves up or down without changing its hash. The same key/value set therefore gives
the same root hash whatever the order of updates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from infrastructure.smt_codec import (
    EMPTY_ROOT,
    HASH_LEN,
    INTERNAL_TAG,
    LEAF_TAG,
    MAX_DEPTH,
    OBJECT_VALUE_TAG,
    PLAIN_VALUE_TAG,
    FetchNodes,
    MalformedNodeError,
    MissingNodeError,
    ReadNode,
    children,
    decode_internal,
    decode_leaf,
    decode_value,
    encode_internal,
    encode_leaf,
    encode_value,
    is_leaf,
    key_hash,
    node_hash,
    sha256,
)

# The node format lives in smt_codec; callers keep using `smt.<name>` for both.
__all__ = [
    "EMPTY_ROOT",
    "HASH_LEN",
    "INTERNAL_TAG",
    "LEAF_TAG",
    "MAX_DEPTH",
    "OBJECT_VALUE_TAG",
    "PLAIN_VALUE_TAG",
    "FetchNodes",
    "Item",
    "MalformedNodeError",
    "MissingNodeError",
    "ReadNode",
    "VerifyReport",
    "children",
    "decode_internal",
    "decode_leaf",
    "decode_value",
    "encode_internal",
    "encode_leaf",
    "encode_value",
    "get",
    "is_leaf",
    "key_hash",
    "node_hash",
    "reachable",
    "sha256",
    "update",
    "verify_walk",
]


def _nibble(kh: bytes, depth: int) -> int:
    byte = kh[depth >> 1]
    return byte & 0x0F if depth & 1 else byte >> 4


# --- reads --------------------------------------------------------------------------------


def get(read: ReadNode, root: bytes, key: bytes) -> bytes | None:
    """The value bytes stored under `key` in the tree at `root`, or None."""
    kh = key_hash(key)
    current = root
    for depth in range(MAX_DEPTH + 1):
        if current == EMPTY_ROOT:
            return None
        encoded = read(current)
        if encoded[0] == LEAF_TAG:
            leaf_kh, value = decode_leaf(encoded)
            return value if leaf_kh == kh else None
        child = decode_internal(encoded).get(_nibble(kh, depth))
        if child is None:
            return None
        current = child
    raise MalformedNodeError("tree deeper than a key hash")


# --- updates ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Sub:
    """A rebuilt subtree: its hash, and the leaf itself when the subtree is one leaf."""

    hash: bytes
    leaf: tuple[bytes, bytes] | None


Item = tuple[bytes, bytes | None]  # (key_hash, value or None for delete)


class _Updater:
    def __init__(self, read: ReadNode) -> None:
        self.read = read
        self.written: dict[bytes, bytes] = {}
        self.old_path: list[bytes] = []

    def write(self, encoded: bytes, leaf: tuple[bytes, bytes] | None = None) -> _Sub:
        h = node_hash(encoded)
        self.written[h] = encoded
        return _Sub(h, leaf)

    def leaf(self, kh: bytes, value: bytes) -> _Sub:
        return self.write(encode_leaf(kh, value), (kh, value))

    def build(self, depth: int, items: list[tuple[bytes, bytes]]) -> _Sub | None:
        """A fresh subtree over `items` (sorted by key hash); writes every node."""
        if not items:
            return None
        if len(items) == 1:
            return self.leaf(*items[0])
        if depth >= MAX_DEPTH:
            raise MalformedNodeError("duplicate key hash")
        groups: dict[int, list[tuple[bytes, bytes]]] = {}
        for item in items:
            groups.setdefault(_nibble(item[0], depth), []).append(item)
        kids: dict[int, bytes] = {}
        for nibble, group in groups.items():
            sub = self.build(depth + 1, group)
            assert sub is not None
            kids[nibble] = sub.hash
        return self.write(encode_internal(kids))

    def apply(self, h: bytes, depth: int, items: list[Item]) -> _Sub | None:
        if h == EMPTY_ROOT:
            return self.build(depth, [(kh, v) for kh, v in items if v is not None])
        encoded = self.read(h)
        self.old_path.append(h)
        if encoded[0] == LEAF_TAG:
            # Merge the old leaf with the changes and rebuild; it may move down.
            merged = dict([decode_leaf(encoded)])
            for kh, value in items:
                if value is None:
                    merged.pop(kh, None)
                else:
                    merged[kh] = value
            return self.build(depth, sorted(merged.items()))
        if encoded[0] != INTERNAL_TAG:
            raise MalformedNodeError(f"bad node tag {encoded[0]}")
        kids = decode_internal(encoded)
        groups: dict[int, list[Item]] = {}
        for item in items:
            groups.setdefault(_nibble(item[0], depth), []).append(item)
        leaves: dict[int, tuple[bytes, bytes]] = {}
        for nibble, group in groups.items():
            sub = self.apply(kids.get(nibble, EMPTY_ROOT), depth + 1, group)
            if sub is None:
                kids.pop(nibble, None)
                continue
            kids[nibble] = sub.hash
            if sub.leaf is not None:
                leaves[nibble] = sub.leaf
        if not kids:
            return None
        if len(kids) == 1:
            # One child left: if it is a leaf, it replaces this node (collapse).
            ((nibble, only),) = kids.items()
            leaf = leaves.get(nibble)
            if nibble not in groups:  # an untouched child: look at what it is
                peeked = self.read(only)
                if peeked[0] == LEAF_TAG:
                    leaf = decode_leaf(peeked)
            if leaf is not None:
                return self.leaf(*leaf)
        return self.write(encode_internal(kids))


def update(
    read: ReadNode, root: bytes, changes: Mapping[bytes, bytes | None]
) -> tuple[bytes, dict[bytes, bytes], list[bytes]]:
    """Apply `changes` (key -> value bytes, None deletes) to the tree at `root`.

    Returns `(new_root, written_nodes, replaced_hashes)`. `written_nodes` holds every node
    on every rebuilt path, including moved leaves and hashes that already exist: the store
    re-stamps each one (the write barrier). `replaced_hashes` are old path nodes that the
    new tree no longer uses there (candidates for the stale index).
    """
    items: list[Item] = []
    for key, value in changes.items():
        if value is not None:
            decode_value(value)  # reject bytes that `children` would misread
        items.append((key_hash(key), value))
    if not items:
        return root, {}, []
    items.sort(key=lambda item: item[0])
    updater = _Updater(read)
    sub = updater.apply(root, 0, items)
    new_root = EMPTY_ROOT if sub is None else sub.hash
    written = updater.written
    replaced = list(dict.fromkeys(h for h in updater.old_path if h not in written))
    return new_root, written, replaced


def reachable(read: ReadNode, root: bytes) -> dict[bytes, bytes]:
    """Every node reachable from `root` (nested object trees included), iteratively."""
    out: dict[bytes, bytes] = {}
    stack = [] if root == EMPTY_ROOT else [root]
    while stack:
        h = stack.pop()
        if h in out:
            continue
        encoded = read(h)
        out[h] = encoded
        stack.extend(c for c in children(encoded) if c not in out)
    return out


@dataclass(slots=True)
class VerifyReport:
    roots: int = 0
    nodes: int = 0  # distinct nodes present and hashing to their key
    internal: int = 0
    leaves: int = 0
    object_roots: int = 0  # leaf -> field-tree edges followed
    shared_hits: int = 0  # edges into an already-visited node: the DAG at work
    total_bytes: int = 0  # len(hash) + len(data) of the good nodes
    missing: list[bytes] = field(default_factory=list)
    corrupt: list[bytes] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.missing and not self.corrupt


def verify_walk(fetch: FetchNodes, roots: Iterable[bytes], batch_size: int = 500) -> VerifyReport:
    """Iterative traversal from `roots`, re-hashing every node, each node visited once.

    A corrupt node's children are not followed: its bytes cannot be trusted to name them.
    """
    report = VerifyReport()
    visited: set[bytes] = set()
    frontier: list[bytes] = []
    for root in roots:
        report.roots += 1
        if root != EMPTY_ROOT and root not in visited:
            visited.add(root)
            frontier.append(root)
    while frontier:
        batch = frontier[-batch_size:]
        del frontier[-batch_size:]
        found = fetch(batch)
        for h in batch:
            data = found.get(h)
            if data is None:
                report.missing.append(h)
                continue
            try:
                if node_hash(data) != h:
                    raise MalformedNodeError("hash mismatch")
                kids = children(data)
            except (MalformedNodeError, IndexError):
                report.corrupt.append(h)
                continue
            report.nodes += 1
            report.total_bytes += len(data) + len(h)
            if data[0] == LEAF_TAG:
                report.leaves += 1
                report.object_roots += len(kids)
            else:
                report.internal += 1
            for child in kids:
                if child in visited:
                    report.shared_hits += 1
                else:
                    visited.add(child)
                    frontier.append(child)
    return report
