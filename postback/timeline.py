"""Each job's timeline: the milestones of its journey, from acceptance to delivery.

Entries are `{"event", "at", ...details}`, appended in order to a Redis list
kept to the last `MAX_ENTRIES`. Anyone may record (the API, a worker, the
delivery dispatcher), inside their own transaction when they pass a pipeline.
The events are `Event`'s, the strings the API's `timeline[].event` carries.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, cast

import redis

from postback import clock

MAX_ENTRIES = 100


class Event(StrEnum):
    ACCEPTED = "accepted"
    ENQUEUED = "enqueued"
    STARTED = "started"
    FINISHED = "finished"
    RETRY_SCHEDULED = "retry_scheduled"
    # Its worker was lost and it was queued again.
    RECOVERED = "recovered"
    CANCEL_REQUESTED = "cancel_requested"
    CANCELLED = "cancelled"
    DELIVERY_ATTEMPT = "delivery_attempt"
    DELIVERED = "delivered"
    DEAD_LETTERED = "dead_lettered"
    REPLAYED = "replayed"
    REDELIVERY = "redelivery"


def key(subject: str) -> str:
    return f"pb:timeline:{subject}"


def record(
    target: redis.Redis | redis.client.Pipeline,
    subject: str,
    event: Event,
    *,
    at: float | None = None,
    **details: Any,
) -> None:
    """Append `event` (at `at`, default now) to the timeline of `subject`, a job id."""
    append(target, subject, entry(event, at=at, **details))


def entry(event: Event, *, at: float | None = None, **details: Any) -> str:
    """The stored form of `event` (at `at`, default now), for `append`."""
    fields = {
        "event": str(event),
        "at": clock.rfc3339(clock.now() if at is None else at),
        **details,
    }
    return json.dumps(fields, separators=(",", ":"))


def append(
    target: redis.Redis | redis.client.Pipeline, subject: str, *entries: str, new: bool = False
) -> None:
    """Append `entries` (from `entry`), in order, to the timeline of `subject`, a job id;
    `new` for the first entries of a new job's timeline (fewer than `MAX_ENTRIES`)."""
    if not subject or not entries:
        return
    target.rpush(key(subject), *entries)
    if not new or len(entries) > MAX_ENTRIES:
        target.ltrim(key(subject), -MAX_ENTRIES, -1)


def read(client: redis.Redis, subject: str) -> list[dict[str, Any]]:
    """The timeline of `subject`, oldest first."""
    entries = cast(list[bytes], client.lrange(key(subject), 0, -1))
    return [json.loads(item) for item in entries]
