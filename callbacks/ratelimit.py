"""A per-destination delivery rate limit, enforced across every delivery process through Redis.

The generic cell rate algorithm (GCRA): a destination limited to `rate` per
second has a theoretical arrival time (TAT) in Redis; an attempt may start
when the TAT is not in the future, and moves it `1 / rate` on. No bursts: at
most `rate` attempts start in any second, whatever the number of processes.
"""

from __future__ import annotations

import redis.asyncio

from callbacks.keys import DEFAULT_KEYS, Keys
from postback import clock
from postback.lua import Batch, Script

# KEYS[1] the destination's TAT. ARGV: now, interval seconds.
# Returns 0 and takes the slot, or the seconds to wait before asking again.
_TAKE = Script("""
local now, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat > now then return tostring(tat - now) end
local next_tat = math.max(tat, now) + interval
redis.call('SET', KEYS[1], tostring(next_tat), 'PX', math.ceil(interval * 1000) + 1000)
return '0'
""")


class RateLimiter:
    """At most `rate_per_second` attempts per destination, shared by all processes."""

    def __init__(
        self,
        aclient: redis.asyncio.Redis | Batch,
        rate_per_second: float,
        *,
        keys: Keys = DEFAULT_KEYS,
    ) -> None:
        if rate_per_second <= 0:
            raise ValueError("the rate must be positive")
        self.aredis = aclient
        self.interval_seconds = 1.0 / rate_per_second
        self.keys = keys

    async def take(self, dest: str) -> float:
        """0.0 if an attempt to `dest` may start now (the slot is taken), else seconds to wait."""
        reply = await _TAKE.arun(
            self.aredis, [self.keys.rate(dest)], [repr(clock.now()), repr(self.interval_seconds)]
        )
        return float(reply)
