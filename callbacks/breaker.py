"""A circuit breaker per owner and destination, shared by every process through Redis.

A circuit is keyed by the owner (a partner) *and* the destination
(`scheme://host:port`): one partner's failing webhooks cannot hold back
another partner's webhooks to the same host. Only failures that say the
destination is unhealthy count (`counts_against`): no answer (connection
errors, timeouts) and 5xx, 408 and 429. A 4xx from a receiver that answered
is a failed attempt of that webhook, not evidence that the host is down.

States: closed → open after `threshold` consecutive unhealthy attempts; open
for a cooldown that doubles on each consecutive re-open (up to
`max_cooldown_seconds`); then half-open, where exactly one attempt (the probe)
goes through, across all processes. The probe's success closes the circuit,
its failure re-opens it. Each opening has a generation (the time it opened),
which the caller uses to let go of the deliveries parked while it was open.
Every transition is one Lua script, so concurrent dispatchers cannot race past it.

A closed circuit with no failures has no state at all; one with a few
failures is forgotten after `forget_seconds` without another; so per-circuit
state exists only for destinations that are failing.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, cast

import redis
import redis.asyncio

from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.outbox import Outbox
from postback import clock
from postback.lua import Batch, Script

CLOSED = "closed"
OPEN = "open"
HALF_OPEN = "half_open"

# Statuses that say the destination is unwell (besides no answer at all).
UNHEALTHY_STATUSES = frozenset({408, 429})


def counts_against(status_code: int | None) -> bool:
    """Whether an attempt's answer counts towards opening its circuit."""
    return status_code is None or status_code >= 500 or status_code in UNHEALTHY_STATUSES


def circuit_id(owner: str, dest: str) -> str:
    """The id of `owner`'s circuit to `dest`: destination first, so one host's circuits sort
    together."""
    return f"{dest} {owner}"


@dataclass(frozen=True, kw_only=True)
class BreakerSettings:
    """When a circuit opens, for how long, and when a quiet one is forgotten."""

    threshold: int = 5
    cooldown_seconds: float = 30.0
    max_cooldown_seconds: float = 600.0
    # How long a half-open probe may take before another process may probe instead.
    probe_lease_seconds: float = 20.0
    # A closed circuit's failures are forgotten after this long without another.
    forget_seconds: float = 3600.0


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
    # When refused: the generation of the opening that refused it.
    generation: float = 0.0


# KEYS[1] circuit. ARGV: now, token, probe lease.
# Returns {allowed (0/1), retry_at or "", probe token or "", clean (0/1), generation or ""}.
_ACQUIRE = Script("""
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {1, '', '', 1, ''} end
if state == 'closed' then return {1, '', '', 0, ''} end
local now = tonumber(ARGV[1])
local generation = redis.call('HGET', KEYS[1], 'opened_at') or ''
local open_until = tonumber(redis.call('HGET', KEYS[1], 'open_until') or '0')
if state == 'open' then
  if now < open_until then return {0, tostring(open_until), '', 0, generation} end
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', '', 'probe_until', '0')
end
local probe_until = tonumber(redis.call('HGET', KEYS[1], 'probe_until') or '0')
if now < probe_until then return {0, tostring(probe_until), '', 0, generation} end
redis.call('HSET', KEYS[1], 'probe', ARGV[2], 'probe_until', tostring(now + tonumber(ARGV[3])))
return {1, '', ARGV[2], 0, generation}
""")

# KEYS: circuit, index, expiry index, open index.
# ARGV: 1 now, 2 healthy (1/0), 3 probe token or "", 4 threshold, 5 cooldown, 6 max cooldown,
# 7 circuit id, 8 forget seconds, 9 owner, 10 destination.
# Returns {state after, generation closed or ""}.
_RECORD = Script("""
local now = tonumber(ARGV[1])
local ok = ARGV[2] == '1'
local function forget()
  local generation = redis.call('HGET', KEYS[1], 'opened_at') or ''
  redis.call('DEL', KEYS[1])
  redis.call('ZREM', KEYS[2], ARGV[7])
  redis.call('ZREM', KEYS[3], ARGV[7])
  redis.call('ZREM', KEYS[4], ARGV[7])
  return generation
end
local function keep(seconds)
  local expires = now + seconds
  redis.call('HSET', KEYS[1], 'owner', ARGV[9], 'destination', ARGV[10])
  redis.call('PEXPIREAT', KEYS[1], math.floor(expires * 1000))
  redis.call('ZADD', KEYS[2], 0, ARGV[7])
  redis.call('ZADD', KEYS[3], expires, ARGV[7])
  return expires
end
local function open(cooldown, reopens)
  redis.call('HSET', KEYS[1], 'state', 'open', 'open_until', tostring(now + cooldown),
             'reopens', reopens, 'probe', '', 'probe_until', '0')
  local expires = keep(tonumber(ARGV[6]) + tonumber(ARGV[8]))
  redis.call('ZADD', KEYS[4], expires, ARGV[7])
end
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state ~= 'closed' then
  if not ok then redis.call('HINCRBY', KEYS[1], 'failures', 1) end
  -- Open or half-open: only the probe's answer moves the circuit.
  if ARGV[3] == '' or redis.call('HGET', KEYS[1], 'probe') ~= ARGV[3] then return {state, ''} end
  if ok then return {'closed', forget()} end
  local reopens = tonumber(redis.call('HGET', KEYS[1], 'reopens') or '0') + 1
  open(math.min(tonumber(ARGV[5]) * 2 ^ reopens, tonumber(ARGV[6])), reopens)
  return {'open', ''}
end
if ok then
  if redis.call('EXISTS', KEYS[1]) == 1 then forget() end
  return {'closed', ''}
end
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
if failures >= tonumber(ARGV[4]) then
  redis.call('HSET', KEYS[1], 'opened_at', ARGV[1])
  open(math.min(tonumber(ARGV[5]), tonumber(ARGV[6])), 0)
  return {'open', ''}
end
redis.call('HSET', KEYS[1], 'state', 'closed')
keep(tonumber(ARGV[8]))
return {'closed', ''}
""")

# KEYS: circuit, index, expiry index, open index. ARGV: circuit id.
_RESET = Script("""
local existed = redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
return existed
""")


class CircuitBreaker:
    """Ask before each attempt (`acquire`), report after it (`record`)."""

    def __init__(
        self,
        client: redis.Redis,
        settings: BreakerSettings = DEFAULT_BREAKER_SETTINGS,
        *,
        keys: Keys = DEFAULT_KEYS,
        aclient: redis.asyncio.Redis | Batch | None = None,
    ) -> None:
        self.redis = client
        self.aredis = aclient
        self.settings = settings
        self.keys = keys

    def _index_keys(self, cid: str) -> list[str]:
        keys = self.keys
        return [keys.circuit(cid), keys.circuits, keys.circuits_expiry, keys.circuits_open]

    # The dispatcher's side ------------------------------------------------------

    def _acquire_call(self, cid: str) -> tuple[list[str], list[Any]]:
        token = secrets.token_hex(8)
        args = [repr(clock.now()), token, self.settings.probe_lease_seconds]
        return [self.keys.circuit(cid)], args

    async def aacquire(self, owner: str, dest: str) -> Permit:
        """Whether an attempt may go now; in half-open, only one caller gets through."""
        assert self.aredis is not None
        return _permit(
            await _ACQUIRE.arun(self.aredis, *self._acquire_call(circuit_id(owner, dest)))
        )

    def acquire(self, owner: str, dest: str) -> Permit:
        """`aacquire` with the blocking client."""
        return _permit(_ACQUIRE.run(self.redis, *self._acquire_call(circuit_id(owner, dest))))

    def _record_call(
        self, owner: str, dest: str, healthy: bool, probe: str | None
    ) -> tuple[list[str], list[Any]]:
        cid = circuit_id(owner, dest)
        s = self.settings
        args = [
            repr(clock.now()),
            "1" if healthy else "0",
            probe or "",
            s.threshold,
            s.cooldown_seconds,
            s.max_cooldown_seconds,
            cid,
            s.forget_seconds,
            owner,
            dest,
        ]
        return self._index_keys(cid), args

    async def arecord(
        self, owner: str, dest: str, *, healthy: bool, probe: str | None = None
    ) -> tuple[str, float | None]:
        """Report an attempt; (state after it, generation the report closed or None).

        A healthy attempt under a `clean` permit changes nothing and need not be reported.
        """
        assert self.aredis is not None
        reply = await _RECORD.arun(self.aredis, *self._record_call(owner, dest, healthy, probe))
        return _recorded(reply)

    def record(
        self, owner: str, dest: str, *, healthy: bool, probe: str | None = None
    ) -> tuple[str, float | None]:
        """`arecord` with the blocking client."""
        return _recorded(_RECORD.run(self.redis, *self._record_call(owner, dest, healthy, probe)))

    # The admin's side -------------------------------------------------------------

    def state(self, owner: str, dest: str) -> dict[str, Any]:
        """The public view of one circuit."""
        cid = circuit_id(owner, dest)
        raw = cast("dict[bytes, bytes]", self.redis.hgetall(self.keys.circuit(cid)))
        return _view(cid, raw)

    def page(
        self, *, limit: int, cursor: str | None = None, destination: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Circuits with state, by destination then owner, after `cursor` (a circuit id);
        only `destination`'s when given. Returns (items, next cursor or None)."""
        low = f"({cursor}" if cursor else "-"
        high = "+"
        if destination:
            if not cursor or cursor < destination + " ":
                low = f"[{destination} "
            high = f"[{destination} \xff"
        found = cast(
            "list[bytes]",
            self.redis.zrange(self.keys.circuits, low, high, bylex=True, offset=0, num=limit + 1),
        )
        ids = [i.decode() for i in found]
        more = len(ids) > limit
        ids = ids[:limit]
        with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.circuit(cid))
            raws = pipe.execute()
        items, gone = [], []
        for cid, raw in zip(ids, raws, strict=True):
            if raw:
                items.append(_view(cid, raw))
            else:
                gone.append(cid)
        if gone:
            self._drop(gone)
        return items, (ids[-1] if more else None)

    def open_count(self) -> int:
        """How many circuits are open or half-open (costs the same however many there are)."""
        count = cast("int", self.redis.zcount(self.keys.circuits_open, f"({clock.now()!r}", "+inf"))
        return int(count)

    def open_circuits(self, *, limit: int) -> list[dict[str, Any]]:
        """Up to `limit` open or half-open circuits, soonest to expire first."""
        ids = cast(
            "list[bytes]",
            self.redis.zrangebyscore(
                self.keys.circuits_open, f"({clock.now()!r}", "+inf", start=0, num=limit
            ),
        )
        with self.redis.pipeline(transaction=False) as pipe:
            for cid in ids:
                pipe.hgetall(self.keys.circuit(cid.decode()))
            raws = pipe.execute()
        return [_view(c.decode(), raw) for c, raw in zip(ids, raws, strict=True) if raw]

    def sweep(self, *, limit: int = 1000) -> int:
        """Drop index entries of circuits whose state has expired; returns how many."""
        ids = cast(
            "list[bytes]",
            self.redis.zrangebyscore(
                self.keys.circuits_expiry, "-inf", repr(clock.now()), start=0, num=limit
            ),
        )
        self._drop([i.decode() for i in ids])
        return len(ids)

    def _drop(self, ids: list[str]) -> None:
        if not ids:
            return
        with self.redis.pipeline(transaction=False) as pipe:
            for key in (self.keys.circuits, self.keys.circuits_expiry, self.keys.circuits_open):
                pipe.zrem(key, *ids)
            pipe.execute()

    def reset(self, owner: str, dest: str) -> bool:
        """Close `owner`'s circuit to `dest` by hand; False if it had no state.

        The caller lets its parked deliveries go (`Outbox.unpark`).
        """
        cid = circuit_id(owner, dest)
        return bool(_RESET.run(self.redis, self._index_keys(cid), [cid]))


def _permit(reply: list[Any]) -> Permit:
    allowed, retry_at, probe, clean, generation = reply
    return Permit(
        allowed=bool(allowed),
        retry_at=float(retry_at) if retry_at else None,
        probe=probe.decode() if probe else None,
        clean=bool(clean),
        generation=float(generation) if generation else 0.0,
    )


def _recorded(reply: list[Any]) -> tuple[str, float | None]:
    state, generation = reply
    return state.decode(), float(generation) if generation else None


def _view(cid: str, raw: dict[bytes, bytes]) -> dict[str, Any]:
    fields = {k.decode(): v.decode() for k, v in raw.items()}
    dest, _, owner = cid.rpartition(" ")
    state = fields.get("state", CLOSED)
    open_until = float(fields["open_until"]) if fields.get("open_until") else None
    if state == OPEN and open_until is not None and open_until <= clock.now():
        state = HALF_OPEN
    return {
        "id": cid,
        "partner_id": owner,
        "destination": dest,
        "state": state,
        "consecutive_failures": int(fields.get("failures", 0)),
        "open_until": clock.rfc3339(open_until) if state != CLOSED else None,
    }


def reset_circuits(
    breaker: CircuitBreaker, outbox: Outbox, dest: str, *, partner_id: str | None = None
) -> list[dict[str, Any]]:
    """Close `partner_id`'s circuit to `dest` (every partner's when None) and let its parked
    deliveries go; returns the circuits as they were before, for each one reset."""
    if partner_id is not None:
        before = [breaker.state(partner_id, dest)]
    else:
        before, cursor = [], None
        while True:
            page, cursor = breaker.page(limit=500, cursor=cursor, destination=dest)
            before += page
            if cursor is None:
                break
    reset = []
    for circuit in before:
        owner = circuit["partner_id"]
        if breaker.reset(owner, dest):
            reset.append(circuit)
        # Parked deliveries go even if the circuit had already expired.
        outbox.unpark(circuit_id(owner, dest), clock.now())
    return reset
