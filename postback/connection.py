"""The Redis connection every process uses: through Sentinel, `REDIS_URL` or the embedded server.

`redis_target` says where the system's Redis is: the primary the Sentinels of
`POSTBACK_REDIS_SENTINELS` name (`postback.sentinel`), else `REDIS_URL`, else
the data dir's embedded server. Every client gets `POSTBACK_REDIS_TIMEOUT_SECONDS`
as its connect timeout and as its command timeout, and retries a command once
only on a broken connection, and then only what is safe to send again
(`postback.resend`), never on a timeout: a frozen or lost server costs one
timeout, not several. The one exception is the client RQ blocks on while it waits
for jobs (`blocking=True`), whose reads must outlast that wait.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import queue
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote, unquote, urlsplit

import hiredis
import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel

from postback import sentinel
from postback.embedded import EmbeddedRedis
from postback.errors import Misconfigured
from postback.ha import HaSet
from postback.resend import AsyncOneRetry, AsyncResendRule, OneRetry, ReplyLost, ResendRule
from postback.sentinel import Sentinels
from postback.settings import Settings, format_address, redacted_url

# A dead connection shows on a connection idle this long before it is used again.
HEALTH_CHECK_SECONDS = 30
# A server whose machine vanished (no RST ever comes) is noticed by TCP keepalive within
# about idle + interval * count seconds (25 s), even by a client that blocks with no timeout.
_KEEPALIVE = {"TCP_KEEPIDLE": 10, "TCP_KEEPINTVL": 5, "TCP_KEEPCNT": 3}
KEEPALIVE_OPTIONS = {
    getattr(socket, name): value for name, value in _KEEPALIVE.items() if hasattr(socket, name)
}


# Whose request the current thread or greenlet serves (an API key's hash, for one): the
# unit of fairness when callers wait for a connection (`FairQueue`). None: nobody's.
_TENANT: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "postback_redis_tenant", default=None
)


@contextlib.contextmanager
def on_behalf_of(tenant: str | None) -> Iterator[None]:
    """Inside the block, waits for a Redis connection count as `tenant`'s turn."""
    token = _TENANT.set(tenant)
    try:
        yield
    finally:
        _TENANT.reset(token)


def current_tenant() -> str | None:
    """Whose request the caller serves (`on_behalf_of`), or None."""
    return _TENANT.get()


class _Waiter:
    __slots__ = ("event", "given", "item")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.given = False
        self.item: Any = None


class FairQueue:
    """The idle connections of a bounded pool, handed out a tenant at a time when short.

    With a connection free, a caller takes it at once. When there is none, callers
    wait in one line per tenant (`on_behalf_of`), and each connection given back goes
    to the next tenant in turn: a partner whose thousand requests arrive at once
    waits behind its own requests, and another partner's request waits for at most
    one connection per tenant then waiting, not for the thousand.

    The queue interface (`get`, `put_nowait`, `queue`) that redis-py's
    `BlockingConnectionPool` uses (its `queue_class`); its items are connections or
    the pool's placeholders for connections not yet made, the most recent first.
    """

    def __init__(self, maxsize: int) -> None:
        self.maxsize = maxsize
        self.queue: list[Any] = []
        self._lock = threading.Lock()
        # The lines of the tenants waiting, in their turn's order.
        self._lines: dict[str | None, collections.deque[_Waiter]] = {}

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        tenant = current_tenant()
        with self._lock:
            if self.queue:
                return self.queue.pop()
            if not block:
                raise queue.Empty
            waiter = _Waiter()
            self._lines.setdefault(tenant, collections.deque()).append(waiter)
        if waiter.event.wait(timeout):
            return waiter.item
        with self._lock:
            if waiter.given:  # handed over as the wait ended
                return waiter.item
            line = self._lines[tenant]
            line.remove(waiter)
            if not line:
                del self._lines[tenant]
        raise queue.Empty

    def put_nowait(self, item: Any) -> None:
        with self._lock:
            if self._lines:
                tenant = next(iter(self._lines))
                line = self._lines.pop(tenant)
                waiter = line.popleft()
                if line:  # back in line behind the other tenants
                    self._lines[tenant] = line
                waiter.item, waiter.given = item, True
                waiter.event.set()
                return
            if len(self.queue) >= self.maxsize:
                raise queue.Full
            self.queue.append(item)


def call(client: redis.Redis, *args: Any) -> Any:
    """`client.execute_command(*args)` on a shorter path, for a command whose reply is
    used as it comes (no response callback): the API's per-request scripts.

    A command through `execute_command` costs about twice its round trip in Python
    (instrumentation, wrappers); this costs the pool's checkout, the command and its
    reply. Failures are as there: the same exceptions, a connection that failed closed
    (redis-py's connection closes itself on a timeout), and one retry on a broken
    connection when the command is safe to send again (`postback.resend`), never on
    a timeout.
    """
    if client.connection is not None:  # a single-connection client
        return client.execute_command(*args)
    for attempt in (1, 2):
        with checked_out(client) as connection:
            try:
                connection.send_command(*args)
                return connection.read_response()
            except redis.ConnectionError as exc:
                connection.disconnect()
                if attempt == 2 or isinstance(exc, ReplyLost):
                    raise
    raise AssertionError("unreachable")


@contextlib.contextmanager
def checked_out(client: redis.Redis) -> Iterator[redis.connection.AbstractConnection]:
    """One of `client`'s pooled connections, for several `exchange`s on the same one."""
    pool = client.connection_pool
    connection = pool.get_connection()
    try:
        yield connection
    finally:
        pool.release(connection)


def exchange(
    connection: redis.connection.AbstractConnection, commands: list[tuple[Any, ...]]
) -> list[Any]:
    """Send `commands` in one write and read their replies; an error reply is returned
    in its place (as `redis.ResponseError`), a broken connection or timeout raised."""
    connection.send_packed_command(connection.pack_commands(commands))
    replies: list[Any] = []
    for _ in commands:
        try:
            replies.append(connection.read_response())
        except redis.ResponseError as exc:
            replies.append(exc)
    return replies


class RedisNotFound(Misconfigured):
    """No Sentinels, no `REDIS_URL` and no embedded server running for the data dir."""


# Where a client connects: a Redis URL, or the primary that Sentinels name.
Target = str | Sentinels


def redis_target(settings: Settings) -> Target:
    """Where the system's Redis is: the primary the Sentinels of `POSTBACK_REDIS_SENTINELS`
    name when some are set, else `REDIS_URL`, else the data dir's Sentinels or embedded
    server. `POSTBACK_REDIS_PASSWORD` is the data nodes' password unless the URL has one."""
    if settings.redis_sentinels:
        return _sentinels(settings)
    if settings.redis_url:
        return _with_password(settings.redis_url, settings.redis_password)
    found = ha_sentinels(settings)
    if found is not None:
        return found
    url = EmbeddedRedis(settings.data_dir).url()
    if url is None:
        raise RedisNotFound(
            f"REDIS_URL is unset and no embedded Redis runs for data dir {settings.data_dir}; "
            "start one with `postback up`"
        )
    return url


def ha_sentinels(settings: Settings) -> Sentinels | None:
    """The Sentinels of the data dir's HA set (`postback up --replicas N`, described by
    `<data_dir>/redis/ha.json`), if one of them runs; else None."""
    found = HaSet.find(settings.data_dir)
    if found is None or not found.running():
        return None
    return Sentinels(
        addresses=tuple(found.sentinels()),
        service=found.service,
        password=found.data_password,
        sentinel_password=found.sentinel_password,
    )


def _sentinels(settings: Settings) -> Sentinels:
    # With Sentinels, a REDIS_URL still gives the data nodes' user, password and
    # database (Sentinel gives the host).
    username = password = None
    db = 0
    if settings.redis_url:
        parts = urlsplit(settings.redis_url)
        username = unquote(parts.username) if parts.username else None
        password = unquote(parts.password) if parts.password else None
        db = int(parts.path.strip("/") or 0) if parts.path.strip("/").isdigit() else 0
    return Sentinels(
        addresses=settings.sentinel_addresses,
        service=settings.redis_sentinel_service,
        username=username,
        password=settings.redis_password or password,
        db=db,
        sentinel_password=settings.redis_sentinel_password,
    )


def _with_password(url: str, password: str | None) -> str:
    parts = urlsplit(url)
    if password is None or parts.password is not None or parts.scheme == "unix":
        return url
    host = parts.netloc.rpartition("@")[2]
    netloc = f"{parts.username or ''}:{quote(password, safe='')}@{host}"
    return parts._replace(netloc=netloc).geturl()


def describe(target: Target) -> str:
    """`target` as it may be shown or logged: no password."""
    return str(target) if isinstance(target, Sentinels) else f"Redis at {redacted_url(target)}"


def target_environ(target: Target) -> dict[str, str]:
    """The environment that tells a child process (`python -m worker.deliver`) where `target` is."""
    if not isinstance(target, Sentinels):
        return {"REDIS_URL": target}
    environ = {
        "POSTBACK_REDIS_SENTINELS": ",".join(format_address(*a) for a in target.addresses),
        "POSTBACK_REDIS_SENTINEL_SERVICE": target.service,
    }
    if target.password is not None:
        environ["POSTBACK_REDIS_PASSWORD"] = target.password
    if target.sentinel_password is not None:
        environ["POSTBACK_REDIS_SENTINEL_PASSWORD"] = target.sentinel_password
    if target.username is not None or target.db:
        # Read for its user and database only: Sentinel gives the host.
        user = quote(target.username or "", safe="")
        environ["REDIS_URL"] = f"redis://{user + '@' if user else ''}sentinel/{target.db}"
    return environ


class TcpConnection(ResendRule, redis.Connection):
    """A TCP connection under Postback's resend rule."""


class TlsConnection(ResendRule, redis.SSLConnection):
    """A TLS connection (`rediss://`) under Postback's resend rule."""


class UnixConnection(ResendRule, redis.UnixDomainSocketConnection):
    """A Unix socket connection (`unix://`) under Postback's resend rule."""


_URL_CONNECTIONS: dict[str, type] = {
    "redis": TcpConnection,
    "rediss": TlsConnection,
    "unix": UnixConnection,
}


def connect(
    target: Target,
    *,
    timeout_seconds: float,
    blocking: bool = False,
    max_connections: int | None = None,
) -> redis.Redis:
    """A client of `target` (a URL, or the primary Sentinels name) that fails fast:
    `timeout_seconds` to connect and for each command.

    A `blocking` client (the one RQ's worker waits on the queue with, for minutes
    at a time) has no read timeout of its own: RQ gives it one just longer than
    its wait, and TCP keepalive notices a server that is gone.

    With `max_connections` the client opens at most that many connections, and a
    caller waits up to `timeout_seconds` for one to be free (the API, where
    thousands of requests may run at once in one process, uses a few); waiting
    callers are served a tenant at a time (`FairQueue`).
    """
    options: dict[str, Any] = {
        "socket_timeout": None if blocking else timeout_seconds,
        "socket_connect_timeout": timeout_seconds,
        "socket_keepalive": True,
        "socket_keepalive_options": KEEPALIVE_OPTIONS,
        "health_check_interval": HEALTH_CHECK_SECONDS,
        "retry": OneRetry(),
    }
    if isinstance(target, Sentinels):
        pool = sentinel.primary_pool(
            target,
            options,
            max_connections=max_connections,
            wait_seconds=timeout_seconds,
            queue_class=FairQueue,
        )
        return redis.Redis(connection_pool=pool)
    options["connection_class"] = _URL_CONNECTIONS[urlsplit(target).scheme]
    if max_connections is None:
        return redis.Redis.from_url(target, **options)
    pool = redis.BlockingConnectionPool.from_url(
        target,
        max_connections=max_connections,
        timeout=timeout_seconds,
        queue_class=FairQueue,
        **options,
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


class PackedConnection(AsyncResendRule):
    """An asyncio connection that packs commands in C (hiredis), as blocking ones do,
    under Postback's resend rule.

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


class AsyncSentinelConnection(PackedConnection, redis.asyncio.sentinel.SentinelManagedConnection):
    """A `PackedConnection` to the primary Sentinel names."""

    follows_primary = True

    async def _read(self, *args: Any, **kwargs: Any) -> Any:
        # Past SentinelManagedConnection's own, which turns READONLY into a plain
        # ConnectionError: `AsyncResendRule` names it `PrimaryMoved`.
        return await super(redis.asyncio.sentinel.SentinelManagedConnection, self).read_response(
            *args, **kwargs
        )


def async_twin(client: redis.Redis, *, max_connections: int) -> Callable[[], redis.asyncio.Redis]:
    """A maker of asyncio clients for `client`'s server (or the primary Sentinel names), with
    its timeouts and retry rule.

    Each client it makes has a bounded pool: callers wait for a free connection.
    """
    pool = client.connection_pool
    params: dict[str, Any] = {k: v for k, v in pool.connection_kwargs.items() if k in _ASYNC_PARAMS}
    params.update(max_connections=max_connections, timeout=None, retry=AsyncOneRetry())
    following = pool if isinstance(pool, redis.sentinel.SentinelConnectionPool) else None
    if following is not None:
        params.pop("host", None)  # Sentinel's to say
        params.pop("port", None)

    def make() -> redis.asyncio.Redis:
        if following is not None:
            manager = sentinel.async_sentinel_manager(following.sentinel_manager, AsyncOneRetry())
            return redis.asyncio.Redis(
                connection_pool=sentinel.AsyncSentinelPool(
                    following.service_name,
                    manager,
                    connection_class=AsyncSentinelConnection,
                    **params,
                )
            )
        return redis.asyncio.Redis(
            connection_pool=redis.asyncio.BlockingConnectionPool(
                connection_class=PackedConnection, **params
            )
        )

    return make
