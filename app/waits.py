"""Waits: a request that waits for news holds a place among its partner's waits.

A long-poll (`?wait=`), `Prefer: wait`, a job's event stream and the partner
feed all wait without holding a thread or a Redis connection: they sleep on
a watch of the process's subscription hub (`app.hub`).

A partner holds at most `partner_max_waits` waits at once across API
processes: a sorted set per partner of wait tokens scored by when they lapse
(a process that dies leaves entries that lapse by themselves). A stream,
which may last for hours, holds its place for a short lease that it renews
(`Place.renew`) while it is open.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import redis

from app import hangup
from app.hub import Hub
from postback import clock, lua
from postback.errors import LimitExceeded

T = TypeVar("T")

# A wait's entry outlives the wait by this much (a crashed process's entries lapse after it).
LEASE_SLACK_SECONDS = 30.0

# KEYS[1] the partner's waits. ARGV: now, lapses at, token, most at once.
# Returns the number of waits held before this one; the token is added only below the bound.
_HOLD = lua.Script("""
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
local held = redis.call('ZCARD', KEYS[1])
if held < tonumber(ARGV[4]) then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('EXPIREAT', KEYS[1], math.ceil(tonumber(ARGV[2])))
end
return held
""")


def waits_key(partner_id: str) -> str:
    return f"pb:waits:{partner_id}"


class Place:
    """A place among the partner's waits, held until the block that took it ends."""

    def __init__(self, client: redis.Redis, key: str, token: str) -> None:
        self._redis = client
        self._key = key
        self._token = token

    def renew(self, seconds: float) -> None:
        """Keep the place for `seconds` more (a Redis fault is shrugged off: the next
        renewal or the lease's slack covers it)."""
        lapses = clock.now() + seconds + LEASE_SLACK_SECONDS
        with contextlib.suppress(redis.RedisError), self._redis.pipeline() as pipe:
            pipe.zadd(self._key, {self._token: lapses}, xx=True)
            pipe.expireat(self._key, math.ceil(lapses), gt=True)
            pipe.execute()


class Waits:
    """The waits of one API process."""

    def __init__(self, client: redis.Redis, *, max_per_partner: int, hub: Hub) -> None:
        self.redis = client
        self.max_per_partner = max_per_partner
        self.hub = hub

    @contextlib.contextmanager
    def hold(self, partner_id: str, seconds: float) -> Iterator[Place]:
        """A place among the partner's waits for `seconds`; 429 when it has them all."""
        token = secrets.token_hex(8)
        key = waits_key(partner_id)
        now = clock.now()
        held = _HOLD.run(
            self.redis,
            [key],
            [repr(now), repr(now + seconds + LEASE_SLACK_SECONDS), token, self.max_per_partner],
        )
        if int(held) >= self.max_per_partner:
            raise LimitExceeded(
                f"this partner already holds {int(held)} waits (?wait=, Prefer: wait, event "
                f"streams), the most it may hold at once (POSTBACK_PARTNER_MAX_WAITS="
                f"{self.max_per_partner}); poll without waiting or retry when one ends",
                limit=self.max_per_partner,
                retry_after_seconds=1,
            )
        try:
            yield Place(self.redis, key, token)
        finally:
            with contextlib.suppress(redis.RedisError):
                self.redis.zrem(key, token)

    def until(
        self,
        partner_id: str,
        channel: str,
        seconds: float,
        environ: dict[str, Any],
        look: Callable[[], T],
        done: Callable[[T], bool],
    ) -> T:
        """`look()` again each time `channel` speaks, until `done` says so, `seconds` have
        passed, the client hangs up or the server stops; the last look.

        Holds a place among the partner's waits meanwhile (429 when it holds them all).
        Watched first, then looked: a change between the two is not missed.
        """
        with (
            self.hold(partner_id, seconds),
            self.hub.watch(channel) as news,
            hangup.watch(environ, news) as client,
        ):
            deadline = time.monotonic() + seconds
            seen = look()
            while not done(seen):
                left = deadline - time.monotonic()
                if left <= 0 or self.hub.stopping:
                    break
                if news.sleep(left):
                    if client.gone():
                        break  # nobody reads the answer: the wait's place is given back now
                    seen = look()
            return seen
