"""What projections need from the event log."""

from __future__ import annotations

from typing import Any, Protocol


class PositionedLog(Protocol):
    def read(self, start: int, limit: int) -> list[tuple[int, Any]]:
        """Up to `limit` (position, domain event) pairs from log position `start` on."""
        ...

    def head(self) -> int:
        """The position of the newest event (0 for an empty log)."""
        ...

    def wait(self, after: int, timeout: float) -> bool:
        """Blocks until the head passes `after` (True) or `timeout` seconds pass (False)."""
        ...
