"""Protection from too much: per-partner rate limits and a bound on the queued backlog."""

from __future__ import annotations

import math
import time

import redis
from flask import Response, g
from limits import parse
from limits.storage import RedisStorage
from limits.strategies import SlidingWindowCounterRateLimiter
from rq import Queue

from app.errors import ApiError, Unavailable
from postback import metrics as pm
from worker.jobs import QUEUES


class TooManyRequests(ApiError):
    status, title, slug = 429, "Too many requests", "rate-limited"


class RateLimiter:
    """`POSTBACK_RATE_LIMIT` per partner, counted in Redis so every API process shares it."""

    def __init__(self, client: redis.Redis, rate: str) -> None:
        self.item = parse(rate)
        self.redis = client
        storage = RedisStorage(
            "redis://", connection_pool=client.connection_pool, key_prefix="pb:ratelimit"
        )
        self.limiter = SlidingWindowCounterRateLimiter(storage)

    def check(self, partner_id: str) -> None:
        """Count one request; raise 429 past the limit. Headers go on the response either way."""
        allowed = self.limiter.hit(self.item, partner_id)
        stats = self.limiter.get_window_stats(self.item, partner_id)
        reset_seconds = max(1, math.ceil(stats.reset_time - time.time()))
        g.rate_limit_headers = {
            "RateLimit-Limit": str(self.item.amount),
            "RateLimit-Remaining": str(max(0, stats.remaining)),
            "RateLimit-Reset": str(reset_seconds),
        }
        if not allowed:
            pm.counter(self.redis, "postback_rate_limited_total")
            raise TooManyRequests(
                f"more than {self.item.amount} requests per {self.item.GRANULARITY.name}; "
                f"retry in {reset_seconds} s",
                headers={**g.rate_limit_headers, "Retry-After": str(reset_seconds)},
            )


def add_rate_limit_headers(response: Response) -> Response:
    """After each request: the partner's rate-limit headers, when there are any."""
    for name, value in getattr(g, "rate_limit_headers", {}).items():
        response.headers.setdefault(name, value)
    return response


def check_backlog(client: redis.Redis, max_backlog: int) -> None:
    """503 with Retry-After while more than `max_backlog` jobs wait in the queue."""
    with client.pipeline(transaction=False) as pipe:
        for name in QUEUES.values():
            pipe.llen(Queue(name, connection=client).key)
        waiting = sum(pipe.execute())
    if waiting >= max_backlog:
        raise Unavailable(
            f"{waiting} jobs are waiting; submissions resume when the backlog drains",
            headers={"Retry-After": "30"},
        )
