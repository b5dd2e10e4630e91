"""Metrics kept in Redis: `GET /metrics`, its token, totals across processes, `postback status`."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict
from typing import Any

import pytest
import redis
from flask.testing import FlaskClient
from prometheus_client.parser import text_string_to_metric_families
from redis.backoff import NoBackoff
from redis.retry import Retry

from app import cli, create_app, status
from postback import metrics as pm
from postback.settings import Settings
from tests.processes import eventually, postback_worker
from tests.receiver import Receiver

METRICS_TOKEN = "test-metrics-token-0123456789"


def scrape(client: FlaskClient, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """`GET /metrics` parsed: {(sample name, frozenset of labels): value}."""
    reply = client.get("/metrics", headers=headers or {})
    assert reply.status_code == 200, reply.data
    assert reply.mimetype == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(reply.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples: dict[str, Any], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


def submit(client: FlaskClient, partner: dict[str, Any], **body: Any) -> str:
    reply = client.post(
        "/v1/jobs", json={"type": "echo", "input": {}, **body}, headers=partner["headers"]
    )
    assert reply.status_code == 202, reply.json
    return reply.json["id"]


def test_counters_and_histograms_show_submitted_worked_and_delivered_jobs(
    client, partner, work, receiver
):
    """After two jobs are submitted, worked and one webhook delivered, the scrape counts them."""
    submit(client, partner, callback_url=receiver.url)
    submit(client, partner)
    work()
    receiver.wait_for(1)
    samples = scrape(client)
    assert value(samples, "postback_jobs_submitted_total", type="echo") == 2
    assert value(samples, "postback_jobs_finished_total", type="echo", status="completed") == 2
    assert value(samples, "postback_job_run_seconds_count", type="echo") == 2
    assert value(samples, "postback_job_run_seconds_bucket", type="echo", le="+Inf") == 2
    assert value(samples, "postback_job_queue_wait_seconds_count", priority="normal") == 2
    assert value(samples, "postback_delivery_attempts_total", outcome="succeeded") == 1
    assert value(samples, "postback_delivery_attempt_seconds_count") == 1
    assert value(samples, "postback_delivery_lag_seconds_count") == 1
    assert value(samples, "postback_delivery_lag_seconds_sum") > 0
    assert value(samples, "postback_rate_limited_total") == 0
    assert value(samples, "postback_workers") == 0
    assert value(samples, "postback_dead_letters") == 0
    assert value(samples, "postback_deliveries_scheduled") == 0
    assert value(samples, "postback_queue_depth", queue="postback") == 0


def test_histogram_buckets_are_cumulative(redis_client, client):
    """Observations land in the first bucket that holds them; the scrape sums buckets upward."""
    for seconds in (0.003, 0.2, 0.2, 400.0):
        pm.observe(redis_client, "postback_delivery_attempt_seconds", seconds)
    samples = scrape(client)
    bucket = "postback_delivery_attempt_seconds_bucket"
    assert value(samples, bucket, le="0.005") == 1
    assert value(samples, bucket, le="0.1") == 1
    assert value(samples, bucket, le="0.25") == 3
    assert value(samples, bucket, le="300.0") == 3
    assert value(samples, bucket, le="+Inf") == 4
    assert value(samples, "postback_delivery_attempt_seconds_sum") == pytest.approx(400.403)


def test_gauges_read_queues_and_dead_letters_from_redis(client, partner, redis_client):
    """Queued jobs show as queue depth with a head age, and a stored dead letter is counted."""
    submit(client, partner)
    submit(client, partner, priority="high")
    redis_client.zadd("pb:cb:deadlist", {"dlq_x": 0})
    samples = scrape(client)
    assert value(samples, "postback_queue_depth", queue="postback") == 1
    assert value(samples, "postback_queue_depth", queue="postback:high") == 1
    assert value(samples, "postback_queue_depth", queue="postback:low") == 0
    assert value(samples, "postback_queue_oldest_age_seconds", queue="postback") >= 0
    assert value(samples, "postback_dead_letters") == 1


def test_idempotent_replays_and_rate_limits_are_counted(redis_client, settings, admin_headers):
    """A replayed Idempotency-Key and a 429 each add one to their counters."""
    app = create_app({**asdict(settings), "rate_limit": "2/minute"}, client=redis_client)
    client = app.test_client()
    reply = client.post("/v1/admin/partners", json={"name": "Acme"}, headers=admin_headers)
    headers = {"Authorization": f"Bearer {reply.json['api_key']}", "Idempotency-Key": '"k-1"'}
    for _ in range(3):
        client.post("/v1/jobs", json={"type": "echo", "input": {}}, headers=headers)
    samples = scrape(client)
    assert value(samples, "postback_jobs_submitted_total", type="echo") == 1
    assert value(samples, "postback_idempotent_replays_total") == 1
    assert value(samples, "postback_rate_limited_total") == 1


def test_metrics_token_is_required_when_set(redis_client, settings):
    """With POSTBACK_METRICS_TOKEN set, /metrics is a 401 problem without it and 200 with it."""
    app = create_app({**asdict(settings), "metrics_token": METRICS_TOKEN}, client=redis_client)
    client = app.test_client()
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        reply = client.get("/metrics", headers=headers)
        assert reply.status_code == 401
        assert reply.mimetype == "application/problem+json"
        assert reply.headers["WWW-Authenticate"].startswith("Bearer")
    assert scrape(client, {"Authorization": f"Bearer {METRICS_TOKEN}"})


def test_metrics_are_open_without_a_token(client):
    """Without POSTBACK_METRICS_TOKEN, /metrics answers anyone."""
    assert client.get("/metrics").status_code == 200


def test_no_label_carries_a_url_or_a_job_id(client, partner, work, redis_client):
    """After jobs to many callback URLs, no label value is a URL or an id, and few series exist."""
    job_ids = []
    with contextlib.ExitStack() as stack:
        receivers = [stack.enter_context(Receiver()) for _ in range(6)]
        for index, receiver in enumerate(receivers):
            job_ids.append(submit(client, partner, callback_url=f"{receiver.url}/{index}"))
        work()
        for receiver in receivers:
            receiver.wait_for(1)
    samples = scrape(client)
    for _name, labels in samples:
        for _label, label_value in labels:
            assert "://" not in label_value and "/" not in label_value
            assert not label_value.startswith(("job_", "msg_", "ptn_"))
            assert label_value not in job_ids
    for name in pm.CATALOGUE:
        assert redis_client.hlen(pm.key(name)) <= 2 * (len(pm.BUCKETS_SECONDS) + 3)


def test_unknown_labels_and_odd_values_are_not_recorded_as_given(redis_client):
    """A label set unlike the catalogue's is dropped; a URL-like label value becomes `other`."""
    pm.counter(redis_client, "postback_jobs_submitted_total", {"url": "http://x/"})
    pm.counter(redis_client, "postback_no_such_metric", {})
    assert not redis_client.exists(pm.key("postback_jobs_submitted_total"))
    pm.counter(redis_client, "postback_jobs_submitted_total", {"type": "http://x/job_1"})
    fields = redis_client.hkeys(pm.key("postback_jobs_submitted_total"))
    assert fields == [b"type=other"]


def test_recording_survives_an_unreachable_redis():
    """Recording into a Redis that does not answer logs and returns; the caller goes on."""
    down = redis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
    pm.counter(down, "postback_rate_limited_total")
    pm.observe(down, "postback_delivery_attempt_seconds", 0.1)


def test_totals_add_up_across_worker_processes(client, partner, redis_url):
    """Two worker processes run N jobs between them; one scrape of the API counts all N."""
    count = 40
    with postback_worker(redis_url), postback_worker(redis_url):
        eventually(
            lambda: value(scrape(client), "postback_workers") == 2,
            timeout_seconds=30,
            what="both workers register",
        )
        for n in range(count):
            submit(client, partner, input={"n": n})

        def finished() -> bool:
            samples = scrape(client)
            total = value(samples, "postback_jobs_finished_total", type="echo", status="completed")
            return total == count

        eventually(finished, timeout_seconds=60, what=f"{count} jobs complete")
    samples = scrape(client)
    assert value(samples, "postback_jobs_submitted_total", type="echo") == count
    assert value(samples, "postback_jobs_finished_total", type="echo", status="completed") == count
    assert value(samples, "postback_job_run_seconds_count", type="echo") == count
    assert value(samples, "postback_job_queue_wait_seconds_count", priority="normal") == count


def test_status_json_prints_the_documented_keys(
    monkeypatch, capsys, redis_url, client, partner, redis_client
):
    """`postback status --json` prints the documented keys, read from Redis."""
    submit(client, partner)
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cli.main(["status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert tuple(data) == status.KEYS
    assert data["redis"]["aof_enabled"] is True
    assert data["redis"]["aof_last_write_status"] == "ok"
    assert data["redis"]["version"]
    assert data["queues"]["postback"]["depth"] == 1
    assert data["queues"]["postback"]["oldest_age_seconds"] >= 0
    assert data["deliveries"] == {"scheduled": 0, "due": 0}
    assert data["workers"] == 0 and data["dead_letters"] == 0 and data["open_circuits"] == []


def test_status_screen_renders(monkeypatch, capsys, redis_url, redis_client):
    """`postback status` without --json prints the tables."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "Redis" in out and "Queues" in out and "workers alive" in out


def test_settings_read_the_metrics_token():
    """POSTBACK_METRICS_TOKEN sets `metrics_token`."""
    assert Settings.from_env({"POSTBACK_METRICS_TOKEN": "t"}).metrics_token == "t"


def test_charted_counters_are_kept_per_minute_for_two_hours(redis_client, monkeypatch):
    """A charted counter also adds to its minute's bucket (which expires); `series` reads
    the last minutes back, one total per minute and label set, zeros where nothing was."""
    from postback import clock

    minute = 29_000_000
    for offset, ended in ((0, "completed"), (0, "completed"), (2, "failed"), (70, "completed")):
        monkeypatch.setattr(clock, "now", lambda offset=offset: (minute + offset) * 60 + 5.0)
        pm.counter(redis_client, "postback_jobs_finished_total", {"type": "echo", "status": ended})
    pm.counter(redis_client, "postback_rate_limited_total")  # not charted: no bucket
    assert 0 < redis_client.ttl(pm.minute_key(minute)) <= pm.MINUTE_BUCKET_TTL_SECONDS
    assert redis_client.hgetall(pm.minute_key(minute)) == {
        b"postback_jobs_finished_total|status=completed,type=echo": b"2"
    }
    found = pm.series(redis_client, "postback_jobs_finished_total", 3, now=(minute + 2) * 60)
    assert found.minutes == (minute, minute + 1, minute + 2)
    assert found.values == {
        "status=completed,type=echo": (2, 0, 0),
        "status=failed,type=echo": (0, 0, 1),
    }
    assert found.per_minute() == (2, 0, 1) and found.total() == 3
    assert found.by("status").values == {"status=completed": (2, 0, 0), "status=failed": (0, 0, 1)}
    assert pm.series(redis_client, "postback_jobs_submitted_total", now=minute * 60).total() == 0
    hour = pm.series(redis_client, "postback_jobs_finished_total", now=(minute + 70) * 60)
    assert len(hour.minutes) == 60 and hour.values == {
        "status=completed,type=echo": (0,) * 59 + (1,)
    }
    with pytest.raises(ValueError):
        pm.series(redis_client, "postback_rate_limited_total")


def test_series_of_reads_every_charted_counter_from_one_read_of_the_buckets(redis_client):
    """`series_of` gives each counter what `series` gives it alone, in one pipeline."""
    pm.counter(redis_client, "postback_jobs_submitted_total", {"type": "echo"})
    pm.counter(redis_client, "postback_delivery_attempts_total", {"outcome": "succeeded"}, 2)
    names = ("postback_jobs_submitted_total", "postback_delivery_attempts_total")
    both = pm.series_of(redis_client, names, 5)
    for name in names:
        assert both[name] == pm.series(redis_client, name, 5)
    assert both["postback_delivery_attempts_total"].total() == 2
    with pytest.raises(ValueError):
        pm.series_of(redis_client, ("postback_jobs_submitted_total", "postback_rate_limited_total"))
