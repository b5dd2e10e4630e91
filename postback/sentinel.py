"""Redis through Sentinel: clients that ask where the primary is and follow a failover.

With `POSTBACK_REDIS_SENTINELS` set, every client connects to the primary the
Sentinels name for `POSTBACK_REDIS_SENTINEL_SERVICE`. A connection asks them
each time it connects, so after a failover a broken connection (the old
primary died, or Sentinel closed its clients when it demoted it) or a READONLY
reply (`resend.PrimaryMoved`) leads the next connection to the new primary; the
one retry of `postback.resend` sends again what is safe to send again.

Postback's rules for its clients (timeouts, keepalive, the one retry, the API's
bounded and fair pool) are given by `postback.connection` as options; this
module only puts them on Sentinel-managed pools.
"""

from __future__ import annotations

import contextlib
import queue
import time
from dataclasses import dataclass, field
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from postback.resend import OneRetry, ResendRule

DEFAULT_SERVICE = "postback"
# How often, at most, a pool asks Sentinel again where the primary is (`SentinelPool`).
PRIMARY_CHECK_SECONDS = 1.0


@dataclass(frozen=True, kw_only=True)
class Sentinels:
    """Where Sentinel names the primary: its addresses, the service, the credentials."""

    addresses: tuple[tuple[str, int], ...]
    service: str = DEFAULT_SERVICE
    # The data nodes' (primary's and replicas') user, password and database.
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    db: int = 0
    # The Sentinels' own password (`requirepass` in sentinel.conf).
    sentinel_password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        """What may be shown or logged (no password)."""
        hosts = ",".join(f"{host}:{port}" for host, port in self.addresses)
        return f"the primary of Sentinel service {self.service!r} ({hosts})"

    def sentinel_options(
        self, *, timeout_seconds: float, keepalive_options: dict[int, int] | None = None
    ) -> dict[str, Any]:
        """The options of a client of the Sentinels themselves: `timeout_seconds` to connect
        and for each command (even beside a blocking data client), keepalive, their
        password, and no retry beyond the one (an unreachable Sentinel is skipped for the
        next)."""
        return {
            "socket_timeout": timeout_seconds,
            "socket_connect_timeout": timeout_seconds,
            "socket_keepalive": True,
            "socket_keepalive_options": keepalive_options,
            "password": self.sentinel_password,
            "retry": OneRetry(),
        }

    def data_options(self) -> dict[str, Any]:
        """The credentials and database of a connection to the primary."""
        return {"username": self.username, "password": self.password, "db": self.db}


class SentinelConnection(ResendRule, redis.sentinel.SentinelManagedConnection):
    """A connection to the primary Sentinel names, under Postback's resend rule."""

    follows_primary = True

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        # Past SentinelManagedConnection's own, which turns READONLY into a plain
        # ConnectionError: `ResendRule` names it `PrimaryMoved` (nothing ran; safe to resend).
        return super(redis.sentinel.SentinelManagedConnection, self).read_response(*args, **kwargs)


class SentinelPool(redis.sentinel.SentinelConnectionPool):
    """Connections to the primary Sentinel names, which also asks Sentinel again, at most
    every `PRIMARY_CHECK_SECONDS`, as a connection is taken.

    redis-py asks only when a connection connects. After a manual failover the old
    primary answers as one until Sentinel converts it to a replica, seconds later, and
    writes through connections still open to it would be lost with it: here a
    connection taken after the switch is (re)connected to the new primary within
    `PRIMARY_CHECK_SECONDS` (the idle ones are closed, those in use are not taken
    back), for the cost of one question to a Sentinel a second per process.
    """

    _checked_at = -PRIMARY_CHECK_SECONDS

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        self.check_primary()
        return super().get_connection(*args, **kwargs)

    def check_primary(self) -> tuple[str, int] | None:
        """Where the primary is, asked again if not in the last `PRIMARY_CHECK_SECONDS`
        (None: not known yet, and no Sentinel answers)."""
        now = time.monotonic()
        if now - self._checked_at >= PRIMARY_CHECK_SECONDS:
            self._checked_at = now
            # The next connection asks anyway; a Sentinel fault is its to report.
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                self.get_master_address()
        return self.master_address


class FairSentinelPool(SentinelPool, redis.BlockingConnectionPool):
    """At most `max_connections` connections to the primary Sentinel names, callers waiting
    in `queue_class` (the API's `FairQueue`) for one to be free.

    redis-py's `SentinelConnectionPool` extends the unbounded `ConnectionPool` (past
    its bound it raises at once), and its `BlockingConnectionPool` knows nothing of
    Sentinel. Their overrides do not overlap, so inheriting both, Sentinel's first,
    gives each its part: Sentinel's decides where connections go (its connection
    class asks Sentinel for the primary when it connects; `owns_connection` disowns a
    connection to a demoted primary; `reset` forgets the primary), the blocking
    pool decides who gets one (`get_connection`, `release`, `make_connection` over a
    queue of connections and placeholders). A disowned connection is given back as a
    placeholder, so the bound holds through a failover, and the wait stays fair.
    """


def sentinel_manager(
    target: Sentinels, *, timeout_seconds: float, keepalive_options: dict[int, int] | None = None
) -> redis.sentinel.Sentinel:
    """redis-py's Sentinel client of `target`'s Sentinels (`Sentinels.sentinel_options`)."""
    options = target.sentinel_options(
        timeout_seconds=timeout_seconds, keepalive_options=keepalive_options
    )
    return redis.sentinel.Sentinel(list(target.addresses), sentinel_kwargs=options)


def primary_pool(
    target: Sentinels,
    options: dict[str, Any],
    *,
    max_connections: int | None = None,
    wait_seconds: float | None = None,
    queue_class: type = queue.LifoQueue,
) -> redis.ConnectionPool:
    """A pool of connections to `target`'s primary with the data client `options`;
    bounded (callers waiting up to `wait_seconds` in `queue_class`) with `max_connections`."""
    manager = sentinel_manager(
        target,
        timeout_seconds=options["socket_connect_timeout"],
        keepalive_options=options.get("socket_keepalive_options"),
    )
    kwargs = {**options, **target.data_options(), "connection_class": SentinelConnection}
    if max_connections is None:
        return SentinelPool(target.service, manager, **kwargs)
    return FairSentinelPool(
        target.service,
        manager,
        max_connections=max_connections,
        timeout=wait_seconds,
        queue_class=queue_class,
        **kwargs,
    )


class AsyncSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """`FairSentinelPool` for asyncio clients: at most `max_connections` to the primary,
    tasks waiting for one (one event loop's tasks need no fairness between tenants),
    Sentinel asked again at most every `PRIMARY_CHECK_SECONDS` (`SentinelPool`)."""

    _checked_at = -PRIMARY_CHECK_SECONDS

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        now = time.monotonic()
        if now - self._checked_at >= PRIMARY_CHECK_SECONDS:
            self._checked_at = now
            with contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
                await self.get_master_address()
        return await super().get_connection(*args, **kwargs)


def async_sentinel_manager(
    target: redis.sentinel.Sentinel, retry: Any
) -> redis.asyncio.sentinel.Sentinel:
    """An asyncio Sentinel client of the Sentinels `target` asks, with its options
    (but `retry`, which must be an asyncio one)."""
    kwargs = [node.connection_pool.connection_kwargs for node in target.sentinels]
    addresses = [(each["host"], each["port"]) for each in kwargs]
    return redis.asyncio.sentinel.Sentinel(
        addresses, sentinel_kwargs={**target.sentinel_kwargs, "retry": retry}
    )


def primary_address(manager: redis.sentinel.Sentinel, service: str) -> tuple[str, int]:
    """Where the Sentinels say the primary of `service` is (MasterNotFoundError if none)."""
    host, port = manager.discover_master(service)
    return str(host), int(port)
