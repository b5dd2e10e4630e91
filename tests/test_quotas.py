"""Per-partner quotas: retained bytes and a fair backlog, with the global bounds kept."""

from __future__ import annotations

import time
from dataclasses import asdict, replace

import pytest

from app import create_app, throttle
from tests.helpers import PROBLEM
from worker import feed, quotas, reaper
from worker import jobs as js
from worker.runtime import job_store

MAX_BACKLOG = 3
MAX_RETAINED_BYTES = 4_000


@pytest.fixture
def settings(settings):
    """Small per-partner bounds, so that a few jobs reach them."""
    return replace(
        settings, partner_max_backlog=MAX_BACKLOG, partner_max_retained_bytes=MAX_RETAINED_BYTES
    )


def submit(client, partner, **body):
    body.setdefault("type", "echo")
    body.setdefault("input", {})
    return client.post("/v1/jobs", json=body, headers=partner["headers"])


def new_partner(client, admin_headers, name):
    reply = client.post("/v1/admin/partners", json={"name": name}, headers=admin_headers)
    return {**reply.json, "headers": {"Authorization": f"Bearer {reply.json['api_key']}"}}


def job_keys(redis_client):
    """Every key but the rate limiter's counters and the metrics, which every request moves."""
    moving = (b"pb:ratelimit", b"pb:metrics:")
    return {k for k in redis_client.scan_iter() if not k.startswith(moving)}


def queued(redis_client, partner):
    return redis_client.zcard(js.partner_index(partner["id"], js.QUEUED))


def retained(redis_client, partner):
    return quotas.retained_bytes(redis_client, partner["id"])


def test_a_submission_past_the_retained_bytes_quota_is_429_and_stores_nothing(
    client, partner, redis_client
):
    """A job whose input would take the partner past its retained bytes is a 429 naming the
    quota, and leaves no record, index entry or queue entry behind."""
    blob = "x" * 1_500
    assert submit(client, partner, input={"blob": blob}).status_code == 202
    assert submit(client, partner, input={"blob": blob}).status_code == 202
    held = retained(redis_client, partner)
    assert held == 2 * len('{"blob":"' + blob + '"}')
    keys_before = job_keys(redis_client)
    reply = submit(client, partner, input={"blob": blob})
    assert reply.status_code == 429 and reply.mimetype == PROBLEM
    assert reply.headers["Retry-After"]
    detail = reply.json["detail"]
    assert f"hold {held} bytes" in detail and str(MAX_RETAINED_BYTES) in detail
    assert "POSTBACK_PARTNER_MAX_RETAINED_BYTES" in detail
    assert job_keys(redis_client) == keys_before
    assert retained(redis_client, partner) == held
    assert redis_client.zcard(js.partner_index(partner["id"])) == 2


def test_retained_bytes_count_results_and_go_down_when_retention_removes_jobs(
    client, partner, redis_client, settings, work
):
    """A stored result and the feed's copy of the webhook add their bytes, and removing the
    job at the end of its retention subtracts exactly what it held, once, down to zero."""
    job_id = submit(client, partner, input={"blob": "y" * 500}).json["id"]
    input_bytes = retained(redis_client, partner)
    assert input_bytes == len('{"blob":"' + "y" * 500 + '"}')
    work(deliveries=False)
    assert redis_client.hget(js.job_key(job_id), "status") == b"completed"
    # echo's result is its input: the same bytes again; the webhook in the feed counts too.
    (event,) = feed.page(redis_client, partner["id"], after=None, limit=10)
    assert retained(redis_client, partner) == 2 * input_bytes + len(event.body)
    store = job_store(redis_client, settings)
    redis_client.zadd(js.RETENTION_KEY, {job_id: 0})
    assert reaper.reap(store, settings).removed == 1
    assert retained(redis_client, partner) == 0
    store.remove(job_id)  # a second removal (another reaper) subtracts nothing
    assert retained(redis_client, partner) == 0
    # A job stored before the counter existed reads as before and subtracts nothing.
    old_id = submit(client, partner, input={"a": 1}).json["id"]
    work(deliveries=False)
    redis_client.hdel(js.job_key(old_id), quotas.RETAINED_FIELD)
    redis_client.delete(quotas.retained_key(partner["id"]))
    assert client.get(f"/v1/jobs/{old_id}", headers=partner["headers"]).json["result"] == {"a": 1}
    redis_client.zadd(js.RETENTION_KEY, {old_id: 0})
    assert reaper.reap(store, settings).removed == 1
    assert retained(redis_client, partner) == 0
    assert submit(client, partner, input={"blob": "z" * 3_000}).status_code == 202


def test_a_partner_at_its_backlog_gets_429_while_another_partner_is_accepted(
    client, partner, admin_headers, redis_client
):
    """One partner's flood stops at its own bound with a 429 about its own jobs only; another
    partner's submission is still accepted."""
    other = new_partner(client, admin_headers, "Other")
    assert submit(client, other).status_code == 202
    for _ in range(MAX_BACKLOG):
        assert submit(client, partner).status_code == 202
    reply = submit(client, partner)
    assert reply.status_code == 429 and reply.mimetype == PROBLEM
    assert int(reply.headers["Retry-After"]) > 0
    detail = reply.json["detail"]
    assert f"{MAX_BACKLOG} of your jobs are waiting" in detail
    assert f"POSTBACK_PARTNER_MAX_BACKLOG={MAX_BACKLOG}" in detail
    # The combined count (4) appears nowhere.
    assert str(MAX_BACKLOG + 1) not in detail
    assert submit(client, other).status_code == 202
    assert queued(redis_client, partner) == MAX_BACKLOG and queued(redis_client, other) == 2


def test_a_quota_refusal_is_counted_once_and_carries_the_rate_limit_headers(client, partner):
    """A known key's submission refused for its backlog was counted by the create script:
    its 429 has the RateLimit-* headers, and the next request sees one fewer left."""
    replies = [submit(client, partner) for _ in range(MAX_BACKLOG + 1)]
    assert [r.status_code for r in replies] == [202] * MAX_BACKLOG + [429]
    remaining = [int(r.headers["RateLimit-Remaining"]) for r in replies]
    assert remaining == list(range(remaining[0], remaining[0] - MAX_BACKLOG - 1, -1))
    listing = client.get("/v1/jobs", headers=partner["headers"])
    assert int(listing.headers["RateLimit-Remaining"]) == remaining[-1] - 1


def test_the_global_backlog_is_still_a_503_that_tells_no_counts(
    settings, redis_client, partner, admin_headers
):
    """Past POSTBACK_MAX_BACKLOG every submission is a 503 with Retry-After that says the
    service is busy without any number of waiting jobs."""
    client = create_app(asdict(replace(settings, max_backlog=2)), client=redis_client).test_client()
    other = new_partner(client, admin_headers, "Other")
    assert submit(client, partner).status_code == 202
    assert submit(client, other).status_code == 202
    reply = submit(client, partner)
    assert reply.status_code == 503 and reply.mimetype == PROBLEM
    assert reply.headers["Retry-After"]
    assert "busy" in reply.json["detail"]
    assert not any(ch.isdigit() for ch in reply.json["detail"])


def test_the_partner_backlog_frees_as_jobs_start_are_cancelled_and_retry(
    client, partner, redis_client, work
):
    """A job leaves its partner's backlog when a worker starts it or it is cancelled, counts
    again while its retry waits, and the count never goes below zero."""
    for _ in range(MAX_BACKLOG):
        assert submit(client, partner).status_code == 202
    assert submit(client, partner).status_code == 429
    work(deliveries=False)
    assert queued(redis_client, partner) == 0
    cancelled = submit(client, partner).json["id"]
    assert queued(redis_client, partner) == 1
    reply = client.post(f"/v1/jobs/{cancelled}/cancel", headers=partner["headers"])
    assert reply.status_code == 200
    assert queued(redis_client, partner) == 0
    flaky = submit(client, partner, type="test.flaky", input={"succeed_on": 2}).json["id"]
    work(deliveries=False)
    # Its first run failed: it waits for its retry, and counts.
    assert redis_client.hget(js.job_key(flaky), "status") == b"queued"
    assert queued(redis_client, partner) == 1
    time.sleep(0.15)  # past the test backoff (at most 0.1 s)
    work(deliveries=False)
    assert redis_client.hget(js.job_key(flaky), "status") == b"completed"
    assert queued(redis_client, partner) == 0
    for _ in range(MAX_BACKLOG):
        assert submit(client, partner).status_code == 202
    assert submit(client, partner).status_code == 429


def test_submissions_get_503_near_redis_maxmemory_while_reads_keep_working(
    client, partner, redis_client, monkeypatch
):
    """Above 90% of Redis's maxmemory a submission is a 503 with Retry-After, before Redis
    itself would refuse a write, and reading and listing jobs still work."""
    monkeypatch.setattr(throttle.MemoryHeadroom, "refresh_seconds", 0)
    job_id = submit(client, partner).json["id"]
    before = redis_client.config_get("maxmemory")["maxmemory"]
    used = redis_client.info("memory")["used_memory"]
    # Between the 90% threshold and the bound: Redis still accepts writes.
    redis_client.config_set("maxmemory", int(used / 0.94))
    try:
        reply = submit(client, partner)
        assert reply.status_code == 503 and reply.mimetype == PROBLEM
        assert reply.headers["Retry-After"]
        assert "memory" in reply.json["detail"]
        assert client.get(f"/v1/jobs/{job_id}", headers=partner["headers"]).status_code == 200
        listed = client.get("/v1/jobs", headers=partner["headers"])
        assert [item["id"] for item in listed.json["items"]] == [job_id]
    finally:
        redis_client.config_set("maxmemory", before)
    assert submit(client, partner).status_code == 202
