"""The benchmark harness runs (in its quick mode), so it cannot rot unnoticed."""

from __future__ import annotations

from bench import delivery


def test_the_delivery_benchmark_runs_and_reports():
    """A quick delivery benchmark yields positive rates and a printable report."""
    results = delivery.main(repeats=1, per_destination_count=10, timeout_seconds=1.0)
    assert results["p3_deliveries_per_second"]["median"] > 0
    assert results["p4_isolation"]["ratio_median"] > 0
    assert "P3" in delivery.report(results)


def test_the_dead_letter_benchmark_replays_everything():
    """A small dead-letter benchmark replays every letter it stored."""
    from bench import dead_letters

    results = dead_letters.main(count=1000)
    assert results["replayed"] == 1000


def test_the_lifecycle_benchmark_runs(tmp_path):
    """A quick lifecycle benchmark measures both durability modes, recovery and memory."""
    from bench import lifecycle

    results = lifecycle.main(quick=True, data_parent=str(tmp_path))
    assert results["durability_1_clients"]["fsync"]["per_second"] > 0
    assert results["p5_recovery_seconds"]["median"] > 0
    assert results["bytes_per_retained_job"] > 0
