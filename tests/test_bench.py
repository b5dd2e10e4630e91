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
    assert results["bytes_per_retained_job"]["memory_usage_bytes"] > 0


def test_the_accept_benchmark_runs_and_reports(tmp_path):
    """A quick accept benchmark loads Postback (both durability modes) and its baseline."""
    from bench import accept

    results = accept.main(quick=True, data_parent=str(tmp_path))
    assert results["client_ceiling_per_second"]["median"] > 0
    assert results["baseline"]["per_second"]["median"] > 0
    for mode in ("fsync", "everysec"):
        assert results[mode]["per_second"]["median"] > 0
        assert results[mode]["ratio_to_baseline"]["median"] > 0
        assert results[mode]["half_load"]["p99_ms"]["median"] > 0
        assert results[mode]["errors"] == 0
    assert results["ratio_fsync_to_everysec"]["median"] > 0
    assert "P1" in accept.report(results)
    assert list(tmp_path.iterdir()) == []  # the Redis data dir is removed


def test_the_pipeline_benchmark_runs_and_reports(tmp_path):
    """A quick pipeline benchmark delivers every job's webhook, with 1 and 2 workers."""
    from bench import pipeline

    results = pipeline.main(quick=True, data_parent=str(tmp_path))
    for key in (
        "baseline_per_second",
        "postback_1_worker_per_second",
        "postback_2_workers_per_second",
        "ratio_1_worker_to_baseline",
        "scaling_2_to_1",
    ):
        assert results[key]["median"] > 0
    assert "P2" in pipeline.report(results)
    assert list(tmp_path.iterdir()) == []


def test_the_harness_runs_every_section_and_writes_results(monkeypatch, tmp_path, capsys):
    """`python -m bench --quick` runs each benchmark in quick mode and writes results.json."""
    import sys

    from bench import __main__ as harness
    from bench import accept, dead_letters, delivery, lifecycle, pipeline

    calls = []
    for module in (accept, pipeline, lifecycle):
        monkeypatch.setattr(module, "main", lambda quick, m=module: calls.append((m, quick)) or {})
        monkeypatch.setattr(module, "report", lambda results: "ok")
    monkeypatch.setattr(delivery, "main", lambda *args: calls.append((delivery, args)) or {})
    monkeypatch.setattr(delivery, "report", lambda results: "ok")
    monkeypatch.setattr(
        dead_letters,
        "main",
        lambda count: (
            calls.append((dead_letters, count))
            or {
                "first_page_of_100_ms": 1,
                "replayed": count,
                "replay_seconds": 1,
                "replay_peak_python_kib": 1,
            }
        ),
    )
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results.json")
    monkeypatch.setattr(sys, "argv", ["bench", "--quick"])
    harness.main()
    assert [module for module, _ in calls] == [accept, pipeline, delivery, lifecycle, dead_letters]
    assert (accept, True) in calls and (dead_letters, 1000) in calls
    written = (tmp_path / "results.json").read_text()
    assert '"quick": true' in written and "dead_letters" in written
