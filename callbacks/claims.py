"""Claims: how a dispatcher takes due deliveries, keeps them, and lets them go, fenced by a token.

Any dispatcher in any process can take the next due deliveries. Taking one is
a *claim*: a fencing token written on the delivery, and a lease on the
schedule that its holder renews while it keeps the delivery. Only the holder
of the live claim can record an attempt or settle the delivery (`SETTLE`
checks the token and the attempt count in the same script); anyone else's
outcome is discarded. A dispatcher that dies stops renewing, its leases
lapse, and its deliveries fall due again: nothing is lost, and a duplicate
happens only then (the at-least-once that receivers de-duplicate with
`webhook-id`).

A claim is fair across owners: each owner has its own due set, and a claim
shares what it takes among every owner with due deliveries, so one owner's
backlog cannot push another owner's webhooks back.

Each script here comes with the function that lays out its keys and
arguments (`*_call`), so the two sides of that contract are read together;
`Outbox` runs them.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from callbacks.keys import Keys
from callbacks.model import Attempt, Delivery, DeliveryStatus, decode_hash, stored_delivery
from callbacks.observer import Observer
from postback import clock, ids, lua

# How many held deliveries one renewal or release call carries.
CALL_BATCH = 500

# KEYS[1] owners' due set. ARGV: now, limit, lease until, token base, key prefix.
# Takes up to `limit` due deliveries, shared evenly among the owners that have
# some (what one owner leaves unused goes to the others), and claims each one:
# a fresh token on the delivery, its schedule entry pushed to the lease's end.
# Returns {id, token, delivery fields, message fields} for each; settled or
# vanished deliveries met on the way are dropped from the schedule.
CLAIM = lua.Script("""
local now, limit, lease, base, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4], ARGV[5]
local owners = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, limit)
local out, taken, n = {}, 0, 0
local active = owners
while taken < limit and #active > 0 do
  local quota = math.max(1, math.floor((limit - taken) / #active))
  local full = {}
  for _, owner in ipairs(active) do
    if taken >= limit then break end
    local due = prefix .. 'due:' .. owner
    local want = math.min(quota, limit - taken)
    local found = redis.call('ZRANGEBYSCORE', due, '-inf', now, 'LIMIT', 0, want)
    for _, id in ipairs(found) do
      local dkey = prefix .. 'dlv:' .. id
      local status, message, parked =
        unpack(redis.call('HMGET', dkey, 'status', 'message', 'parked'))
      local msg = {}
      if message then msg = redis.call('HGETALL', prefix .. 'msg:' .. message) end
      if not status or status == 'delivered' or status == 'dead' or #msg == 0 then
        redis.call('ZREM', due, id)
      else
        n = n + 1
        local token = base .. '.' .. n
        if parked and parked ~= '' then
          redis.call('SREM', prefix .. 'parked:' .. parked, id)
        end
        redis.call('HSET', dkey, 'claim', token, 'parked', '')
        redis.call('ZADD', due, lease, id)
        out[#out + 1] = id
        out[#out + 1] = token
        out[#out + 1] = redis.call('HGETALL', dkey)
        out[#out + 1] = msg
        taken = taken + 1
      end
    end
    if #found == want then full[#full + 1] = owner end
    local first = redis.call('ZRANGE', due, 0, 0, 'WITHSCORES')
    if #first == 0 then
      redis.call('ZREM', KEYS[1], owner)
    else
      redis.call('ZADD', KEYS[1], first[2], owner)
    end
  end
  active = full
end
return out
""")

# ARGV: lease until, key prefix, then (id, owner, token) for each held delivery.
# Extends the lease of each delivery whose claim is still that token; returns the others' ids.
RENEW = lua.Script(
    """
local lost = {}
for i = 3, #ARGV, 3 do
  local id, owner, token = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  if redis.call('HGET', ARGV[2] .. 'dlv:' .. id, 'claim') == token then
    redis.call('ZADD', ARGV[2] .. 'due:' .. owner, 'XX', ARGV[1], id)
  else
    lost[#lost + 1] = id
  end
end
return lost
""",
    repeatable=True,
)

# KEYS[1] owners' due set. ARGV: key prefix, then (id, owner, token, due at) for each.
# Gives claimed deliveries back unattempted (nothing counted, nothing logged), each due
# at its time, if the claim is still that token.
RELEASE = lua.Script(
    """
for i = 2, #ARGV, 4 do
  local id, owner, token, at = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local dkey = ARGV[1] .. 'dlv:' .. id
  if redis.call('HGET', dkey, 'claim') == token then
    redis.call('HSET', dkey, 'claim', '', 'next_attempt_at', at)
    redis.call('ZADD', ARGV[1] .. 'due:' .. owner, at, id)
    redis.call('ZADD', KEYS[1], 'LT', at, owner)
  end
end
return 1
""",
    repeatable=True,
)

# KEYS: delivery, owner's due set, owners' due set, attempt log, dead link, 4 dead indexes.
# ARGV: 1 id, 2 token, 3 new status, 4 due again at (or ""), 5 now, 6 attempt JSON (or ""),
# 7 attempts expected before it, 8 "1" + last error (or "0": unchanged), 9 dead letter id
# (or ""), 10 owner, 11… the observer's writes.
# Applied only by the holder of the live claim, and an attempt only if none was recorded
# since the claim was read: returns 1 if applied, 0 if the outcome is stale.
SETTLE = lua.Script(
    lua.WRITES
    + """
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
if ARGV[6] ~= '' then
  if redis.call('HGET', KEYS[1], 'attempts') ~= ARGV[7] then return 0 end
  redis.call('HINCRBY', KEYS[1], 'attempts', 1)
  redis.call('HINCRBY', KEYS[1], 'round_attempts', 1)
  redis.call('HSET', KEYS[1], 'last_attempt_at', ARGV[5])
  redis.call('RPUSH', KEYS[4], ARGV[6])
end
if string.sub(ARGV[8], 1, 1) == '1' then
  redis.call('HSET', KEYS[1], 'last_error', string.sub(ARGV[8], 2))
end
redis.call('HSET', KEYS[1], 'status', ARGV[3], 'claim', '')
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'next_attempt_at', ARGV[4])
  redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
  redis.call('ZADD', KEYS[3], 'LT', ARGV[4], ARGV[10])
else
  redis.call('HSET', KEYS[1], 'next_attempt_at', '', 'settled_at', ARGV[5])
  redis.call('ZREM', KEYS[2], ARGV[1])
end
if ARGV[9] ~= '' then
  redis.call('HSET', KEYS[1], 'dead_letter_id', ARGV[9], 'dead_at', ARGV[5])
  redis.call('SET', KEYS[5], ARGV[1])
  for i = 6, 9 do redis.call('ZADD', KEYS[i], 0, ARGV[9]) end
end
local failed = apply_writes(11)
if failed then return failed end
return 1
""",
    repeatable=True,
)


@dataclass(frozen=True)
class Claimed:
    """A delivery taken by a claim, with the claim's token."""

    delivery: Delivery
    token: str


@dataclass(frozen=True, kw_only=True)
class Settlement:
    """How a claimed delivery leaves its holder."""

    status: DeliveryStatus
    # Due again at this time (RETRYING, or a delivery given back unattempted).
    next_at: float | None = None
    attempt: Attempt | None = None
    # Replaces the delivery's last error when not None.
    error: str | None = None


def claim_call(keys: Keys, *, limit: int, lease_seconds: float) -> tuple[list[str], list[Any]]:
    """`CLAIM`'s keys and arguments: up to `limit` deliveries, each held `lease_seconds`."""
    now = clock.now()
    base = secrets.token_hex(6)
    args = [repr(now), limit, repr(now + lease_seconds), base, keys.prefix]
    return [keys.owners_due], args


def claimed(reply: list[Any]) -> list[Claimed]:
    """The deliveries a `CLAIM` reply took, each with its token."""
    out = []
    for i in range(0, len(reply), 4):
        token = reply[i + 1].decode()
        delivery = stored_delivery(_pairs(reply[i + 2]), _pairs(reply[i + 3]))
        if delivery is None:
            continue
        out.append(Claimed(replace(delivery, claim=token), token))
    return out


def renew_calls(
    keys: Keys, held: list[Claimed], *, lease_seconds: float
) -> Iterator[tuple[list[str], list[Any]]]:
    """`RENEW`'s keys and arguments for `held`, a batch at a time; each batch's lease is
    reckoned from when it is taken."""
    for start in range(0, len(held), CALL_BATCH):
        args: list[Any] = [repr(clock.now() + lease_seconds), keys.prefix]
        for item in held[start : start + CALL_BATCH]:
            args += [item.delivery.id, item.delivery.owner, item.token]
        yield [], args


def release_call(keys: Keys, items: list[tuple[Claimed, float]]) -> tuple[list[str], list[Any]]:
    """`RELEASE`'s keys and arguments: each claimed delivery due again at its time."""
    args: list[Any] = [keys.prefix]
    for item, at in items:
        args += [item.delivery.id, item.delivery.owner, item.token, repr(at)]
    return [keys.owners_due], args


def settle_call(
    keys: Keys, observer: Observer, item: Claimed, settlement: Settlement
) -> tuple[list[str], list[Any]]:
    """`SETTLE`'s keys and arguments, the observer's writes for the outcome among them
    (a delivery that dies gets its dead-letter id here)."""
    delivery = item.delivery
    now = clock.now()
    writes = lua.recorder()
    attempt_json = ""
    if settlement.attempt is not None:
        attempt_json = json.dumps(settlement.attempt.as_json())
        observer.on_attempt(writes, delivery, settlement.attempt)
    dead_letter_id = ""
    if settlement.status == DeliveryStatus.DELIVERED:
        observer.on_delivered(writes, delivery)
    elif settlement.status == DeliveryStatus.DEAD:
        dead_letter_id = ids.new_id("dlq", at=now)
        observer.on_dead(writes, delivery, dead_letter_id)
    error = settlement.error
    if error is None and settlement.attempt is not None:
        error = settlement.attempt.error or ""
    settled = settlement.status.settled
    return [
        keys.delivery(delivery.id),
        keys.due(delivery.owner),
        keys.owners_due,
        keys.attempts(delivery.id),
        keys.dead_link(dead_letter_id or "none"),
        *keys.dead_indexes(delivery.owner, delivery.destination),
    ], [
        delivery.id,
        item.token,
        str(settlement.status),
        "" if settled or settlement.next_at is None else repr(settlement.next_at),
        repr(now),
        attempt_json,
        delivery.attempts,
        "0" if error is None else "1" + error,
        dead_letter_id,
        delivery.owner,
        *lua.flat_writes(writes),
    ]


def _pairs(flat: list[bytes]) -> dict[str, Any]:
    return decode_hash(dict(zip(flat[::2], flat[1::2], strict=True)))
