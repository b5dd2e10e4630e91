"""The outbox: messages and their deliveries in Redis, the fair schedule of due deliveries, claims.

`Outbox` is the one door to this state. It stores messages and deliveries
and reads them back; every change to a stored delivery after that is one Lua
script, each kept beside the layout of its keys and arguments in the module
of its idea:

- `callbacks.claims`: take due deliveries fairly across owners, keep them
  under a lease, give them back, and settle them, fenced by the claim's token;
- `callbacks.parking`: hold a delivery back while its circuit is open, and
  let it go when the circuit closes;
- `callbacks.rounds`: start a delivery again (a replay or a redelivery).

What happens to a delivery is reported to an `Observer` (`callbacks.observer`)
whose writes join the same atomic step (Postback records its job timeline and
metrics there).
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis
import redis.asyncio

from callbacks import claims, parking, rounds
from callbacks.claims import Claimed, Settlement
from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.model import (
    Delivery,
    DeliveryStatus,
    Message,
    decode_hash,
    destination,
    stored_delivery,
)
from callbacks.observer import NoObserver, Observer
from postback import clock, lua

# Re-exported: callers name these from here.
__all__ = ["Claimed", "NoObserver", "Observer", "Outbox", "Settlement", "destination"]

# KEYS[1] owners' due set. ARGV: now, key prefix. Returns {scheduled, due now}.
_COUNTS = lua.Script(
    """
local scheduled, due = 0, 0
for _, owner in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local key = ARGV[2] .. 'due:' .. owner
  scheduled = scheduled + redis.call('ZCARD', key)
  due = due + redis.call('ZCOUNT', key, '-inf', ARGV[1])
end
return {scheduled, due}
""",
    repeatable=True,
)

# What `get_heads` reads of a delivery and of its message.
_HEAD_FIELDS = ["message", "url", "status", "dead_letter_id"]
_MESSAGE_HEAD_FIELDS = ["owner", "type", "subject", "created_at"]


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
        return [stored_delivery(raw, decode_hash(next(messages)) if raw else None) for raw in raws]

    def get_heads(self, delivery_ids: list[str]) -> list[Delivery | None]:
        """Like `get_many` without what the deliveries' attempts alone need (the attempt
        history, the message's body and headers): cheap to read by the thousand."""
        with self.redis.pipeline(transaction=False) as pipe:
            for delivery_id in delivery_ids:
                pipe.hmget(self.keys.delivery(delivery_id), _HEAD_FIELDS)
            heads = [_texts(raw) for raw in pipe.execute()]
        with self.redis.pipeline(transaction=False) as pipe:
            for message_id, *_ in heads:
                if message_id:
                    pipe.hmget(self.keys.message(message_id), _MESSAGE_HEAD_FIELDS)
            messages = iter(pipe.execute())
        out: list[Delivery | None] = []
        for delivery_id, (message_id, url, status, dead_letter_id) in zip(
            delivery_ids, heads, strict=True
        ):
            message = _texts(next(messages)) if message_id else None
            if message is None or not message[0] or not status:
                out.append(None)
                continue
            owner, type_, subject, created_at = message
            out.append(
                Delivery(
                    id=delivery_id,
                    message=Message(
                        id=message_id,
                        owner=owner,
                        body=b"",
                        type=type_,
                        subject=subject,
                        created_at=float(created_at or 0),
                    ),
                    url=url,
                    status=DeliveryStatus(status),
                    dead_letter_id=dead_letter_id,
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
        """The attempt log, oldest first, each entry as `Attempt.as_json` wrote it."""
        items = cast("list[bytes]", self.redis.lrange(self.keys.attempts(delivery_id), 0, -1))
        return [json.loads(item) for item in items]

    # Claims (the dispatcher's side, asyncio; see `callbacks.claims`) -----------

    async def aclaim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """Take up to `limit` due deliveries, shared fairly among owners; each held for
        `lease_seconds` unless renewed."""
        call = claims.claim_call(self.keys, limit=limit, lease_seconds=lease_seconds)
        return claims.claimed(await claims.CLAIM.arun(self._aio(), *call))

    def claim(self, *, limit: int, lease_seconds: float) -> list[Claimed]:
        """`aclaim` with the blocking client (tests, tools)."""
        call = claims.claim_call(self.keys, limit=limit, lease_seconds=lease_seconds)
        return claims.claimed(claims.CLAIM.run(self.redis, *call))

    async def arenew(self, held: list[Claimed], *, lease_seconds: float) -> set[str]:
        """Extend the leases of `held`; returns the ids whose claim is no longer ours."""
        lost: set[str] = set()
        for call in claims.renew_calls(self.keys, held, lease_seconds=lease_seconds):
            reply = await claims.RENEW.arun(self._aio(), *call)
            lost.update(item.decode() for item in reply)
        return lost

    async def asettle(self, claimed: Claimed, settlement: Settlement) -> bool:
        """Record the attempt (if any) and move the delivery; False if the claim is stale."""
        call = claims.settle_call(self.keys, self.observer, claimed, settlement)
        return await claims.SETTLE.arun(self._aio(), *call) == 1

    def settle(self, claimed: Claimed, settlement: Settlement) -> bool:
        """`asettle` with the blocking client."""
        call = claims.settle_call(self.keys, self.observer, claimed, settlement)
        return claims.SETTLE.run(self.redis, *call) == 1

    async def arelease(self, items: list[tuple[Claimed, float]]) -> None:
        """Give claimed deliveries back unattempted, each due at its time (stale ones skipped)."""
        await claims.RELEASE.arun(self._aio(), *claims.release_call(self.keys, items))

    # Parking (see `callbacks.parking`) ----------------------------------------

    async def apark(self, claimed: Claimed, *, group: str, generation: float, until: float) -> bool:
        """Give a claimed delivery back, parked until `group` (a circuit) lets it go or
        `until`; if `group` let go of `generation` already, it is due now. False if stale."""
        call = parking.park_call(
            self.keys, claimed, group=group, generation=generation, until=until
        )
        return await parking.PARK.arun(self._aio(), *call) != 0

    def unpark(self, group: str, generation: float) -> int:
        """Let every parked delivery of `group` go (due now), unless a dispatcher holds it."""
        call = parking.unpark_call(self.keys, group, generation)
        return int(parking.UNPARK.run(self.redis, *call))

    async def aunpark(self, group: str, generation: float) -> int:
        """`unpark` with the asyncio client."""
        call = parking.unpark_call(self.keys, group, generation)
        return int(await parking.UNPARK.arun(self._aio(), *call))

    # Rounds (see `callbacks.rounds`) -------------------------------------------

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
        call = rounds.reopen_call(
            self.keys, self.observer, delivery, dead_letter_id=dead_letter_id, url=url
        )
        return bool(rounds.REOPEN.run(pipeline if pipeline is not None else self.redis, *call))

    def _aio(self) -> redis.asyncio.Redis | lua.Batch:
        if self.aredis is None:
            raise RuntimeError("this outbox has no asyncio client")
        return self.aredis


def _texts(values: list[bytes | None]) -> list[str]:
    return [value.decode() if value is not None else "" for value in values]
