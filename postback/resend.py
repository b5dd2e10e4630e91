"""What a client may send again after its connection broke, and the one retry that does.

A command whose connection breaks before its reply is read may or may not have
run. Sending it again is safe when it cannot have run (a Sentinel-managed primary
answered READONLY: it is a replica now and refused it) or when running it twice
is running it once: reads, and the scripts declared `repeatable` because they
check a version or a token before they write (`worker.guard`'s guarded apply,
the delivery claims' renew, release and settle). Anything else (a counter's
INCR, a transaction of writes) is not sent again: its caller gets `ReplyLost`,
which the API answers with a 503 and Retry-After and workers wait out. A timeout
is never retried (a frozen server costs one timeout, not several).

The errors, both `redis.ConnectionError`s (so every fault handler knows them)::

    redis.ConnectionError
    ├── ReplyLost      the connection broke after a command that is unsafe to repeat went out
    └── PrimaryMoved   READONLY from what Sentinel named the primary: nothing ran; ask again

Connections remember what they last sent (a reference, no copy); it is read
only when a connection breaks, to name the commands in it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, TypeVar

import redis
import redis.asyncio
import redis.asyncio.retry
import redis.connection
import redis.exceptions
import redis.retry
from redis.backoff import NoBackoff

T = TypeVar("T")


class ReplyLost(redis.ConnectionError):
    """The connection broke after a command that may have run, and must not run twice."""


class PrimaryMoved(redis.ConnectionError):
    """The server Sentinel named the primary answered READONLY: a failover moved it."""


PRIMARY_MOVED = "the primary is a replica now (READONLY): Sentinel is asked again"


# Commands that change nothing (or, as MULTI or SELECT, only frame others): run twice,
# they answer as once. Writes are never here, not even "idempotent" ones: a repeated
# SET NX, DEL or HSET answers differently the second time.
READS = frozenset(
    name.encode()
    for line in (
        "PING ECHO TIME ROLE INFO DBSIZE LASTSAVE SELECT AUTH HELLO MULTI EXEC DISCARD",
        "WATCH UNWATCH WAIT WAITAOF",
        "GET MGET STRLEN GETRANGE GETBIT BITCOUNT EXISTS TYPE TTL PTTL EXPIRETIME SCAN",
        "HGET HMGET HGETALL HEXISTS HLEN HKEYS HVALS HSTRLEN HSCAN",
        "LRANGE LLEN LINDEX LPOS",
        "SMEMBERS SISMEMBER SMISMEMBER SCARD SSCAN SRANDMEMBER",
        "ZRANGE ZRANGEBYSCORE ZREVRANGE ZREVRANGEBYSCORE ZRANGEBYLEX ZSCORE ZMSCORE ZCARD",
        "ZCOUNT ZRANK ZREVRANK ZSCAN",
        "XRANGE XREVRANGE XLEN XREAD XPENDING XINFO",
        "EVALSHA_RO EVAL_RO",
    )
    for name in line.split()
)
# Commands whose subcommand decides: these subcommands change nothing (or only this
# connection's name, as the same name again).
SUBCOMMAND_READS = {
    b"SCRIPT": frozenset({b"LOAD", b"EXISTS"}),
    b"CLIENT": frozenset({b"SETNAME", b"GETNAME", b"ID", b"INFO", b"LIST", b"SETINFO"}),
    b"CONFIG": frozenset({b"GET"}),
    b"MEMORY": frozenset({b"USAGE", b"STATS"}),
    b"OBJECT": frozenset({b"ENCODING", b"IDLETIME", b"FREQ", b"REFCOUNT"}),
}

# The SHA-1s of the scripts declared safe to run twice (`repeatable`).
_REPEATABLE_SHAS: set[bytes] = set()


def repeatable(source: str) -> str:
    """Declare the Lua script `source` safe to run twice (it reads, or checks a version or
    a token before it writes); returns `source`."""
    _REPEATABLE_SHAS.add(hashlib.sha1(source.encode()).hexdigest().encode())
    return source


def safe_to_resend(packed: Any) -> bool:
    """Whether every command in `packed` (what a connection sent, RESP) is safe to run twice."""
    try:
        return all(_safe(name.upper(), first) for name, first in _commands(packed))
    except (ValueError, IndexError):
        return False


def _safe(name: bytes, first: bytes) -> bool:
    if name in READS:
        return True
    if name in SUBCOMMAND_READS:
        return first.upper() in SUBCOMMAND_READS[name]
    if name == b"EVALSHA":
        return first.lower() in _REPEATABLE_SHAS
    if name == b"EVAL":
        return hashlib.sha1(first).hexdigest().encode() in _REPEATABLE_SHAS
    return False


def _commands(packed: Any) -> Iterator[tuple[bytes, bytes]]:
    """The name and first argument of each command in `packed` (RESP arrays of bulk strings)."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, bytes | bytearray | memoryview):
        data = bytes(packed)
    else:
        data = b"".join(bytes(part) for part in packed)
    at = 0
    while at < len(data):
        if data[at : at + 1] != b"*":
            raise ValueError("not a RESP array")
        end = data.index(b"\r\n", at)
        count, at = int(data[at + 1 : end]), end + 2
        args: list[bytes] = []
        for _ in range(count):
            end = data.index(b"\r\n", at)
            length, start = int(data[at + 1 : end]), end + 2
            if len(args) < 2:
                args.append(data[start : start + length])
            at = start + length + 2
        if not args:
            raise ValueError("an empty command")
        yield args[0], args[1] if len(args) > 1 else b""


def _judged(exc: redis.ConnectionError, sent: Any) -> redis.ConnectionError:
    """`exc` as it may be retried: itself when what was sent is safe to send again, else
    a `ReplyLost` with its message."""
    if isinstance(exc, ReplyLost | PrimaryMoved) or sent is None or safe_to_resend(sent):
        return exc
    return ReplyLost(*exc.args)


class ResendRule(redis.connection.AbstractConnection):
    """A blocking connection that marks a break after an unsafe command as `ReplyLost`.

    It connects through `connect()` when it finds itself disconnected: a
    Sentinel-managed connection's `connect` asks Sentinel where the primary is now,
    where redis-py's send reconnects to the address it had (the old primary).
    """

    _sent: Any = None
    # Managed by Sentinel: READONLY means the primary moved (`PrimaryMoved`), not a fault.
    follows_primary = False

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        if not self._sock:
            self.connect()
        if check_health:
            self.check_health()
        self._sent = command
        try:
            super().send_packed_command(command, check_health=False)
        except redis.ConnectionError as exc:
            if (judged := _judged(exc, command)) is exc:
                raise
            raise judged from exc

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._read(*args, **kwargs)
        except redis.exceptions.ReadOnlyError as exc:
            if not self.follows_primary:
                raise
            self.disconnect()
            raise PrimaryMoved(PRIMARY_MOVED) from exc
        except redis.ConnectionError as exc:
            self.disconnect()
            if (judged := _judged(exc, self._sent)) is exc:
                raise
            raise judged from exc

    def _read(self, *args: Any, **kwargs: Any) -> Any:
        return super().read_response(*args, **kwargs)


class AsyncResendRule(redis.asyncio.Connection):
    """`ResendRule` for asyncio connections."""

    _sent: Any = None
    follows_primary = False

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        if not self.is_connected:
            await self.connect()
        if check_health:
            await self.check_health()
        self._sent = command
        try:
            await super().send_packed_command(command, check_health=False)
        except redis.ConnectionError as exc:
            if (judged := _judged(exc, command)) is exc:
                raise
            raise judged from exc

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await self._read(*args, **kwargs)
        except redis.exceptions.ReadOnlyError as exc:
            if not self.follows_primary:
                raise
            await self.disconnect(nowait=True)
            raise PrimaryMoved(PRIMARY_MOVED) from exc
        except redis.ConnectionError as exc:
            await self.disconnect(nowait=True)
            if (judged := _judged(exc, self._sent)) is exc:
                raise
            raise judged from exc

    async def _read(self, *args: Any, **kwargs: Any) -> Any:
        return await super().read_response(*args, **kwargs)


def _retryable(error: Exception, is_retryable: Callable[[Exception], bool] | None) -> bool:
    if isinstance(error, ReplyLost):
        return False
    return is_retryable is None or is_retryable(error)


class OneRetry(redis.retry.Retry):
    """One retry at once on a broken connection, unless what broke with it is `ReplyLost`;
    none on a timeout. (Written out: redis-py's before 6 takes no `is_retryable`.)"""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))

    def call_with_retry(
        self,
        do: Callable[[], T],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                return do()
            except redis.ConnectionError as error:
                if not _retryable(error, is_retryable):
                    raise
                failures += 1
                if with_failure_count:
                    fail(error, failures)
                else:
                    fail(error)
                if failures > 1:
                    raise


class AsyncOneRetry(redis.asyncio.retry.Retry):
    """`OneRetry` for asyncio clients."""

    def __init__(self) -> None:
        super().__init__(NoBackoff(), 1, supported_errors=(redis.ConnectionError,))

    async def call_with_retry(
        self,
        do: Callable[[], Awaitable[T]],
        fail: Callable[..., Any],
        is_retryable: Callable[[Exception], bool] | None = None,
        with_failure_count: bool = False,
    ) -> T:
        failures = 0
        while True:
            try:
                return await do()
            except redis.ConnectionError as error:
                if not _retryable(error, is_retryable):
                    raise
                failures += 1
                if with_failure_count:
                    await fail(error, failures)
                else:
                    await fail(error)
                if failures > 1:
                    raise
