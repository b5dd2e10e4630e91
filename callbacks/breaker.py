"""A circuit breaker per destination (scheme://host:port), shared by every process through Redis.

States: closed → open after `threshold` consecutive failed attempts; open for a
cooldown that doubles on each consecutive re-open (up to `max_cooldown_seconds`);
then half-open, where exactly one attempt (the probe) goes through, across all
processes. The probe's success closes the circuit, its failure re-opens it.
Every transition is one Lua script, so concurrent workers cannot race past it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import redis

from callbacks.outbox import DUE_KEY, PREFIX, deferred_key
from postback import clock

CIRCUITS_KEY = PREFIX + "circuits"

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When a circuit opens and for how long."""

    threshold: int = 5
    cooldown_seconds: float = 30.0
    max_cooldown_seconds: float = 600.0
    # How long a half-open probe may take before another process may probe instead.
    probe_lease_seconds: float = 35.0


DEFAULT_BREAKER_SETTINGS = BreakerSettings()


@dataclass(frozen=True)
class Permit:
    """The answer to "may I send to this destination now?"."""

    allowed: bool
    # When refused: when to ask again.
    retry_at: float | None = None
    # When allowed as the half-open probe: the token that reports its result.
    probe: str | None = None
    # The circuit had no state at all (closed, no failures): a success need not be recorded.
    clean: bool = False


# KEYS[1] circuit hash, KEYS[2] index set. ARGV: now, token, probe lease, destination.
# Returns {allowed (0/1), retry_at or "", probe token or "", clean (0/1)}.
_ACQUIRE = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {1, '', '', 1} end
if state == 'closed' then return {1, '', '', 0} end
local now = tonumber(ARGV[1])
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if state == 'open' then
  if now < open_until then return {0, tostring(open_until), '', 0} end
  state = 'half_open'
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', '', 'probe_until', '0')
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return {0, tostring(probe_until), '', 0} end
local until_ = now + tonumber(ARGV[3])
redis.call('HSET', KEYS[1], 'probe', ARGV[2], 'probe_until', tostring(until_))
return {1, '', ARGV[2], 0}
"""

# KEYS[1] circuit hash, KEYS[2] index set, KEYS[3] events deferred by this circuit,
# KEYS[4] the outbox's due set.
# ARGV: now, ok (1/0), probe token or "", threshold, cooldown, max cooldown, destination.
# Returns the state after the result. Closing the circuit makes its deferred events due now.
_CLOSE = """
local function close()
  redis.call('DEL', KEYS[1])
  redis.call('SREM', KEYS[2], ARGV[7])
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[3])) do
    redis.call('ZADD', KEYS[4], 'XX', ARGV[1], id)
  end
  redis.call('DEL', KEYS[3])
end
"""
_RECORD = (
    _CLOSE
    + """
local now = tonumber(ARGV[1])
local ok = ARGV[2] == '1'
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state ~= 'closed' then
  -- Open or half-open: only the probe's answer moves the circuit.
  if ARGV[3] == '' or redis.call('HGET', KEYS[1], 'probe') ~= ARGV[3] then return state end
  if ok then
    close()
    return 'closed'
  end
  local reopens = tonumber(redis.call('HGET', KEYS[1], 'reopens') or '0') + 1
  local cooldown = math.min(tonumber(ARGV[5]) * 2 ^ reopens, tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + cooldown),
             'reopens', reopens, 'probe', '', 'probe_until', '0')
  redis.call('HINCRBY', KEYS[1], 'failures', 1)
  return 'open'
end
if ok then
  if redis.call('EXISTS', KEYS[1]) == 1 then close() end
  return 'closed'
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
redis.call('SADD', KEYS[2], ARGV[7])
if failures >= tonumber(ARGV[4]) then
  local cooldown = math.min(tonumber(ARGV[5]), tonumber(ARGV[6]))
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + cooldown),
             'reopens', 0, 'probe', '', 'probe_until', '0')
  return 'open'
end
redis.call('HSET', KEYS[1], 'state', 'closed')
return 'closed'
"""
)


def _key(dest: str) -> str:
    return f"{PREFIX}circuit:{dest}"


class CircuitBreaker:
    """Ask before each attempt (`acquire`), report after it (`record`)."""

    def __init__(
        self, client: redis.Redis, settings: BreakerSettings = DEFAULT_BREAKER_SETTINGS
    ) -> None:
        self.redis = client
        self.settings = settings
        self._acquire = client.register_script(_ACQUIRE)
        self._record = client.register_script(_RECORD)
        self._reset = client.register_script(
            _CLOSE + "local existed = redis.call('EXISTS', KEYS[1]) close() return existed"
        )

    def acquire(self, dest: str) -> Permit:
        """Whether an attempt to `dest` may go now; in half-open, only one caller gets through."""
        token = secrets.token_hex(8)
        allowed, retry_at, probe, clean = self._acquire(
            keys=[_key(dest), CIRCUITS_KEY],
            args=[repr(clock.now()), token, self.settings.probe_lease_seconds, dest],
        )
        return Permit(
            allowed=bool(allowed),
            retry_at=float(retry_at) if retry_at else None,
            probe=probe.decode() if probe else None,
            clean=bool(clean),
        )

    def record(self, dest: str, *, ok: bool, probe: str | None = None) -> str:
        """Report an attempt's outcome; returns the circuit's state after it.

        A success under a `clean` permit changes nothing and need not be reported.
        """
        state = self._record(
            keys=[_key(dest), CIRCUITS_KEY, deferred_key(dest), DUE_KEY],
            args=[
                repr(clock.now()),
                "1" if ok else "0",
                probe or "",
                self.settings.threshold,
                self.settings.cooldown_seconds,
                self.settings.max_cooldown_seconds,
                dest,
            ],
        )
        return state.decode()

    def state(self, dest: str) -> dict[str, Any]:
        """The public view of one circuit."""
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(_key(dest)).items()}
        state = raw.get("state", CLOSED)
        open_until = float(raw["open_until"]) if raw.get("open_until") else None
        if state == OPEN and open_until is not None and open_until <= clock.now():
            state = HALF_OPEN
        return {
            "destination": dest,
            "state": state,
            "consecutive_failures": int(raw.get("failures", 0)),
            "open_until": clock.rfc3339(open_until) if state != CLOSED else None,
        }

    def all(self) -> list[dict[str, Any]]:
        """Every circuit that is not plainly closed with no failures, by destination."""
        dests = sorted(d.decode() for d in self.redis.smembers(CIRCUITS_KEY))
        return [self.state(dest) for dest in dests]

    def reset(self, dest: str) -> bool:
        """Close the circuit of `dest` by hand (its deferred events fall due now).

        Returns False if it had no state.
        """
        existed = self._reset(
            keys=[_key(dest), CIRCUITS_KEY, deferred_key(dest), DUE_KEY],
            args=[repr(clock.now()), "", "", "", "", "", dest],
        )
        return bool(existed)
