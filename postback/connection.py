"""The Redis connection every process uses, from `REDIS_URL` or the embedded server."""

from __future__ import annotations

import redis

from postback.embedded import EmbeddedRedis
from postback.settings import Settings


class RedisNotFound(RuntimeError):
    """No `REDIS_URL` and no embedded server running for the data dir."""


def redis_url(settings: Settings) -> str:
    """`REDIS_URL` when set, else the URL of the data dir's embedded server."""
    if settings.redis_url:
        return settings.redis_url
    url = EmbeddedRedis(settings.data_dir).url()
    if url is None:
        raise RedisNotFound(
            f"REDIS_URL is unset and no embedded Redis runs for data dir {settings.data_dir}; "
            "start one with `postback up`"
        )
    return url


def connect(url: str, *, blocking: bool = False) -> redis.Redis:
    """A client with timeouts and health checks, so a lost server fails fast.

    `blocking` clients (RQ's worker, which waits on the queue for minutes at a
    time) have no read timeout; TCP keepalive notices a dead server instead.
    """
    return redis.Redis.from_url(
        url,
        socket_timeout=None if blocking else 5,
        socket_connect_timeout=2,
        socket_keepalive=True,
        health_check_interval=30,
        retry_on_timeout=not blocking,
    )
