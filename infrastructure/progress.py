"""Progress bars for long phases (rich), behind the domain's Progress port."""

from __future__ import annotations

from types import TracebackType

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)


class RichProgress:
    def __init__(self, console: Console | None = None) -> None:
        self._bars = Progress(
            TextColumn("[bold]{task.description:<17}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("nodes/roots"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}

    def __call__(self, phase: str, done: int, total: int | None) -> None:
        task = self._tasks.get(phase)
        if task is None:
            task = self._bars.add_task(phase, total=total)
            self._tasks[phase] = task
        self._bars.update(task, completed=done, total=total)

    def reset(self) -> None:
        for task in self._tasks.values():
            self._bars.remove_task(task)
        self._tasks.clear()

    def __enter__(self) -> RichProgress:
        self._bars.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._bars.stop()
