from __future__ import annotations

from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from domain.config import PruneConfig
from infrastructure.metrics import MetricsFeeder, PrunerMetrics
from infrastructure.runtime import Runtime, Settings
from infrastructure.state_store import SqliteStateStore
from infrastructure.workload import WorkloadWriter


def _samples(metrics: PrunerMetrics) -> dict[str, float]:
    text = generate_latest(metrics.registry).decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items()))
            out[key] = s.value
    return out


def test_metrics_after_a_cycle_agree_with_the_cycle_report(tmp_path: Path) -> None:
    with SqliteStateStore.open(tmp_path / "state.sqlite") as store:
        WorkloadWriter(store, seed=2).run(150)
    with Runtime(Settings(data_dir=tmp_path, prune=PruneConfig(protection_orders=20))) as rt:
        metrics = PrunerMetrics()
        metrics.instrument(rt.manager)
        report = rt.pruner.run_cycle()
        MetricsFeeder(metrics, rt.settings.recovery).feed(rt.log.read)
    s = _samples(metrics)
    assert s["pruner_reachable_nodes_scanned"] == report.reach_count
    deleted = report.phases["SweepExpired"].deleted
    assert deleted > 0
    assert s["pruner_sweep_nodes_deleted_total{phase=SweepExpired}"] == deleted
    freed = sum(p.bytes_freed for p in report.phases.values())
    assert s["pruner_disk_space_reclaimed_bytes_total"] == freed
    assert s["pruner_current_phase"] == 0
    assert s["pruner_health_status"] == 0
    assert s["pruner_snapshot_creation_seconds_count"] == 1
    assert s["pruner_lock_acquisition_seconds_count"] >= 3  # one per phase
    assert s["pruner_validation_seconds_count"] >= 1


def test_rooch_metric_names_are_kept() -> None:
    names = {
        f.name
        for f in text_string_to_metric_families(generate_latest(PrunerMetrics().registry).decode())
    }
    for rooch in (
        "pruner_reachable_nodes_scanned",
        "pruner_sweep_nodes_deleted",
        "pruner_current_phase",
        "pruner_processing_speed_nodes_per_sec",
        "pruner_error_count",
        "pruner_disk_space_reclaimed_bytes",
    ):
        assert rooch in names
