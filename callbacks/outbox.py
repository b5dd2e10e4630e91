"""The outbox: messages and their deliveries in Redis, the fair schedule of due deliveries, claims.

Any dispatcher in any process can take the next due deliveries. Taking one is
a *claim*: a fencing token written on the delivery, and a lease on the
schedule that its holder renews while it keeps the delivery. Only the holder
of the live claim can record an attempt or settle the delivery (`settle`
checks the token and the attempt count in the same script); anyone else's
outcome is discarded. A dispatcher that dies stops renewing, its leases
lapse, and its deliveries fall due again: nothing is lost, and a duplicate
happens only then (the at-least-once that receivers de-duplicate with
`webhook-id`).

The schedule is fair across owners: each owner has its own due set, and a
claim shares what it takes among every owner with due deliveries, so one
owner's backlog cannot push another owner's webhooks back.

A delivery is made in rounds: the first round starts when it is created, a
replay or a redelivery starts a new one with a fresh attempt budget. The
attempt log and `webhook-id` run across rounds.

What happens to a delivery is reported to an `Observer` whose writes join
the same atomic step (Postback records its job timeline and metrics there).
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, replace
from typing import Any, Protocol

import redis
import redis.asyncio

from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.model import Attempt, Delivery, DeliveryStatus, Message, decode_hash, destination
from postback import clock, ids, lua


class Observer(Protocol):
    """Told what happens to deliveries; each hook queues writes on `writes` (a recorder
    pipeline) that are applied atomically with the change, or not at all."""

    def on_attempt(
        self, writes: redis.client.Pipeline, delivery: Delivery, attempt: Attempt
    ) -> None:
        """An attempt was made and is being recorded."""

    def on_delivered(self, writes: redis.client.Pipeline, delivery: Delivery) -> None:
        """The receiver acknowledged the delivery."""

    def on_dead(
        self, writes: redis.client.Pipeline, delivery: Delivery, dead_letter_id: str
    ) -> None:
        """The delivery was given up and put on the dead-letter list."""

    def on_reopened(
        self, writes: redis.client.Pipeline, delivery: Delivery, *, replay: bool
    ) -> None:
        """A new round started (a dead-letter replay, or a redelivery).

        For a replay of many letters the message comes without its body and
        headers (see `Outbox.get_heads`).
        """


class NoObserver:
    """An observer that records nothing."""

    def on_attempt(self, writes: Any, delivery: Delivery, attempt: Attempt) -> None:
        pass

    def on_delivered(self, writes: Any, delivery: Delivery) -> None:
        pass

    def on_dead(self, writes: Any, delivery: Delivery, dead_letter_id: str) -> None:
        pass

    def on_reopened(self, writes: Any, delivery: Delivery, *, replay: bool) -> None:
        pass


# KEYS[1] owners' due set. ARGV: now, limit, lease until, token base, key prefix.
# Takes up to `limit` due deliveries, shared evenly among the owners that have
# some (what one owner leaves unused goes to the others), and claims each one:
# a fresh token on the delivery, its schedule entry pushed to the lease's end.
# Returns {id, token, delivery fields, message fields} for each; settled or
# vanished deliveries met on the way are dropped from the schedule.
_CLAIM = lua.Script("""
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
_RENEW = lua.Script("""
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
""")

# KEYS[1] owners' due set. ARGV: key prefix, then (id, owner, token, due at) for each.
# Gives claimed deliveries back unattempted (nothing counted, nothing logged), each due
# at its time, if the claim is still that token.
_RELEASE = lua.Script("""
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
""")

# KEYS: delivery, owner's due set, owners' due set, attempt log, dead link, 4 dead indexes.
# ARGV: 1 id, 2 token, 3 new status, 4 due again at (or ""), 5 now, 6 attempt JSON (or ""),
# 7 attempts expected before it, 8 "1" + last error (or "0": unchanged), 9 dead letter id
# (or ""), 10 owner, 11… the observer's writes.
# Applied only by the holder of the live claim, and an attempt only if none was recorded
# since the claim was read: returns 1 if applied, 0 if the outcome is stale.
_SETTLE = lua.Script(
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
"""
)

# KEYS: delivery, owner's due set, owners' due set, parked set, released generation.
# ARGV: id, token, until, generation, owner, group, now.
# Parks a claimed delivery until `group` lets it go (or `until`); if the group has let go
# of this generation already, the delivery is due now instead. 0 if the claim is stale.
_PARK = lua.Script("""
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
# Makes every parked delivery that nobody holds due now; returns how many.
_UNPARK = lua.Script("""
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

# Start a new round. KEYS: delivery, owner's due set, owners' due set, dead link,
# 4 dead indexes. ARGV: id, now, dead letter id or "", new url or "", owner, writes…
# A dead letter is taken off its lists only by the one caller that deletes its link,
# so two concurrent replays make one redelivery. Returns 1 if a round started.
_REOPEN = lua.Script(
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


# KEYS[1] owners' due set. ARGV: now, key prefix. Returns {scheduled, due now}.
_COUNTS = lua.Script("""
local scheduled, due = 0, 0
for _, owner in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[2] .. 'due:' .. owner
  scheduled = scheduled + redis.call('ZCARD', key)
  due = due + redis.call('ZCOUNT', key, '-inf', ARGV[1])
end
return {scheduled, due}
""")


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


class Outbox:
    """Store, schedule, claim and settle deliveries (blocking client; `a*` methods: asyncio)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        keys: Keys = DEFAULT_KEYS,
        observer: Observer | None = None,
        aclient: redis.asyncio.Redis | lua.Batch | None = None,
    ) -> None:
        self.redis = client
        self.aredis = aclient
        self.keys = keys
        self.observer: Observer = observer or NoObserver()

    # Writing ----------------------------------------------------------------

    def add(
        self, message: Message, url: str, *, pipeline: redis.client.Pipeline | None = None
    ) -> Delivery:
        """Store `message` and its delivery to `url`, due now (inside `pipeline` when given)."""
        delivery = Delivery(
            id=message.id, message=message, url=url, round_started_at=message.created_at
        )
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        pipe.hset(self.keys.message(message.id), mapping=message.to_hash())
        pipe.hset(self.keys.delivery(delivery.id), mapping=delivery.to_hash())
        pipe.zadd(self.keys.due(message.owner), {delivery.id: message.created_at})
        pipe.zadd(self.keys.owners_due, {message.owner: message.created_at}, lt=True)
        if pipeline is None:
            pipe.execute()
        return delivery

    def forget(self, delivery_id: str, owner: str, *, pipeline: redis.client.Pipeline) -> None:
        """Delete a delivery, its message and its attempt log (what it belongs to is removed)."""
        pipeline.delete(
            self.keys.message(delivery_id),
            self.keys.delivery(delivery_id),
            self.keys.attempts(delivery_id),
        )
        pipeline.zrem(self.keys.due(owner), delivery_id)

    # Reading ----------------------------------------------------------------

    def get(self, delivery_id: str) -> Delivery | None:
        """The stored delivery with its message, or None."""
        return self.get_many([delivery_id])[0]

    def get_many(self, delivery_ids: list[str]) -> list[Delivery | None]:
        """The deliveries of `delivery_ids` (None where gone), in two round trips."""
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hgetall(self.keys.delivery(delivery_id))
            raws = [decode_hash(raw) for raw in pipe.execute()]
        with self.redis.pipeline(transaction=False) as pipe:
            for raw in raws:
                if raw:
                    pipe.hgetall(self.keys.message(raw["message"]))
            messages = iter(pipe.execute())
        out: list[Delivery | None] = []
        for raw in raws:
            message = decode_hash(next(messages)) if raw else None
            out.append(_delivery(raw, message))
        return out

    def get_heads(self, delivery_ids: list[str]) -> list[Delivery | None]:
        """Like `get_many` without what the deliveries' attempts alone need (the attempt
        history, the message's body and headers): cheap to read by the thousand."""
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hmget(self.keys.delivery(delivery_id), _HEAD_FIELDS)
            heads = [dict(zip(_HEAD_FIELDS, _texts(raw), strict=True)) for raw in pipe.execute()]
        with self.redis.pipeline(transaction=False) as pipe:
            for head in heads:
                if head["message"]:
                    pipe.hmget(self.keys.message(head["message"]), _MESSAGE_HEAD_FIELDS)
            messages = iter(pipe.execute())
        out: list[Delivery | None] = []
        for delivery_id, head in zip(delivery_ids, heads, strict=True):
            message = _texts(next(messages)) if head["message"] else None
            if message is None or not message[0] or not head["status"]:
                out.append(None)
                continue
            owner, type_, subject, created_at = message
            out.append(
                Delivery(
                    id=delivery_id,
                    message=Message(
                        id=head["message"],
                        owner=owner,
                        body=b"",
                        type=type_,
                        subject=subject,
                        created_at=float(created_at or 0),
                    ),
                    url=head["url"],
                    status=DeliveryStatus(head["status"]),
                    dead_letter_id=head["dead_letter_id"],
                )
            )
        return out

    def counts(self) -> dict[str, int]:
        """Deliveries not yet delivered or dead: `scheduled` (all, in flight and waiting for
        a retry included) and `due` (waiting for a dispatcher now)."""
        scheduled, due = _COUNTS.run(
            self.redis, [self.keys.owners_due], [repr(clock.now()), self.keys.prefix]
        )
        return {"scheduled": int(scheduled), "due": int(due)}

    def attempts(self, delivery_id: str) -> list[dict[str, Any]]:
        """The attempt log, oldest first."""
        items = self.redis.lrange(self.keys.attempts(delivery_id), 0, -1)
        return [json.loads(item) for item in items]

    # Claims (the dispatcher's side, asyncio) ----------------------------------

    async def aclaim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """Take up to `limit` due deliveries, shared fairly among owners; each held for
        `lease_seconds` unless renewed."""
        now = clock.now()
        reply = await _CLAIM.arun(self._aio(), *self._claim_call(now, limit, lease_seconds))
        return _claimed(reply)

    def claim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """`aclaim` with the blocking client (tests, tools)."""
        now = clock.now()
        return _claimed(_CLAIM.run(self.redis, *self._claim_call(now, limit, lease_seconds)))

    def _claim_call(self, now: float, limit: int, lease_seconds: float) -> tuple[list, list]:
        base = secrets.token_hex(6)
        args = [repr(now), limit, repr(now + lease_seconds), base, self.keys.prefix]
        return [self.keys.owners_due], args

    async def arenew(self, held: list[Claimed], *, lease_seconds: float) -> set[str]:
        """Extend the leases of `held`; returns the ids whose claim is no longer ours."""
        lost: set[str] = set()
        for start in range(0, len(held), 500):
            args: list[Any] = [repr(clock.now() + lease_seconds), self.keys.prefix]
            for item in held[start : start + 500]:
                args += [item.delivery.id, item.delivery.owner, item.token]
            reply = await _RENEW.arun(self._aio(), [], args)
            lost.update(item.decode() for item in reply)
        return lost

    async def asettle(self, claimed: Claimed, settlement: Settlement) -> bool:
        """Record the attempt (if any) and move the delivery; False if the claim is stale."""
        reply = await _SETTLE.arun(self._aio(), *self._settle_call(claimed, settlement))
        return reply == 1

    def settle(self, claimed: Claimed, settlement: Settlement) -> bool:
        """`asettle` with the blocking client."""
        return _SETTLE.run(self.redis, *self._settle_call(claimed, settlement)) == 1

    def _settle_call(self, claimed: Claimed, settlement: Settlement) -> tuple[list, list]:
        delivery, keys = claimed.delivery, self.keys
        now = clock.now()
        writes = lua.recorder()
        attempt_json = ""
        if settlement.attempt is not None:
            attempt_json = json.dumps(settlement.attempt.as_json())
            self.observer.on_attempt(writes, delivery, settlement.attempt)
        dead_letter_id = ""
        if settlement.status == DeliveryStatus.DELIVERED:
            self.observer.on_delivered(writes, delivery)
        elif settlement.status == DeliveryStatus.DEAD:
            dead_letter_id = ids.new_id("dlq", at=now)
            self.observer.on_dead(writes, delivery, dead_letter_id)
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
            claimed.token,
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

    async def arelease(self, items: list[tuple[Claimed, float]]) -> None:
        """Give claimed deliveries back unattempted, each due at its time (stale ones skipped)."""
        args: list[Any] = [self.keys.prefix]
        for claimed, at in items:
            args += [claimed.delivery.id, claimed.delivery.owner, claimed.token, repr(at)]
        await _RELEASE.arun(self._aio(), [self.keys.owners_due], args)

    async def apark(self, claimed: Claimed, *, group: str, generation: float, until: float) -> bool:
        """Give a claimed delivery back, parked until `group` (a circuit) lets it go or
        `until`; if `group` let go of `generation` already, it is due now. False if stale."""
        delivery = claimed.delivery
        reply = await _PARK.arun(
            self._aio(),
            [
                self.keys.delivery(delivery.id),
                self.keys.due(delivery.owner),
                self.keys.owners_due,
                self.keys.parked(group),
                self.keys.released(group),
            ],
            [
                delivery.id,
                claimed.token,
                repr(until),
                repr(generation),
                delivery.owner,
                group,
                repr(clock.now()),
            ],
        )
        return reply != 0

    def unpark(self, group: str, generation: float) -> int:
        """Let every parked delivery of `group` go (due now), unless a dispatcher holds it."""
        return _UNPARK.run(self.redis, *self._unpark_call(group, generation))

    async def aunpark(self, group: str, generation: float) -> int:
        """`unpark` with the asyncio client."""
        return await _UNPARK.arun(self._aio(), *self._unpark_call(group, generation))

    def _unpark_call(self, group: str, generation: float) -> tuple[list, list]:
        keys = [self.keys.parked(group), self.keys.released(group), self.keys.owners_due]
        return keys, [repr(generation), repr(clock.now()), self.keys.prefix, group]

    # Rounds -------------------------------------------------------------------

    def reopen(
        self,
        delivery: Delivery,
        *,
        dead_letter_id: str | None = None,
        url: str | None = None,
        pipeline: redis.client.Pipeline | None = None,
    ) -> bool:
        """Start a new round for a dead (via its dead letter) or delivered delivery.

        Returns False when another caller got there first, or the delivery is
        neither dead on that letter nor delivered. Inside `pipeline`, the
        answer comes with the pipeline's results instead.
        """
        writes = lua.recorder()
        self.observer.on_reopened(writes, delivery, replay=dead_letter_id is not None)
        keys = self.keys
        answer = _REOPEN.run(
            pipeline if pipeline is not None else self.redis,
            [
                keys.delivery(delivery.id),
                keys.due(delivery.owner),
                keys.owners_due,
                keys.dead_link(dead_letter_id or "none"),
                *keys.dead_indexes(delivery.owner, delivery.destination),
            ],
            [
                delivery.id,
                repr(clock.now()),
                dead_letter_id or "",
                url or "",
                delivery.owner,
                destination(url) if url else "",
                *lua.flat_writes(writes),
            ],
        )
        return bool(answer)

    def _aio(self) -> redis.asyncio.Redis | lua.Batch:
        if self.aredis is None:
            raise RuntimeError("this outbox has no asyncio client")
        return self.aredis


_HEAD_FIELDS = ("message", "url", "status", "dead_letter_id")
_MESSAGE_HEAD_FIELDS = ("owner", "type", "subject", "created_at")


def _texts(values: list[bytes | None]) -> list[str]:
    return [value.decode() if value is not None else "" for value in values]


def _delivery(raw: dict[str, Any], message: dict[str, Any] | None) -> Delivery | None:
    if not raw or not message:
        return None
    return Delivery.from_hashes(raw, Message.from_hash(message))


def _pairs(flat: list[bytes]) -> dict[str, Any]:
    return decode_hash(dict(zip(flat[::2], flat[1::2], strict=True)))


def _claimed(reply: list[Any]) -> list[Claimed]:
    out = []
    for i in range(0, len(reply), 4):
        token = reply[i + 1].decode()
        delivery = _delivery(_pairs(reply[i + 2]), _pairs(reply[i + 3]))
        if delivery is None:
            continue
        out.append(Claimed(_with_claim(delivery, token), token))
    return out


def _with_claim(delivery: Delivery, token: str) -> Delivery:
    return replace(delivery, claim=token)
