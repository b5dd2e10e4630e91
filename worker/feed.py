"""Each partner's feed: every webhook event of its jobs, in order, for partners who pull.

When a job ends, its webhook (`job.completed`, `job.failed`, `job.cancelled`)
is appended to the partner's feed, a Redis stream `pb:partner:{pid}:events`,
whether or not the job has a callback URL: the same `webhook_id` and the same
body, byte for byte, that a delivery sends. The stream's entry ids are the
feed's cursors. Entries are kept as long as their jobs
(`POSTBACK_JOB_RETENTION_SECONDS`): each append trims what is older, and a
feed nobody appends to expires with its last entry. Each append is published
on the feed's `channel`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, cast

import redis

from callbacks.model import Message

# A cursor: a stream entry id, two unsigned 64-bit numbers (`is_cursor`).
CURSOR = re.compile(r"\A\d{1,20}-\d{1,20}\Z")
_MAX_PART = 2**64 - 1
LAST_CURSOR = f"{_MAX_PART}-{_MAX_PART}"


def is_cursor(text: str) -> bool:
    """Whether `text` is a cursor of a feed: `<ms>-<seq>`, each below 2**64."""
    if not CURSOR.match(text):
        return False
    return all(int(part) <= _MAX_PART for part in text.split("-"))


def key(partner_id: str) -> str:
    return f"pb:partner:{partner_id}:events"


def channel(partner_id: str) -> str:
    """Published to when the partner's feed has a new event."""
    return f"pb:partner:{partner_id}:events:new"


@dataclass(frozen=True)
class FeedEvent:
    """One event of a feed: its cursor and the webhook as it is (or would be) sent."""

    cursor: str
    webhook_id: str
    type: str
    job_id: str
    # The webhook's body: `{"type", "timestamp", "data"}` as JSON text.
    body: bytes

    def item(self) -> dict[str, Any]:
        """The event as `GET /v1/events` lists it."""
        return {"id": self.cursor, "webhook_id": self.webhook_id, **json.loads(self.body)}


def append(
    pipe: redis.client.Pipeline, message: Message, *, now: float, retention_seconds: float
) -> None:
    """Queue the writes that append the webhook `message` to its owner's feed."""
    name = key(message.owner)
    oldest_ms = max(0, math.floor((now - retention_seconds) * 1000))
    fields = {
        "webhook_id": message.id,
        "type": message.type,
        "job_id": message.subject,
        "body": message.body,
    }
    pipe.xadd(name, fields, minid=str(oldest_ms), approximate=False)  # type: ignore[arg-type]
    pipe.expire(name, max(1, math.ceil(retention_seconds)))
    pipe.publish(channel(message.owner), "new")


def page(client: redis.Redis, partner_id: str, *, after: str | None, limit: int) -> list[FeedEvent]:
    """Up to `limit` events after the cursor `after` (from the oldest kept without one)."""
    if after == LAST_CURSOR:
        return []  # nothing can come after it (and Redis refuses the range)
    start = f"({after}" if after else "-"
    entries = cast(list[Any], client.xrange(key(partner_id), start, "+", count=limit))
    return [_event(entry_id, fields) for entry_id, fields in entries]


def _event(entry_id: bytes, fields: dict[bytes, bytes]) -> FeedEvent:
    return FeedEvent(
        cursor=entry_id.decode(),
        webhook_id=fields[b"webhook_id"].decode(),
        type=fields[b"type"].decode(),
        job_id=fields.get(b"job_id", b"").decode(),
        body=fields[b"body"],
    )
