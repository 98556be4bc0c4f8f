"""Who holds a lock, and whether that process still runs. An owner is `host:pid:start`, where
`start` is the process start time from /proc, so a reused pid is not mistaken for the holder."""

from __future__ import annotations

import os
import socket
from pathlib import Path


def _start_time(pid: int) -> str | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22 (starttime); the command name in field 2 may contain spaces, so split after ')'.
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None  # a killed process not yet reaped (zombie) is gone all the same
    return fields[19]


def node_id() -> str:
    pid = os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_time(pid) or 0}"


class ProcessLiveness:
    """Knows only about processes on this host; anything else is 'not certainly gone'."""

    def __init__(self, host: str | None = None) -> None:
        self.host = host or socket.gethostname()

    def is_gone(self, owner: str) -> bool:
        parts = owner.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != self.host or not parts[1].isdigit():
            return False
        start = _start_time(int(parts[1]))
        return start is None or start != parts[2]
