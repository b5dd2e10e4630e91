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
import logging
import math
import secrets
from collections.abc import Iterator

import redis

from app.hub import Hub, Watch
from postback import clock, lua
from postback.errors import LimitExceeded
from worker.jobs import done_channel

log = logging.getLogger(__name__)

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

    def watch(self, job_id: str) -> contextlib.AbstractContextManager[Watch]:
        """A watch woken when the job may have ended (re-read it, then `sleep` again).

        Subscribed before it is returned (when Redis answers): read the job
        after entering, and an end between the read and the wait is not missed.
        """
        return self.hub.watch(done_channel(job_id))

    @staticmethod
    def sleep(ended: Watch, seconds: float) -> bool:
        """Wait up to `seconds` for `ended` (re-checking sooner while unsubscribed)."""
        return ended.sleep(seconds)
