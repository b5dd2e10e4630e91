"""Events waiting to be delivered, their attempt log, and the schedule of due deliveries.

Everything lives in Redis, so that any dispatcher in any process can take the
next due delivery, and a dispatcher that dies mid-attempt loses nothing: its
claim is a lease on the schedule, and the event falls due again when it lapses.

An event is delivered in rounds: the first round starts when it is created, a
replay or a redelivery starts a new one with a fresh attempt budget. The
attempt log and `webhook-id` run across rounds.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import redis

from postback import clock, ids, timeline

PREFIX = "pb:cb:"
DUE_KEY = PREFIX + "due"

# Statuses of an event's delivery (the public `delivery.status`).
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"

_DEFAULT_PORTS = {"http": 80, "https": 443}

# Take up to ARGV[2] events due by ARGV[1], pushing each one's due time to
# ARGV[3]: the claim is a lease that lapses if the claimer dies. ARGV[4] is the
# prefix of event keys: each id comes with its event's fields (empty if gone).
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
local claimed = {}
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
  claimed[#claimed + 1] = id
  claimed[#claimed + 1] = redis.call('HGETALL', ARGV[4] .. id)
end
return claimed
"""

# Start a new delivery round. KEYS: event, due, dead-letter link, 4 dead-letter indexes.
# ARGV: event id, now, dead-letter id or "", new url or "", its destination.
# A dead letter is taken off its lists only by the one caller that deletes its
# link, so two concurrent replays make one redelivery.
_REOPEN = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if ARGV[3] ~= '' then
  if redis.call('DEL', KEYS[3]) == 0 then return 0 end
  for i = 4, 7 do redis.call('ZREM', KEYS[i], ARGV[3]) end
elseif status ~= 'delivered' then
  return 0
end
redis.call('HSET', KEYS[1], 'status', 'pending', 'round_attempts', 0,
           'round_started_at', ARGV[2], 'next_attempt_at', ARGV[2],
           'dead_letter_id', '', 'dead_at', '', 'settled_at', '')
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[1], 'url', ARGV[4], 'destination', ARGV[5])
end
redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1])
return 1
"""


def destination(url: str) -> str:
    """`scheme://host:port` of a URL: the unit of connection limits and circuits."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme, 0)
    except ValueError:
        port = 0
    return f"{scheme}://{host}:{port}"


def event_key(event_id: str) -> str:
    return f"{PREFIX}event:{event_id}"


def attempts_key(event_id: str) -> str:
    return f"{PREFIX}event:{event_id}:attempts"


def deferred_key(dest: str) -> str:
    """Events waiting for the circuit of `dest` to close."""
    return f"{PREFIX}deferred:{dest}"


def dead_letter_key(dead_letter_id: str) -> str:
    """Links a dead letter to its event while it is on the dead list."""
    return f"{PREFIX}dead:{dead_letter_id}"


def dead_indexes(owner: str, dest: str) -> list[str]:
    """The four lists a dead letter is on: all, by owner, by destination, by both."""
    base = PREFIX + "deadlist"
    return [
        base,
        f"{base}:owner:{owner}",
        f"{base}:dest:{dest}",
        f"{base}:owner:{owner}:dest:{dest}",
    ]


@dataclass(frozen=True, kw_only=True)
class Event:
    """One webhook message: its body is fixed; every attempt signs it afresh."""

    id: str
    owner: str
    url: str
    body: bytes
    subject: str = ""
    created_at: float = field(default_factory=clock.now)
    # Sent with every attempt besides the signature headers (empty values are left out).
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Attempt:
    """What one HTTP attempt did."""

    attempt: int
    at: float
    status_code: int | None
    duration_ms: int
    error: str | None
    outcome: str

    def as_json(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "at": clock.rfc3339(self.at),
            "status_code": self.status_code,
            "duration_ms": self.duration_ms,
            "error": self.error,
            "outcome": self.outcome,
        }


_TEXT = ("id", "owner", "subject", "url", "destination", "status", "last_error", "dead_letter_id")
_TIMES = (
    "created_at",
    "round_started_at",
    "last_attempt_at",
    "next_attempt_at",
    "settled_at",
    "dead_at",
)


class Outbox:
    """Store, schedule, claim and settle events."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)
        self._reopen = client.register_script(_REOPEN)

    def add(self, event: Event, *, pipeline: redis.client.Pipeline | None = None) -> None:
        """Store `event` and make it due now (inside `pipeline` when given)."""
        pipe = pipeline if pipeline is not None else self.redis.pipeline()
        pipe.hset(
            event_key(event.id),
            mapping={
                "id": event.id,
                "owner": event.owner,
                "subject": event.subject,
                "url": event.url,
                "destination": destination(event.url),
                "body": event.body,
                "created_at": repr(event.created_at),
                "round_started_at": repr(event.created_at),
                "status": PENDING,
                "attempts": 0,
                "round_attempts": 0,
                "headers": json.dumps({k: v for k, v in event.headers.items() if v}),
            },
        )
        pipe.zadd(DUE_KEY, {event.id: event.created_at})
        if pipeline is None:
            pipe.execute()

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored event as a dict (body as bytes), or None."""
        return self.decode(self.redis.hgetall(event_key(event_id)))

    @staticmethod
    def decode(raw: dict[bytes, bytes]) -> dict[str, Any] | None:
        """An event hash as Redis returns it → the event as `get` gives it (None if empty)."""
        if not raw:
            return None
        record = {k.decode(): v for k, v in raw.items()}
        for name in _TEXT:
            record[name] = record[name].decode() if record.get(name) else None
        record["headers"] = json.loads(record["headers"]) if record.get("headers") else {}
        for name in ("attempts", "round_attempts"):
            record[name] = int(record.get(name) or 0)
        for name in _TIMES:
            record[name] = float(record[name]) if record.get(name) else None
        return record

    def delivery_status(self, event_id: str) -> dict[str, Any] | None:
        """The public `delivery` object of an event."""
        return self.delivery_of(self.get(event_id))

    @staticmethod
    def delivery_of(record: dict[str, Any] | None) -> dict[str, Any] | None:
        """The public `delivery` object of a stored event (None for None)."""
        if record is None:
            return None
        return {
            "status": record["status"],
            "attempts": record["attempts"],
            "last_attempt_at": clock.rfc3339(record["last_attempt_at"]),
            "next_attempt_at": clock.rfc3339(record["next_attempt_at"]),
        }

    def attempts(self, event_id: str) -> list[dict[str, Any]]:
        """The attempt log, oldest first."""
        return [json.loads(item) for item in self.redis.lrange(attempts_key(event_id), 0, -1)]

    def claim(self, *, limit: int, lease_seconds: float) -> list[tuple[str, dict[str, Any] | None]]:
        """Take up to `limit` due events; each stays ours for `lease_seconds`.

        Returns (id, the event as `get` gives it) for each, read with the claim.
        """
        now = clock.now()
        reply = self._claim(
            keys=[DUE_KEY], args=[repr(now), limit, repr(now + lease_seconds), event_key("")]
        )
        return [
            (event_id.decode(), self.decode(dict(zip(flat[::2], flat[1::2], strict=True))))
            for event_id, flat in zip(reply[::2], reply[1::2], strict=True)
        ]

    def forget(self, event_id: str, *, pipeline: redis.client.Pipeline) -> None:
        """Delete an event and its attempt log (its job is being removed)."""
        pipeline.delete(event_key(event_id), attempts_key(event_id))
        pipeline.zrem(DUE_KEY, event_id)

    def defer(self, event_id: str, until: float, *, circuit_of: str | None = None) -> None:
        """Push a claimed event to `until` without an attempt (not counted, not logged).

        With `circuit_of` (a destination), the event is also noted as waiting on
        that destination's circuit, which makes it due at once when the circuit closes.
        """
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zadd(DUE_KEY, {event_id: until}, xx=True)
            pipe.hset(event_key(event_id), "next_attempt_at", repr(until))
            if circuit_of is not None:
                pipe.sadd(deferred_key(circuit_of), event_id)
            pipe.execute()

    def settle(
        self,
        record: dict[str, Any],
        attempt: Attempt | None,
        *,
        status: str,
        next_at: float | None = None,
        error: str | None = None,
        also: Callable[[redis.client.Pipeline], None] | None = None,
    ) -> str | None:
        """Record `attempt` (if any) and move the event to `status`.

        RETRYING makes it due at `next_at`; DEAD puts it on the dead list and
        returns the dead letter's id. `also(pipeline)` adds the caller's own
        writes to the same round trip.
        """
        event_id = record["id"]
        now = clock.now()
        fields: dict[str, Any] = {"status": status, "next_attempt_at": ""}
        if attempt is not None:
            fields.update(
                attempts=record["attempts"] + 1,
                round_attempts=record["round_attempts"] + 1,
                last_attempt_at=repr(attempt.at),
                last_error=attempt.error or "",
            )
        if error is not None:
            fields["last_error"] = error
        dead_letter_id = None
        with self.redis.pipeline(transaction=True) as pipe:
            if status == RETRYING:
                fields["next_attempt_at"] = repr(next_at)
                pipe.zadd(DUE_KEY, {event_id: next_at})
            else:
                fields["settled_at"] = repr(now)
                pipe.zrem(DUE_KEY, event_id)
            if status == DEAD:
                dead_letter_id = ids.new_id("dlq", at=now)
                fields.update(dead_letter_id=dead_letter_id, dead_at=repr(now))
                pipe.set(dead_letter_key(dead_letter_id), event_id)
                for index in dead_indexes(record["owner"], record["destination"]):
                    pipe.zadd(index, {dead_letter_id: 0})
            pipe.hset(event_key(event_id), mapping=fields)
            if attempt is not None:
                pipe.rpush(attempts_key(event_id), json.dumps(attempt.as_json()))
                timeline.record(
                    pipe,
                    record["subject"] or "",
                    "delivery_attempt",
                    attempt=attempt.attempt,
                    status_code=attempt.status_code,
                    duration_ms=attempt.duration_ms,
                    outcome=attempt.outcome,
                )
            if status == DELIVERED:
                timeline.record(pipe, record["subject"] or "", "delivered", webhook_id=event_id)
            elif status == DEAD:
                timeline.record(
                    pipe,
                    record["subject"] or "",
                    "dead_lettered",
                    webhook_id=event_id,
                    dead_letter_id=dead_letter_id,
                )
            if also is not None:
                also(pipe)
            pipe.execute()
        return dead_letter_id

    def reopen(
        self,
        record: dict[str, Any],
        *,
        dead_letter_id: str | None = None,
        url: str | None = None,
        pipeline: redis.client.Pipeline | None = None,
    ) -> bool:
        """Start a new round for a dead (via its dead letter) or delivered event.

        Returns False when another caller got there first, or the event is
        neither dead on that letter nor delivered. Inside `pipeline`, the
        answer comes with the pipeline's results instead.
        """
        dest = destination(url) if url else ""
        indexes = dead_indexes(record["owner"], record["destination"])
        answer = self._reopen(
            keys=[
                event_key(record["id"]),
                DUE_KEY,
                dead_letter_key(dead_letter_id or "none"),
                *indexes,
            ],
            args=[record["id"], repr(clock.now()), dead_letter_id or "", url or "", dest],
            client=pipeline if pipeline is not None else self.redis,
        )
        if pipeline is None and answer:
            self.note_reopened(self.redis, record, replay=dead_letter_id is not None)
        return bool(answer)

    @staticmethod
    def note_reopened(
        target: redis.Redis | redis.client.Pipeline, record: dict[str, Any], *, replay: bool
    ) -> None:
        """Put a replay (or a redelivery) on the job's timeline."""
        event = "replayed" if replay else "redelivery"
        timeline.record(target, record.get("subject") or "", event, webhook_id=record["id"])
