"""Parking: claimed deliveries held back while their circuit is open, let go when it closes.

A dispatcher that finds a delivery's circuit open gives the delivery back
*parked* on the circuit (its `group`) instead of spending an attempt: due at
the end of the cooldown, and sooner if the circuit closes first. Each opening
of a circuit has a generation (the time it opened); letting a group go
records the generation it let go of, so a delivery parked on an opening that
has already ended is due at once instead of waiting out a cooldown that no
longer holds. A claim takes a parked delivery off its group (see
`callbacks.claims`), and nobody's claim is touched by letting a group go.
"""

from __future__ import annotations

from typing import Any

from callbacks.claims import Claimed
from callbacks.keys import Keys
from postback import clock, lua

# KEYS: delivery, owner's due set, owners' due set, parked set, released generation.
# ARGV: id, token, until, generation, owner, group, now.
# Parks a claimed delivery until `group` lets it go (or `until`); if the group has let go
# of this generation already, the delivery is due now instead. 0 if the claim is stale.
PARK = lua.Script("""
if redis.call('HGET', KEYS[1], 'claim') ~= ARGV[2] then return 0 end
local released = tonumber(redis.call('GET', KEYS[5]) or '-1')
local at, answer = ARGV[3], 1
if released >= tonumber(ARGV[4]) then
  at, answer = ARGV[7], 2
else
  redis.call('SADD', KEYS[4], ARGV[1])
  redis.call('HSET', KEYS[1], 'parked', ARGV[6])
end
redis.call('HSET', KEYS[1], 'claim', '', 'next_attempt_at', at)
redis.call('ZADD', KEYS[2], at, ARGV[1])
redis.call('ZADD', KEYS[3], 'LT', at, ARGV[5])
return answer
""")

# KEYS: parked set, released generation, owners' due set. ARGV: generation, now, prefix, group.
# Makes every parked delivery that nobody holds due now; returns how many. The generation
# let go of is remembered for a week.
UNPARK = lua.Script("""
local current = tonumber(redis.call('GET', KEYS[2]) or '-1')
if tonumber(ARGV[1]) > current then
  redis.call('SET', KEYS[2], ARGV[1], 'EX', 604800)
end
local moved = 0
for _, id in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local dkey = ARGV[3] .. 'dlv:' .. id
  local claim, owner, parked, status = unpack(
    redis.call('HMGET', dkey, 'claim', 'owner', 'parked', 'status'))
  if owner and parked == ARGV[4] and (not claim or claim == '')
     and status ~= 'delivered' and status ~= 'dead' then
    redis.call('HSET', dkey, 'parked', '', 'next_attempt_at', ARGV[2])
    redis.call('ZADD', ARGV[3] .. 'due:' .. owner, 'XX', ARGV[2], id)
    redis.call('ZADD', KEYS[3], 'LT', ARGV[2], owner)
    moved = moved + 1
  end
end
redis.call('DEL', KEYS[1])
return moved
""")


def park_call(
    keys: Keys, item: Claimed, *, group: str, generation: float, until: float
) -> tuple[list[str], list[Any]]:
    """`PARK`'s keys and arguments: `item` parked on `group` until `until` at the latest."""
    delivery = item.delivery
    return [
        keys.delivery(delivery.id),
        keys.due(delivery.owner),
        keys.owners_due,
        keys.parked(group),
        keys.released(group),
    ], [
        delivery.id,
        item.token,
        repr(until),
        repr(generation),
        delivery.owner,
        group,
        repr(clock.now()),
    ]


def unpark_call(keys: Keys, group: str, generation: float) -> tuple[list[str], list[Any]]:
    """`UNPARK`'s keys and arguments: `group` lets go of `generation`, now."""
    return [keys.parked(group), keys.released(group), keys.owners_due], [
        repr(generation),
        repr(clock.now()),
        keys.prefix,
        group,
    ]
