"""Integrity hash: blake2b-256 over a canonical msgpack encoding (sorted keys, typed values)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from domain.phases import PrunePhase
from infrastructure.transcoder import MsgpackTranscoder

_CANONICAL = MsgpackTranscoder(enums=[PrunePhase])


def _canonical(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _canonical(value[k]) for k in sorted(value, key=repr)}
    if isinstance(value, list | tuple):
        return [_canonical(v) for v in value]
    return value


def canonical_bytes(fields: Mapping[str, object]) -> bytes:
    return _CANONICAL.encode(_canonical(fields))


def integrity_hash(fields: Mapping[str, object]) -> str:
    return hashlib.blake2b(canonical_bytes(fields), digest_size=32).hexdigest()
