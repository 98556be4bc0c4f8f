"""`prunelog.toml`: the config file. Every key is optional; unknown keys are errors."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from domain.config import PruneConfig, RecoveryConfig, SnapshotManagerConfig
from domain.errors import ConfigError
from infrastructure.postgres import is_postgres_url
from infrastructure.runtime import Settings

CONFIG_FILE = "prunelog.toml"

DEFAULT_TOML = """\
# prunelog configuration. Every key is optional; the values shown are the defaults.
# Unknown keys are rejected, so a typo never silently falls back to a default.

# Pruner group: nodes of one group share one phase lock.
group = "default"

# Where the event log lives: "sqlite" (events.sqlite in the data directory), or a
# PostgreSQL URL shared by several pruner nodes, e.g.
#   event_store = "postgresql://prunelog:secret@db.internal:5432/prunelog?schema=chain_a"
# PRUNELOG_EVENT_STORE overrides it.
event_store = "sqlite"

[snapshot]                      # SnapshotManagerConfig
lock_timeout_ms = 1800000       # 30 min: a holder silent this long can be taken over
max_snapshot_age_ms = 7200000   # 2 h: an older snapshot is refused by every phase
enable_validation = true        # integrity, age and chain-state checks on create and lock
enable_persistence = true       # persist the reach set so a resumed sweep can trust it

[recovery]                      # RecoveryConfig
max_phase_retries = 3
base_retry_delay_ms = 1000
max_retry_delay_ms = 30000
backoff_multiplier = 2.0
enable_snapshot_recovery = true
snapshot_recovery_timeout_secs = 300
enable_phase_rollback = true
min_healthy_cycles = 3

[prune]                         # PruneConfig
protection_orders = 30000       # roots in [latest - this, latest] are retained
interval_s = 60.0               # pause between cycles in `prunelog run`
delete_batch_size = 5000        # nodes per delete batch: one NodesSwept audit event each
batches_per_commit = 8          # delete batches per state-store transaction
enable_incremental_sweep = true
"""

_SECTIONS: dict[str, type[Any]] = {
    "snapshot": SnapshotManagerConfig,
    "recovery": RecoveryConfig,
    "prune": PruneConfig,
}


def load_settings(data_dir: Path, config_path: Path | None = None) -> Settings:
    """Reads `config_path`, else `<data_dir>/prunelog.toml` if present, else the defaults."""
    path = config_path or data_dir / CONFIG_FILE
    if config_path is not None and not path.exists():
        raise ConfigError(f"config file {path} does not exist")
    raw: dict[str, Any] = {}
    if path.exists():
        try:
            raw = tomllib.loads(path.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"group", "event_store", *_SECTIONS})
    if unknown:
        raise ConfigError(f"config file {path}: unknown key(s) {', '.join(unknown)}")
    group = raw.get("group", "default")
    if not isinstance(group, str) or not group:
        raise ConfigError(f"config file {path}: group must be a non-empty string")
    event_store = raw.get("event_store", "sqlite")
    if not isinstance(event_store, str) or not (
        event_store == "sqlite" or is_postgres_url(event_store)
    ):
        raise ConfigError(
            f'config file {path}: event_store must be "sqlite" or a postgresql:// URL'
        )
    parts: dict[str, Any] = {}
    for name, cls in _SECTIONS.items():
        section = raw.get(name, {})
        if not isinstance(section, dict):
            raise ConfigError(f"config file {path}: [{name}] must be a table")
        try:
            parts[name] = cls.from_mapping(section)
        except ConfigError as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    return Settings(data_dir=data_dir, group=group, event_store=event_store, **parts)
