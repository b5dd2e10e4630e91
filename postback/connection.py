"""The Redis connection every process uses, from `REDIS_URL` or the embedded server.

Every client gets `POSTBACK_REDIS_TIMEOUT_SECONDS` as its connect timeout and as
its command timeout, and retries a command once only on a broken connection (a
server that restarted), never on a timeout: a frozen or lost server costs one
timeout, not several. The one exception is the client RQ blocks on while it waits
for jobs (`blocking=True`), whose reads must outlast that wait.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import hiredis
import redis
import redis.asyncio
import redis.asyncio.retry
from redis.backoff import NoBackoff
from redis.retry import Retry

from postback.embedded import EmbeddedRedis
from postback.settings import Settings

# A dead connection shows on a connection idle this long before it is used again.
HEALTH_CHECK_SECONDS = 30
# A server whose machine vanished (no RST ever comes) is noticed by TCP keepalive within
# about idle + interval * count seconds (25 s), even by a client that blocks with no timeout.
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
KEEPALIVE_OPTIONS = {
    getattr(socket, name): value for name, value in _KEEPALIVE.items() if hasattr(socket, name)
}


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


def connect(
    url: str,
    *,
    timeout_seconds: float,
    blocking: bool = False,
    max_connections: int | None = None,
) -> redis.Redis:
    """A client that fails fast: `timeout_seconds` to connect and for each command.

    A `blocking` client (the one RQ's worker waits on the queue with, for minutes
    at a time) has no read timeout of its own: RQ gives it one just longer than
    its wait, and TCP keepalive notices a server that is gone.

    With `max_connections` the client opens at most that many connections, and a
    caller waits up to `timeout_seconds` for one to be free (the API, where
    thousands of requests may run at once in one process, uses a few).
    """
    options: dict[str, Any] = {
        "socket_timeout": None if blocking else timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE_OPTIONS,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
    }
    if max_connections is None:
        return redis.Redis.from_url(url, **options)
    pool = redis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_seconds, **options
    )
    return redis.Redis(connection_pool=pool)


def timeout_of(client: redis.Redis | redis.asyncio.Redis) -> float | None:
    """The command timeout `client` was made with (None: none), e.g. to name a timeout."""
    return client.connection_pool.connection_kwargs.get("socket_timeout")


# What an asyncio client takes over from the blocking client it mirrors.
_ASYNC_PARAMS = {
    "host",
    "port",
    "db",
    "username",
    "password",
    "socket_timeout",
    "socket_connect_timeout",
    "socket_keepalive",
    "socket_keepalive_options",
    "health_check_interval",
    "client_name",
}


class PackedConnection(redis.asyncio.Connection):
    """An asyncio connection that packs commands in C (hiredis), as blocking ones do.

    redis-py's asyncio connection packs in Python, one encode call per argument: for
    the dispatcher's scripts, dozens of arguments each, that was a sixth of the
    delivery process's CPU (P7 in BENCHMARKS.md).
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        command = args[0]
        if isinstance(command, str):
            args = (*command.encode().split(), *args[1:])
        elif b" " in command:
            args = (*command.split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:  # a value hiredis does not take: redis-py's own error for it
            return super().pack_command(*args)


def async_twin(client: redis.Redis, *, max_connections: int) -> Callable[[], redis.asyncio.Redis]:
    """A maker of asyncio clients for `client`'s server, with its timeouts and retry rule.

    Each client it makes has a bounded pool: callers wait for a free connection.
    """
    params: dict[str, Any] = {
        k: v for k, v in client.connection_pool.connection_kwargs.items() if k in _ASYNC_PARAMS
    }

    def make() -> redis.asyncio.Redis:
        pool = redis.asyncio.BlockingConnectionPool(
            connection_class=PackedConnection,
            max_connections=max_connections,
            timeout=None,
            retry=redis.asyncio.retry.Retry(
                NoBackoff(), 1, supported_errors=(redis.ConnectionError,)
            ),
            **params,
        )
        return redis.asyncio.Redis(connection_pool=pool)

    return make
