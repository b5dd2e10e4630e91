"""Which workers are alive: a heartbeat per worker, sent every few seconds, lasting seconds.

Each worker process adds its name to one sorted set, scored with the time of
Redis's clock, every `BEAT_SECONDS` (from a thread of its own); a worker whose
last beat is older than `TTL_SECONDS` is not alive, so a worker killed by
SIGKILL stops counting within that (RQ's own registration lasts minutes).
`count` is what `/readyz`, `postback status` and `postback_workers` report.
"""

from __future__ import annotations

import logging
import threading
from typing import cast

import redis

from postback.connection import timeout_of
from postback.faults import FaultWatch, classify

log = logging.getLogger(__name__)

ALIVE_KEY = "pb:workers:alive"
TTL_SECONDS = 15.0
BEAT_SECONDS = 3.0

# Both scripts read the time from Redis: every process compares with the same clock.
_BEAT = """
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
redis.call('ZADD', KEYS[1], seconds, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', seconds - tonumber(ARGV[2]))
return 1
"""
_COUNT = """
local now = redis.call('TIME')
local seconds = tonumber(now[1]) + tonumber(now[2]) / 1000000
return redis.call('ZCOUNT', KEYS[1], seconds - tonumber(ARGV[1]), '+inf')
"""


def beat(client: redis.Redis, name: str) -> None:
    """Record that the worker `name` is alive now (and forget those silent for too long)."""
    client.eval(_BEAT, 1, ALIVE_KEY, name, TTL_SECONDS)


def gone(client: redis.Redis, name: str) -> None:
    """Record that the worker `name` stopped."""
    client.zrem(ALIVE_KEY, name)


def count(client: redis.Redis) -> int:
    """How many workers sent a heartbeat within the last `TTL_SECONDS`."""
    return int(cast(str, client.eval(_COUNT, 1, ALIVE_KEY, TTL_SECONDS)))


def run(client: redis.Redis, name: str, stop: threading.Event) -> None:
    """Beat every `BEAT_SECONDS` until `stop` is set, then say the worker is gone.

    Redis faults are logged once and retried at the next beat.
    """
    faults = FaultWatch("worker heartbeat", logger=log)
    while True:
        try:
            if stop.is_set():
                gone(client, name)
                return
            beat(client, name)
        except redis.RedisError as exc:
            found = classify(exc, timeout_seconds=timeout_of(client))
            if found is None:
                log.warning("worker heartbeat failed; retrying", exc_info=True)
            else:
                faults.failed(found)
            if stop.is_set():
                return
        else:
            faults.recovered()
        stop.wait(BEAT_SECONDS)
