"""Rounds: a delivery starts again, off the dead-letter list (a replay) or after it was delivered.

A delivery is made in rounds: the first round starts when it is created, a
replay or a redelivery starts a new one with a fresh attempt budget. The
attempt log and `webhook-id` run across rounds. A dead delivery got its
dead-letter id, link and four list entries when it was settled
(`callbacks.claims`); a replay takes it off them here, in the same step that
makes it due again.
"""

from __future__ import annotations

from typing import Any

from callbacks.keys import Keys
from callbacks.model import Delivery, destination
from callbacks.observer import Observer
from postback import clock, lua

# Start a new round. KEYS: delivery, owner's due set, owners' due set, dead link,
# 4 dead indexes. ARGV: id, now, dead letter id or "", new url or "", owner, writes…
# A dead letter is taken off its lists only by the one caller that deletes its link,
# so two concurrent replays make one redelivery. Returns 1 if a round started.
REOPEN = lua.Script(
    lua.WRITES
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if ARGV[3] ~= '' then
  if redis.call('DEL', KEYS[4]) == 0 then return 0 end
  for i = 5, 8 do redis.call('ZREM', KEYS[i], ARGV[3]) end
elseif status ~= 'delivered' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'round_attempts', 0, 'claim', '',
           'round_started_at', ARGV[2], 'next_attempt_at', ARGV[2],
           'dead_letter_id', '', 'dead_at', '', 'settled_at', '')
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'url', ARGV[4], 'destination', ARGV[6])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
redis.call('ZADD', KEYS[3], 'LT', ARGV[2], ARGV[5])
apply_writes(7)
return 1
"""
)


def reopen_call(
    keys: Keys,
    observer: Observer,
    delivery: Delivery,
    *,
    dead_letter_id: str | None,
    url: str | None,
) -> tuple[list[str], list[Any]]:
    """`REOPEN`'s keys and arguments, the observer's writes for the new round among them."""
    writes = lua.recorder()
    observer.on_reopened(writes, delivery, replay=dead_letter_id is not None)
    return [
        keys.delivery(delivery.id),
        keys.due(delivery.owner),
        keys.owners_due,
        keys.dead_link(dead_letter_id or "none"),
        *keys.dead_indexes(delivery.owner, delivery.destination),
    ], [
        delivery.id,
        repr(clock.now()),
        dead_letter_id or "",
        url or "",
        delivery.owner,
        destination(url) if url else "",
        *lua.flat_writes(writes),
    ]
