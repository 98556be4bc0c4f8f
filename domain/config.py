"""Configuration with the spec's defaults. Bad values fail fast with a ConfigError."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, Self

from domain.errors import ConfigError

_TYPES: dict[str, type | tuple[type, ...]] = {
    "int": int,
    "float": (int, float),
    "bool": bool,
    "str": str,
}


class _Checked:
    """Shared checks: exact types, sensible ranges and unknown keys named in the error."""

    def _check_types(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            expected: type | tuple[type, ...] = _TYPES[str(f.type)]
            ok = isinstance(value, expected) and not (
                expected is not bool and isinstance(value, bool)
            )
            if not ok:
                raise ConfigError(f"{type(self).__name__}.{f.name} must be {f.type}, got {value!r}")

    def _positive(self, *names: str) -> None:
        for name in names:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{type(self).__name__}.{name} must be > 0")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> Self:
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(
                f"unknown {cls.__name__} key(s): {', '.join(unknown)}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**values)


@dataclass(frozen=True)
class SnapshotManagerConfig(_Checked):
    lock_timeout_ms: int = 30 * 60 * 1000
    max_snapshot_age_ms: int = 2 * 60 * 60 * 1000
    enable_validation: bool = True
    enable_persistence: bool = True

    def __post_init__(self) -> None:
        self._check_types()
        self._positive("lock_timeout_ms", "max_snapshot_age_ms")


@dataclass(frozen=True)
class RecoveryConfig(_Checked):
    max_phase_retries: int = 3
    base_retry_delay_ms: int = 1000
    max_retry_delay_ms: int = 30_000
    backoff_multiplier: float = 2.0
    enable_snapshot_recovery: bool = True
    snapshot_recovery_timeout_secs: int = 300
    enable_phase_rollback: bool = True
    min_healthy_cycles: int = 3

    def __post_init__(self) -> None:
        self._check_types()
        self._positive("base_retry_delay_ms", "snapshot_recovery_timeout_secs")
        if self.max_phase_retries < 0:
            raise ConfigError("RecoveryConfig.max_phase_retries must be >= 0")
        if self.max_retry_delay_ms < self.base_retry_delay_ms:
            raise ConfigError("RecoveryConfig.max_retry_delay_ms must be >= base_retry_delay_ms")
        if self.backoff_multiplier < 1.0:
            raise ConfigError("RecoveryConfig.backoff_multiplier must be >= 1.0")
        if self.min_healthy_cycles < 1:
            raise ConfigError("RecoveryConfig.min_healthy_cycles must be >= 1")


@dataclass(frozen=True)
class PruneConfig(_Checked):
    protection_orders: int = 30_000
    interval_s: float = 60.0
    delete_batch_size: int = 5_000
    enable_incremental_sweep: bool = True
    # Delete batches per state-store transaction. Each batch is still its own NodesSwept
    # event; a bigger transaction rewrites each random page of the hash index once for
    # several batches (bench_prune: the rate roughly doubles from 1 to 8), at the cost of
    # holding the writer off for longer (1.1-1.7 s for 8 batches of 5000 on the 1M-node store).
    batches_per_commit: int = 8

    def __post_init__(self) -> None:
        self._check_types()
        self._positive("interval_s", "delete_batch_size", "batches_per_commit")
        if self.delete_batch_size * self.batches_per_commit > 1_000_000:
            raise ConfigError(
                "PruneConfig.delete_batch_size * batches_per_commit must be <= 1000000 rows "
                "per transaction (the writer waits for the whole transaction)"
            )
        if self.protection_orders < 0:
            raise ConfigError("PruneConfig.protection_orders must be >= 0")
