"""Guarded changes (worker.guard) on a real Redis: stale snapshots are refused and redone."""

from __future__ import annotations

import json

import pytest
import redis

from postback import clock, timeline
from tests.processes import own_redis
from worker import jobs as js
from worker.guard import Guard, Outcome
from worker.runtime import job_store


def create(redis_client, settings) -> str:
    store = job_store(redis_client, settings)
    return store.create(
        partner_id="ptn_guard", type="echo", input={}, callback_url=None, timeout_seconds=60
    ).id


def test_a_change_from_a_stale_snapshot_is_computed_again(redis_client, settings):
    """A write between read and apply makes the change run again on the current record."""
    job_id = create(redis_client, settings)
    store = job_store(redis_client, settings)
    seen = []

    def change(snapshot, pipe):
        seen.append(snapshot.job.progress)
        if len(seen) == 1:
            redis_client.hset(js.job_key(job_id), "progress", 40)  # a concurrent writer
        pipe.hset(js.job_key(job_id), "progress", snapshot.job.progress + 1)
        return True

    assert store.guarded(job_id, change).job.progress == 40, "the record the change saw"
    assert seen == [0, 40]
    assert store.get(job_id).progress == 41


def test_finishing_from_the_started_record_survives_a_renewal(redis_client, settings):
    """`finish` from the record `start` returned still applies after a renewal changed the job."""
    job_id = create(redis_client, settings)
    store = job_store(redis_client, settings)
    started = store.start(job_id, run_id="r1", lease_seconds=60)
    assert store.renew(job_id, run_id="r1", lease_seconds=60) is not None
    assert store.finish(job_id, status=js.COMPLETED, result={"ok": 1}, run_id="r1", known=started)
    done = store.get(job_id)
    assert done.status is js.COMPLETED and done.result == {"ok": 1}
    assert [entry["event"] for entry in timeline.read(redis_client, job_id)][-1] == "finished"


def test_a_declined_or_vanished_job_is_not_written(redis_client, settings):
    """A change that declines writes nothing; a deleted record reports GONE."""
    job_id = create(redis_client, settings)
    store = job_store(redis_client, settings)
    before = redis_client.hgetall(js.job_key(job_id))

    def decline(snapshot, pipe):
        pipe.hset(js.job_key(job_id), "status", "bogus")
        return False

    assert store.guarded(job_id, decline) is None
    assert redis_client.hgetall(js.job_key(job_id)) == before
    guard = Guard(redis_client)
    snapshot = guard.read(js.job_key(job_id), timeline.key(job_id))
    redis_client.delete(js.job_key(job_id))
    writes = guard.recorder()
    writes.hset(js.job_key(job_id), "status", "bogus")
    outcome, now = guard.apply(js.job_key(job_id), timeline.key(job_id), snapshot.version, writes)
    assert (outcome, now) == (Outcome.GONE, None)
    assert not redis_client.exists(js.job_key(job_id))


def test_the_version_ignores_field_order(redis_client):
    """Two hashes with the same fields in a different order have the same version."""
    redis_client.hset("pb:test:a", mapping={"x": 1, "y": 2})
    redis_client.hset("pb:test:b", mapping={"y": 2, "x": 1})
    guard = Guard(redis_client)
    a = guard.read("pb:test:a", "pb:test:none")
    b = guard.read("pb:test:b", "pb:test:none")
    assert a.version == b.version and a.fields == b.fields
    redis_client.hset("pb:test:b", "x", 3)
    assert guard.read("pb:test:b", "pb:test:none").version != a.version


def test_start_writes_what_the_python_side_would(redis_client, settings):
    """`start` (a Lua transition) moves the indexes and writes timeline.record's exact entry."""
    job_id = create(redis_client, settings)
    store = job_store(redis_client, settings)
    record = store.start(job_id, run_id="r1", lease_seconds=30).job
    assert record.status is js.PROCESSING and record.attempts == 1
    assert record.run_id == "r1" and record.lease_until == record.started_at + 30
    entry = {"event": "started", "at": clock.rfc3339(record.started_at), "attempt": 1}
    assert redis_client.lindex(timeline.key(job_id), -1).decode() == json.dumps(
        entry, separators=(",", ":")
    )
    assert redis_client.zscore(js.partner_index("ptn_guard", js.PROCESSING), job_id) == 0
    assert redis_client.zscore(js.partner_index("ptn_guard", js.QUEUED), job_id) is None
    assert redis_client.zscore(js.LEASES_KEY, job_id) == record.lease_until
    assert redis_client.zscore(js.QUEUED_KEY, job_id) is None
    assert store.start(job_id, run_id="r2", lease_seconds=30) is None, "started only once"


def test_a_failing_write_raises_after_the_others_are_made(redis_client):
    """As with MULTI/EXEC: a write that fails does not stop the rest, and its error is raised."""
    redis_client.set("pb:test:string", "x")
    guard = Guard(redis_client)
    writes = guard.recorder()
    writes.hset("pb:test:string", "a", 1)  # WRONGTYPE
    writes.hset("pb:test:after", "b", 2)
    with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
        guard.write(writes)
    assert redis_client.hget("pb:test:after", "b") == b"2"


def test_writes_are_applied_all_or_nothing_when_redis_is_out_of_memory(tmp_path):
    """Over maxmemory a script of writes is refused whole: a write that frees memory (an
    EXPIRE) does not let the writes after it through, so nothing of it is applied."""
    with own_redis(tmp_path / "redis") as server:
        client = server.client()
        client.set("pb:test:kept", "1")
        guard = Guard(client)
        writes = guard.recorder()
        writes.expire("pb:test:kept", 3600)
        writes.hset("pb:test:record", "status", "completed")
        writes.rpush("pb:test:list", "entry")
        client.config_set("maxmemory-policy", "noeviction")
        client.config_set("maxmemory", 1)
        try:
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                guard.write(writes)
        finally:
            client.config_set("maxmemory", 0)
        assert client.ttl("pb:test:kept") == -1
        assert not client.exists("pb:test:record", "pb:test:list")
        client.close()
