"""ValidationResult: the spec's Passed / Failed / Skipped, each with a check name and a message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ValidationResult:
    """Use the subclasses: `ValidationResult.Passed(check, message)` and so on; they match in
    `match` statements as `case ValidationResult.Failed(check, message)`."""

    check: str
    message: str = ""
    status: ClassVar[str] = "unknown"

    Passed: ClassVar[type[ValidationResult]]
    Failed: ClassVar[type[ValidationResult]]
    Skipped: ClassVar[type[ValidationResult]]

    @property
    def ok(self) -> bool:
        return self.status != "failed"

    def __str__(self) -> str:
        return f"[{self.status.upper():7}] {self.check}: {self.message}"


@dataclass(frozen=True)
class _Passed(ValidationResult):
    status: ClassVar[str] = "passed"


@dataclass(frozen=True)
class _Failed(ValidationResult):
    status: ClassVar[str] = "failed"


@dataclass(frozen=True)
class _Skipped(ValidationResult):
    status: ClassVar[str] = "skipped"


_Passed.__name__ = _Passed.__qualname__ = "Passed"
_Failed.__name__ = _Failed.__qualname__ = "Failed"
_Skipped.__name__ = _Skipped.__qualname__ = "Skipped"
ValidationResult.Passed = _Passed
ValidationResult.Failed = _Failed
ValidationResult.Skipped = _Skipped
