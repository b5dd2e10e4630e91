"""Each job's timeline: the milestones of its journey, from acceptance to delivery.

Entries are `{"event", "at", ...details}`, appended in order to a Redis list
kept to the last `MAX_ENTRIES`. Anyone may record (the API, a worker, the
delivery dispatcher), inside their own transaction when they pass a pipeline.
The events are `Event`'s, the strings the API's `timeline[].event` carries.

Beside the list, a counter of every entry ever appended (`count_key`) numbers
the entries: the n-th entry of a job keeps its number `n` when older entries
are trimmed, which is what a job's event stream gives as message ids. Each
append is also published on the job's `channel`, as is each progress report.
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


def count_key(subject: str) -> str:
    """How many entries the timeline of `subject` has had, trimmed ones included."""
    return f"pb:timeline:{subject}:n"


def channel(subject: str) -> str:
    """Published to when the job `subject` records an entry or reports progress."""
    return f"pb:job:{subject}:events"


# What is published on `channel`: a new entry, or new progress.
NEWS_ENTRY = "entry"
NEWS_PROGRESS = "progress"


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
    `new` for the first entries of a new job's timeline (fewer than `MAX_ENTRIES`): nobody
    can be watching a job that is only being made, so they are not published."""
    if not subject or not entries:
        return
    if not isinstance(target, redis.client.Pipeline):
        with target.pipeline(transaction=True) as pipe:
            append(pipe, subject, *entries, new=new)
            pipe.execute()
        return
    target.rpush(key(subject), *entries)
    target.incrby(count_key(subject), len(entries))
    if new:
        if len(entries) > MAX_ENTRIES:
            target.ltrim(key(subject), -MAX_ENTRIES, -1)
        return
    target.ltrim(key(subject), -MAX_ENTRIES, -1)
    target.publish(channel(subject), NEWS_ENTRY)


def numbered(entries: list[bytes], count: bytes | int | None) -> list[tuple[int, dict[str, Any]]]:
    """The entries of one read of the list and of its `count_key`, each with its number
    (from 1). A timeline older than its counter counts from its first retained entry."""
    total = max(int(count or 0), len(entries))
    first = total - len(entries) + 1
    return [(first + index, json.loads(item)) for index, item in enumerate(entries)]


def read(client: redis.Redis, subject: str) -> list[dict[str, Any]]:
    """The timeline of `subject`, oldest first."""
    entries = cast(list[bytes], client.lrange(key(subject), 0, -1))
    return [json.loads(item) for item in entries]
