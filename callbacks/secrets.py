"""Signing secrets per owner (a partner, for Postback), kept in Redis, with rotation."""

from __future__ import annotations

import asyncio
import time

import redis
import redis.asyncio

from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.signing import generate_secret
from postback import clock

# How long a delivery process reuses an owner's secrets before reading them again.
CACHE_SECONDS = 1.0


class SecretStore:
    """The secrets that sign an owner's messages.

    After a rotation the previous secret keeps signing, beside the new one,
    until its grace period ends: receivers switch over without losing a message.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys = DEFAULT_KEYS,
        aclient: redis.asyncio.Redis | None = None,
    ) -> None:
        self.redis = client
        self.aredis = aclient
        self.keys = keys
        self._cache: dict[str, tuple[float, list[str]]] = {}
        # Reads in flight: the attempts that start together wait for one read, not each its own.
        self._reading: dict[str, asyncio.Future[list[str]]] = {}

    def set(
        self, owner: str, secret: str, *, pipeline: redis.client.Pipeline | None = None
    ) -> None:
        """Make `secret` the only signing secret of `owner`."""
        target = pipeline if pipeline is not None else self.redis
        target.hset(
            self.keys.secrets(owner),
            mapping={"current": secret, "previous": "", "previous_until": 0},
        )

    def rotate(self, owner: str, *, grace_seconds: float) -> str:
        """A new current secret; the old one also signs for `grace_seconds` more."""
        new = generate_secret()
        key = self.keys.secrets(owner)
        while True:
            with self.redis.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(key)
                    old = pipe.hget(key, "current")
                    pipe.multi()
                    pipe.hset(
                        key,
                        mapping={
                            "current": new,
                            "previous": old or "",
                            "previous_until": repr(clock.now() + grace_seconds) if old else 0,
                        },
                    )
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue

    def signing_secrets(self, owner: str) -> list[str]:
        """Every secret that signs `owner`'s messages now, oldest first (empty if none)."""
        return _secrets(self.redis.hmget(self.keys.secrets(owner), *_FIELDS))

    async def asigning_secrets(self, owner: str) -> list[str]:
        """`signing_secrets` from the asyncio client, reused for up to `CACHE_SECONDS`."""
        cached = self._cache.get(owner)
        now = time.monotonic()
        if cached is not None and now - cached[0] < CACHE_SECONDS:
            return cached[1]
        reading = self._reading.get(owner)
        if reading is None:
            reading = self._reading[owner] = asyncio.ensure_future(self._read(owner, now))
            reading.add_done_callback(lambda _: self._reading.pop(owner, None))
        # Shielded: one waiter that gives up does not cancel the read for the others.
        return await asyncio.shield(reading)

    async def _read(self, owner: str, now: float) -> list[str]:
        assert self.aredis is not None
        found = _secrets(await self.aredis.hmget(self.keys.secrets(owner), *_FIELDS))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[owner] = (now, found)
        return found


_FIELDS = ("current", "previous", "previous_until")


def _secrets(reply: list[bytes | None]) -> list[str]:
    current, previous, until = reply
    secrets = []
    if previous and until and float(until) > clock.now():
        secrets.append(previous.decode())
    if current:
        secrets.append(current.decode())
    return secrets
