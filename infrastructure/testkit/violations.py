"""The exceptions the kit raises: one subclass per invariant, so that a test can expect the
exact kind of break it provokes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar


class InvariantViolation(AssertionError):
    """One kind of invariant does not hold; `violations` lists every instance found."""

    invariant: ClassVar[str] = "an invariant"

    def __init__(self, violations: Sequence[str]) -> None:
        self.violations = list(violations)
        shown = "\n  - ".join(self.violations[:20])
        more = f"\n  ... and {len(self.violations) - 20} more" if len(self.violations) > 20 else ""
        super().__init__(f"{self.invariant} is broken:\n  - {shown}{more}")


class SafetyViolation(InvariantViolation):
    invariant = "invariant I (every protected root is fully readable)"


class LogOrderViolation(InvariantViolation):
    invariant = "the legal phase order of the log"


class SnapshotUseViolation(InvariantViolation):
    invariant = "one snapshot per cycle attempt"


class LockViolation(InvariantViolation):
    invariant = "at most one live lock holder"


class ContentionViolation(InvariantViolation):
    invariant = "a pruner refused the lock leaves the log alone"


class AuditViolation(InvariantViolation):
    invariant = "the audit names exactly the deleted nodes"


class ProjectionViolation(InvariantViolation):
    invariant = "every projection equals a fold over the log"


class LivenessViolation(InvariantViolation):
    invariant = "garbage eventually goes away"
