from __future__ import annotations

from typing import Any

import pytest

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.errors import ConfigError


def test_snapshot_manager_defaults_are_the_spec_values() -> None:
    config = SnapshotManagerConfig()
    assert config.lock_timeout_ms == 30 * 60 * 1000
    assert config.max_snapshot_age_ms == 2 * 60 * 60 * 1000
    assert config.enable_validation is True
    assert config.enable_persistence is True


def test_recovery_defaults_are_the_spec_values() -> None:
    config = RecoveryConfig()
    assert (
        config.max_phase_retries,
        config.base_retry_delay_ms,
        config.max_retry_delay_ms,
        config.backoff_multiplier,
        config.enable_snapshot_recovery,
        config.snapshot_recovery_timeout_secs,
        config.enable_phase_rollback,
        config.min_healthy_cycles,
    ) == (3, 1000, 30_000, 2.0, True, 300, True, 3)


def test_prune_defaults_are_rooch_values() -> None:
    config = PruneConfig()
    assert config.protection_orders == 30_000
    assert config.interval_s == 60
    assert 5_000 <= config.delete_batch_size <= 10_000
    assert config.enable_incremental_sweep is True


def test_from_mapping_builds_the_same_config_as_keywords() -> None:
    values: dict[str, Any] = {"lock_timeout_ms": 1_000, "enable_validation": False}
    assert SnapshotManagerConfig.from_mapping(values) == SnapshotManagerConfig(**values)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (SnapshotManagerConfig, {"lock_timeout_ms": "30m"}, "lock_timeout_ms must be int"),
        (SnapshotManagerConfig, {"lock_timeout_ms": 1.5}, "lock_timeout_ms must be int"),
        (SnapshotManagerConfig, {"lock_timeout_ms": True}, "lock_timeout_ms must be int"),
        (SnapshotManagerConfig, {"enable_validation": 1}, "enable_validation must be bool"),
        (SnapshotManagerConfig, {"enable_persistence": "yes"}, "enable_persistence must be bool"),
        (SnapshotManagerConfig, {"max_snapshot_age_ms": None}, "max_snapshot_age_ms must be int"),
        (RecoveryConfig, {"backoff_multiplier": "2"}, "backoff_multiplier must be float"),
        (RecoveryConfig, {"backoff_multiplier": False}, "backoff_multiplier must be float"),
        (RecoveryConfig, {"max_phase_retries": 3.0}, "max_phase_retries must be int"),
        (PruneConfig, {"protection_orders": "30000"}, "protection_orders must be int"),
        (PruneConfig, {"batches_per_commit": "8"}, "batches_per_commit must be int"),
    ],
)
def test_a_value_of_the_wrong_type_raises_config_error_naming_the_field(
    cls: type[Any], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**values)
    with pytest.raises(ConfigError, match=message):
        cls.from_mapping(values)


@pytest.mark.parametrize(
    ("cls", "values", "message"),
    [
        (SnapshotManagerConfig, {"lock_timeout_ms": 0}, "lock_timeout_ms must be > 0"),
        (SnapshotManagerConfig, {"max_snapshot_age_ms": -1}, "max_snapshot_age_ms must be > 0"),
        (RecoveryConfig, {"max_phase_retries": -1}, "max_phase_retries must be >= 0"),
        (RecoveryConfig, {"base_retry_delay_ms": 0}, "base_retry_delay_ms must be > 0"),
        (RecoveryConfig, {"max_retry_delay_ms": 999}, "max_retry_delay_ms must be >= base"),
        (RecoveryConfig, {"backoff_multiplier": 0.5}, "backoff_multiplier must be >= 1.0"),
        (RecoveryConfig, {"min_healthy_cycles": 0}, "min_healthy_cycles must be >= 1"),
        (RecoveryConfig, {"snapshot_recovery_timeout_secs": 0}, "snapshot_recovery_timeout"),
        (PruneConfig, {"protection_orders": -1}, "protection_orders must be >= 0"),
        (PruneConfig, {"interval_s": 0}, "interval_s must be > 0"),
        (PruneConfig, {"delete_batch_size": 0}, "delete_batch_size must be > 0"),
        (PruneConfig, {"batches_per_commit": 0}, "batches_per_commit must be > 0"),
        (PruneConfig, {"batches_per_commit": -1}, "batches_per_commit must be > 0"),
        (
            PruneConfig,
            {"delete_batch_size": 200_000, "batches_per_commit": 10},
            r"delete_batch_size \* batches_per_commit must be <= 1000000",
        ),
    ],
)
def test_a_value_out_of_range_raises_config_error_naming_the_field(
    cls: type[Any], values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        cls(**values)


@pytest.mark.parametrize("cls", [SnapshotManagerConfig, RecoveryConfig, PruneConfig])
def test_an_unknown_key_raises_config_error_naming_it_and_the_known_keys(cls: type[Any]) -> None:
    with pytest.raises(ConfigError, match=r"unknown .* key\(s\): lock_timout_ms, zzz") as excinfo:
        cls.from_mapping({"lock_timout_ms": 1, "zzz": 2})
    assert "known:" in str(excinfo.value)


def test_a_config_error_is_a_value_error_and_the_edge_values_are_accepted() -> None:
    assert issubclass(ConfigError, ValueError)
    assert RecoveryConfig(max_phase_retries=0, backoff_multiplier=1).backoff_multiplier == 1
    assert PruneConfig(protection_orders=0, interval_s=1).interval_s == 1
    assert RecoveryConfig(base_retry_delay_ms=5, max_retry_delay_ms=5).max_retry_delay_ms == 5


def test_batches_per_commit_defaults_to_8_and_a_million_rows_per_transaction_is_accepted() -> None:
    assert PruneConfig().batches_per_commit == 8
    edge = PruneConfig(delete_batch_size=125_000, batches_per_commit=8)
    assert edge.delete_batch_size * edge.batches_per_commit == 1_000_000
    assert PruneConfig(batches_per_commit=1).batches_per_commit == 1
    assert PruneConfig.from_mapping({"batches_per_commit": 3}).batches_per_commit == 3
    with pytest.raises(ConfigError, match="batches_per_commit"):
        PruneConfig.from_mapping({"delete_batch_size": 1_000_001, "batches_per_commit": 1})
