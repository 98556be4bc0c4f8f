"""The `make_rig` fixture: Rigs (tests/domain/rig.py) closed after the test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.domain.rig import MakeRig, Rig


@pytest.fixture
def make_rig(tmp_path: Path) -> Iterator[MakeRig]:
    rigs: list[Rig] = []

    def make(protection_orders: int = 3, delete_batch_size: int = 64) -> Rig:
        rig = Rig(tmp_path / f"data-{len(rigs)}", protection_orders, delete_batch_size)
        rigs.append(rig)
        return rig

    yield make
    for rig in rigs:
        rig.close()
