"""Reach sets: roaring bitmaps of row ids, and their files, one per snapshot, named by digest."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

from pyroaring import BitMap

from domain.errors import ReachSetCorruptError
from domain.ports import ReachSet


class RoaringReach(BitMap):
    """The ReachSet port on a roaring bitmap: bulk steps run inside CRoaring."""

    def add_new(self, row_ids: Iterable[int], *, unless_in: ReachSet | None = None) -> list[int]:
        new = self._absent(row_ids, unless_in)
        self |= new
        return list(new)

    def absent(self, row_ids: Iterable[int], *, unless_in: ReachSet | None = None) -> list[int]:
        return list(self._absent(row_ids, unless_in))

    def _absent(self, row_ids: Iterable[int], unless_in: ReachSet | None) -> BitMap:
        new = BitMap(row_ids)  # an array("I") is read as a buffer: no int object per id
        new -= self
        if isinstance(unless_in, BitMap):
            new -= unless_in
        elif unless_in is not None:
            new = BitMap(unless_in.absent(new))
        return new


class FileReachStore:
    """Reach sets as portable roaring bitmaps, one file each, named by snapshot and digest."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def new(self) -> ReachSet:
        return RoaringReach()

    def path(self, snapshot_id: int, digest: str) -> Path:
        return self.directory / f"reach-{snapshot_id}-{digest[:32]}.roaring"

    def save(self, snapshot_id: int, reach: ReachSet) -> str:
        assert isinstance(reach, BitMap)
        reach.run_optimize()
        data = reach.serialize()
        digest = hashlib.blake2b(data, digest_size=32).hexdigest()
        final = self.path(snapshot_id, digest)
        tmp = final.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
        return digest

    def load(self, snapshot_id: int, digest: str) -> ReachSet:
        path = self.path(snapshot_id, digest)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise ReachSetCorruptError(f"reach set {path.name} cannot be read: {exc}") from None
        actual = hashlib.blake2b(data, digest_size=32).hexdigest()
        if actual != digest:
            raise ReachSetCorruptError(
                f"reach set {path.name} digest is {actual[:16]}…, expected {digest[:16]}…"
            )
        try:
            return RoaringReach.deserialize(data)
        except Exception as exc:
            raise ReachSetCorruptError(f"reach set {path.name} does not decode: {exc}") from None
