"""The worker's RQ registration: kept alive by heartbeats of one round trip, at most one a second.

On the test Redis server: the registration is read back after each heartbeat.
"""

from __future__ import annotations

import redis
from rq import Queue

from worker.patient import PatientWorker


def _worker(redis_client: redis.Redis) -> PatientWorker:
    queue = Queue("test-patient", connection=redis_client)
    return PatientWorker([queue], connection=redis_client, timeout_seconds=2.0)


def test_a_heartbeat_renews_the_registration(redis_client: redis.Redis) -> None:
    """The first heartbeat writes the worker's last beat and gives its key a TTL."""
    worker = _worker(redis_client)
    redis_client.hset(worker.key, "state", "idle")
    worker.heartbeat()
    assert redis_client.hget(worker.key, "last_heartbeat") is not None
    assert 0 < redis_client.ttl(worker.key) <= worker.worker_ttl + 60


def test_heartbeats_within_a_second_are_not_sent_again(redis_client: redis.Redis) -> None:
    """A second beat right after the first changes nothing in Redis; a longer TTL still goes."""
    worker = _worker(redis_client)
    worker.heartbeat()
    redis_client.hdel(worker.key, "last_heartbeat")
    worker.heartbeat()
    assert redis_client.hget(worker.key, "last_heartbeat") is None
    longer = worker.worker_ttl + 600
    worker.heartbeat(longer)
    assert redis_client.hget(worker.key, "last_heartbeat") is not None
    assert redis_client.ttl(worker.key) > worker.worker_ttl + 60


def test_a_heartbeat_after_a_second_is_sent(redis_client: redis.Redis, monkeypatch) -> None:
    """Once a second has passed, the next beat is written again."""
    worker = _worker(redis_client)
    worker.heartbeat()
    redis_client.hdel(worker.key, "last_heartbeat")
    monkeypatch.setattr(worker, "_beat_at", worker._beat_at - 1.5)
    worker.heartbeat()
    assert redis_client.hget(worker.key, "last_heartbeat") is not None
