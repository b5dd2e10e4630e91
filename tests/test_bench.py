"""The benchmark harness runs (in its quick mode), so it cannot rot unnoticed."""

from __future__ import annotations

import pytest

from bench import delivery


@pytest.fixture(scope="module")
def quick_delivery() -> dict:
    """One quick run of every delivery benchmark (about 20 s), shared by the checks below."""
    return delivery.main(quick=True)


def test_the_delivery_benchmark_runs_and_reports(quick_delivery):
    """A quick delivery benchmark yields positive rates and a report of every figure."""
    results = quick_delivery
    assert results["p3_deliveries_per_second"]["median"] > 0
    assert len(results["p3_deliveries_per_second"]["runs"]) == delivery.QUICK.repeats
    text = delivery.report(results)
    for label in ("P3", "P4 ", "P4b", "P4c", "P7", "Duplicates", "Cross-tenant"):
        assert label in text
    assert set(results["seconds"]) == {"p3", "isolation", "p7", "duplicates", "cross_tenant"}


def test_the_isolation_benchmarks_compare_with_and_without_sick_destinations(quick_delivery):
    """P4, P4b and P4c each give a ratio per run, from two positive rates."""
    for key, sick in (
        ("p4_isolation", 1),
        ("p4b_hanging", delivery.QUICK.hanging),
        ("p4c_trickling", delivery.QUICK.trickling),
    ):
        figure = quick_delivery[key]
        assert figure["sick_destinations"] == sick
        assert len(figure["ratios"]) == delivery.QUICK.repeats
        assert 0 < figure["ratio_median"] < 10
        assert all(rate > 0 for rate in figure["healthy_per_second_without"])
    assert all(rate > 0 for rate in quick_delivery["p4_isolation"]["healthy_per_second_with_hang"])


def test_the_trickle_benchmark_reads_the_trickled_attempts(quick_delivery):
    """P4c says how many trickled attempts were recorded, their errors and the longest."""
    figure = quick_delivery["p4c_trickling"]
    (attempts,) = figure["trickled_attempts"]
    assert attempts >= 0
    assert sum(figure["errors"][0].values()) == attempts
    assert isinstance(figure["all_timeouts"][0], bool)
    assert figure["max_duration_ms"][0] >= 0
    assert 0 <= figure["destinations_attempted"][0] <= delivery.QUICK.trickling
    assert figure["limit_ms"] == (delivery.QUICK.timeout_seconds + 1) * 1000


def test_the_fan_out_benchmark_measures_a_delivery_process(quick_delivery):
    """P7 delivers every webhook from one `postback deliver` process and reads its peak RSS."""
    figure = quick_delivery["p7_fan_out"]
    shape = delivery.QUICK
    assert figure["destinations"] == shape.fan_out_destinations
    assert figure["webhooks"] == shape.fan_out_destinations * shape.fan_out_per_destination
    assert figure["per_second"]["median"] > 0
    assert 10 < figure["peak_rss_mib"]["median"] < 4096  # a Python process, not a runaway
    assert figure["attempts"][0] >= figure["webhooks"]
    assert isinstance(figure["logged_problems"][0], dict)


def test_the_duplicate_count_reads_the_receivers_log(quick_delivery):
    """Every webhook is acknowledged at least once; duplicates and attempt logs are counted."""
    figure = quick_delivery["duplicates"]
    webhooks = delivery.QUICK.duplicates_webhooks
    assert figure["acknowledged"] == [webhooks]
    assert figure["acks"][0] >= webhooks
    assert (figure["acks"][0] > webhooks) == (figure["duplicated"]["runs"][0] > 0)
    assert figure["duplicated"]["median"] >= 0
    assert figure["attempt_log_violations"][0] >= 0
    assert figure["attempts"][0] >= webhooks


def test_the_cross_tenant_benchmark_measures_b_alone_and_beside_a(quick_delivery):
    """For each status of A's path, B's lag alone and beside A, and their ratio."""
    figure = quick_delivery["cross_tenant"]
    for status in delivery.TENANT_STATUSES:
        runs = figure[str(status)]
        assert all(lag > 0 for lag in runs["b_lag_alone_seconds"])
        assert all(lag > 0 for lag in runs["b_lag_beside_a_seconds"])
        assert 0 < runs["ratio_median"] < 10


def test_the_delivery_benchmark_refuses_unknown_sections():
    """`only` names sections; a misspelt one is an error, not a silent no-op."""
    with pytest.raises(ValueError, match="p5"):
        delivery.main(quick=True, only=["p5"])


def test_free_port_blocks_are_contiguous_and_outside_the_ephemeral_range():
    """A block of ports for a receiver: contiguous, and never a port the kernel gives clients."""
    import socket

    from bench import common

    ports = common.free_port_block(50)
    assert ports == list(range(ports[0], ports[0] + 50))
    low, high = common._ephemeral_range()
    assert all(port < low or port > high for port in ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[0]))  # still free
    assert common.port_list(ports) == f"{ports[0]}-{ports[-1]}"
    assert common.port_list([5, 7]) == "5,7"


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


def test_the_accept_benchmark_measures_replicated_durability_against_an_ha_set(tmp_path):
    """With replicas, the accept benchmark runs against an HA set's primary and measures
    `replicated` durability beside `fsync` and `everysec` (P10)."""
    from bench import accept

    results = accept.main(quick=True, data_parent=str(tmp_path), replicas=1)
    for mode in ("fsync", "everysec", "replicated"):
        assert results[mode]["per_second"]["median"] > 0
        assert results[mode]["errors"] == 0
    assert results["ratio_replicated_to_fsync"]["median"] > 0
    assert "replicated / fsync" in accept.report(results)
    assert list(tmp_path.iterdir()) == []  # the HA set's data dir is removed


def test_the_long_poll_benchmark_holds_its_waits_while_submitting(tmp_path):
    """A quick P8 run holds its long-polls open, then measures submissions with and without."""
    from bench import longpoll

    results = longpoll.main(quick=True, waits=100, data_parent=str(tmp_path))
    assert results["errors"] == 0
    for phase in ("with", "without"):
        assert results["per_second"][phase]["median"] > 0
        assert results["api_rss_mib"][phase]["median"] > 0
    assert results["ratio"]["median"] > 0
    assert "P8" in longpoll.report(results)
    assert list(tmp_path.iterdir()) == []


def test_the_stream_benchmark_hears_every_change_and_leaves_nothing_held(tmp_path):
    """A quick P9 run hears every change on its streams, and the API lets go of them after."""
    from bench import streams

    results = streams.main(streams.QUICK, data_parent=str(tmp_path))
    many = results["many"]
    assert many["streams"] == streams.QUICK.streams
    for kind in ("progress", "burst", "cancelled", "end"):
        assert many[kind]["lost"] == 0
        assert many[kind]["p99_ms"] > 0
    assert many["refused"] == many["errors"] == many["not_ended"] == 0
    assert many["cancel_failures"] == 0 and many["stalled"] is None
    for kind in ("progress", "cancelled"):
        assert results["baseline"][kind]["lost"] == 0
        assert results["ratio_p99"][kind] > 0
    polls = results["long_polls"]
    assert polls["cancelled"]["lost"] == 0 and polls["not_ended"] == 0
    assert results["released"]["channels"] == results["released"]["waits"] == 0
    assert many["rss_open_mib"] > 0
    assert "P9" in streams.report(results)
    assert list(tmp_path.iterdir()) == []


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


def test_the_failover_benchmark_loses_no_acknowledged_job(tmp_path):
    """A quick P10 run kills the primary of an HA set under load: the 202s stop for a few
    seconds, no answer is a 500, every 202'd job completes, and the primary's CPU per job
    is read with each script named."""
    from bench import failover

    results = failover.main(failover.QUICK, data_parent=str(tmp_path))
    (kill,) = results["failover"]["kills"]
    assert kill["victim"] == "primary"
    assert 0 < kill["seconds_without_202"] < 30
    assert kill["to_first_202_seconds"] is not None
    assert results["failover"]["server_errors"] == 0
    outcome = results["failover"]["outcome"]
    assert outcome["acknowledged"] > 0
    assert outcome["lost"] == 0
    assert outcome["completed"] == outcome["webhooks_delivered"] == outcome["acknowledged"]
    per_job = results["redis_cost"]["per_job"]
    assert per_job["cpu_usec"] > 0 and per_job["commands"]["evalsha"]["calls"] > 0
    assert "worker.transitions._START" in results["redis_cost"]["scripts"]["scripts"]
    assert "P10" in failover.report(results)
    assert list(tmp_path.iterdir()) == []  # the HA set's data dir is removed


def test_the_harness_runs_every_section_and_writes_results(monkeypatch, tmp_path, capsys):
    """`python -m bench --quick` runs each benchmark in quick mode and writes results.json."""
    import sys

    from bench import __main__ as harness
    from bench import (
        accept,
        dead_letters,
        delivery,
        failover,
        io_model,
        lifecycle,
        longpoll,
        pipeline,
        streams,
    )

    calls = []
    for module in (accept, pipeline, delivery, io_model, lifecycle):
        monkeypatch.setattr(module, "main", lambda quick, m=module: calls.append((m, quick)) or {})
        monkeypatch.setattr(module, "report", lambda results: "ok")
    monkeypatch.setattr(
        longpoll, "main", lambda quick, waits: calls.append((longpoll, waits)) or {}
    )
    monkeypatch.setattr(longpoll, "report", lambda results: "ok")
    monkeypatch.setattr(streams, "main", lambda shape: calls.append((streams, shape)) or {})
    monkeypatch.setattr(streams, "report", lambda results: "ok")
    monkeypatch.setattr(failover, "main", lambda shape: calls.append((failover, shape)) or {})
    monkeypatch.setattr(failover, "report", lambda results: "ok")
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
    assert [module for module, _ in calls] == [
        accept,
        longpoll,
        streams,
        pipeline,
        delivery,
        io_model,
        lifecycle,
        dead_letters,
        failover,
    ]
    assert (accept, True) in calls and (delivery, True) in calls and (io_model, True) in calls
    assert (dead_letters, 1000) in calls and (longpoll, 200) in calls
    assert (streams, streams.QUICK) in calls and (failover, failover.QUICK) in calls
    written = (tmp_path / "results.json").read_text()
    assert '"quick": true' in written and "dead_letters" in written


def test_the_io_model_benchmark_runs_and_reports():
    """A quick I/O model benchmark measures both models against one receiver."""
    from bench import io_model

    results = io_model.main(quick=True)
    for model in io_model.MODELS:
        assert results[model]["per_second"] > 0
        assert results[model]["rss_peak_mib"] > 0
    assert "asyncio" in io_model.report(results)
