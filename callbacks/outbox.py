"""Events waiting to be delivered, their attempt log, and the schedule of due deliveries.

Everything lives in Redis, so that any dispatcher in any process can take the
next due delivery, and a dispatcher that dies mid-attempt loses nothing: its
claim is a lease on the schedule, and the event falls due again when it lapses.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis

from postback import clock

PREFIX = "pb:cb:"
DUE_KEY = PREFIX + "due"

# Statuses of an event's delivery (the public `delivery.status`).
PENDING = "pending"
RETRYING = "retrying"
DELIVERED = "delivered"
DEAD = "dead"

# Take up to ARGV[2] events due by ARGV[1], pushing each one's due time to
# ARGV[3]: the claim is a lease that lapses if the claimer dies.
_CLAIM = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[3], id)
end
return ids
"""


@dataclass(frozen=True, kw_only=True)
class Event:
    """One webhook message: its body is fixed; every attempt signs it afresh."""

    id: str
    owner: str
    url: str
    body: bytes
    subject: str = ""
    created_at: float = field(default_factory=clock.now)


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


def event_key(event_id: str) -> str:
    return f"{PREFIX}event:{event_id}"


def attempts_key(event_id: str) -> str:
    return f"{PREFIX}event:{event_id}:attempts"


class Outbox:
    """Store, schedule, claim and settle events."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self._claim = client.register_script(_CLAIM)

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
                "body": event.body,
                "created_at": repr(event.created_at),
                "status": PENDING,
                "attempts": 0,
            },
        )
        pipe.zadd(DUE_KEY, {event.id: event.created_at})
        if pipeline is None:
            pipe.execute()

    def get(self, event_id: str) -> dict[str, Any] | None:
        """The stored event as a dict (body as bytes), or None."""
        raw = self.redis.hgetall(event_key(event_id))
        if not raw:
            return None
        record = {k.decode(): v for k, v in raw.items()}
        for name in ("id", "owner", "subject", "url", "status", "last_error"):
            if name in record:
                record[name] = record[name].decode()
        record["attempts"] = int(record.get("attempts", 0))
        for name in ("created_at", "last_attempt_at", "next_attempt_at", "settled_at"):
            record[name] = float(record[name]) if record.get(name) else None
        return record

    def delivery_status(self, event_id: str) -> dict[str, Any] | None:
        """The public `delivery` object of an event."""
        record = self.get(event_id)
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

    def claim(self, *, limit: int, lease_seconds: float) -> list[str]:
        """Take up to `limit` due events; each stays ours for `lease_seconds`."""
        now = clock.now()
        ids = self._claim(keys=[DUE_KEY], args=[repr(now), limit, repr(now + lease_seconds)])
        return [item.decode() for item in ids]

    def settle(
        self, event_id: str, attempt: Attempt, *, status: str, next_at: float | None
    ) -> None:
        """Record `attempt` and move the event to `status`, due again at `next_at` if retrying."""
        fields: dict[str, Any] = {
            "status": status,
            "attempts": attempt.attempt,
            "last_attempt_at": repr(attempt.at),
            "next_attempt_at": repr(next_at) if next_at is not None else "",
            "last_error": attempt.error or "",
        }
        if status in (DELIVERED, DEAD):
            fields["settled_at"] = repr(clock.now())
        pipe = self.redis.pipeline()
        pipe.hset(event_key(event_id), mapping=fields)
        pipe.rpush(attempts_key(event_id), json.dumps(attempt.as_json()))
        if next_at is None:
            pipe.zrem(DUE_KEY, event_id)
        else:
            pipe.zadd(DUE_KEY, {event_id: next_at})
        pipe.execute()
