"""The dead-letter store: events given up on, listed by time and filters, replayed on demand.

A dead letter is an event whose delivery is `dead`, put on four sorted sets (all,
by owner, by destination, by both) under an id that sorts by the time it died.
Listing is a range query on the narrowest set, so a page costs the same however
large the store grows. Dead letters are kept until replayed, deleted, or
removed by the retention setting, never silently.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from callbacks.outbox import DEAD, Outbox, dead_indexes, dead_letter_key, event_key
from postback import clock, ids

log = logging.getLogger(__name__)

PAGE_SIZE = 500


@dataclass(frozen=True, kw_only=True)
class Filter:
    """Which dead letters: by owner, destination and time of death (all optional)."""

    owner: str | None = None
    destination: str | None = None
    since: float | None = None
    until: float | None = None

    def index(self) -> str:
        """The narrowest dead list that holds every match."""
        everything, by_owner, by_dest, by_both = dead_indexes(
            self.owner or "", self.destination or ""
        )
        if self.owner and self.destination:
            return by_both
        if self.owner:
            return by_owner
        if self.destination:
            return by_dest
        return everything


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    chunk: list[str] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


class DeadLetters:
    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.outbox = Outbox(client)

    def page(
        self, where: Filter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` dead letters, newest first, after `cursor` (a dead-letter id)."""
        letter_ids = self._ids(where, cursor, limit + 1)
        more = len(letter_ids) > limit
        letter_ids = letter_ids[:limit]
        items = [item for item in (self.get(i) for i in letter_ids) if item is not None]
        return items, (letter_ids[-1] if more else None)

    def get(self, dead_letter_id: str) -> dict[str, Any] | None:
        """The dead letter with its event, or None if it is not on the dead list."""
        event_id = self.redis.get(dead_letter_key(dead_letter_id))
        if event_id is None:
            return None
        record = self.outbox.get(event_id.decode())
        if record is None or record["status"] != DEAD:
            return None
        return {**record, "dead_letter_id": dead_letter_id}

    def delete(self, dead_letter_id: str) -> bool:
        """Take a dead letter off the dead list for good (the event stays `dead`)."""
        letter = self.get(dead_letter_id)
        if letter is None:
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(dead_letter_key(dead_letter_id))
            for index in dead_indexes(letter["owner"], letter["destination"]):
                pipe.zrem(index, dead_letter_id)
            deleted = pipe.execute()[0]
        return bool(deleted)

    def replay(self, dead_letter_id: str, *, url: str | None = None) -> dict[str, Any] | None:
        """Deliver the letter's event again: same webhook-id, fresh budget, signed afresh.

        Returns the letter replayed, or None if it is gone (already replayed or deleted).
        """
        letter = self.get(dead_letter_id)
        if letter is None:
            return None
        if not self.outbox.reopen(letter, dead_letter_id=dead_letter_id, url=url):
            return None
        return letter

    def matching(self, where: Filter) -> Iterator[str]:
        """Ids of every matching dead letter, a page at a time (bounded memory)."""
        cursor = None
        while True:
            page = self._ids(where, cursor)
            yield from page
            if len(page) < PAGE_SIZE:
                return
            cursor = page[-1]

    def _ids(self, where: Filter, cursor: str | None, limit: int = PAGE_SIZE) -> list[str]:
        """Up to `limit` matching ids, newest first, strictly older than `cursor`."""
        high = f"({cursor}" if cursor else "+"
        if where.until is not None:
            bound = ids.time_bound("dlq", where.until)
            if cursor is None or bound < cursor:
                high = f"({bound}"
        low = f"[{ids.time_bound('dlq', where.since)}" if where.since is not None else "-"
        found = self.redis.zrange(
            where.index(), high, low, desc=True, bylex=True, offset=0, num=limit
        )
        return [item.decode() for item in found]

    def replay_matching(self, where: Filter) -> int:
        """Replay every matching dead letter; returns how many were replayed.

        Works a page at a time, four round trips per page, in bounded memory.
        """
        replayed = 0
        for page in _chunks(self.matching(where), PAGE_SIZE):
            with self.redis.pipeline(transaction=False) as pipe:
                for letter_id in page:
                    pipe.get(dead_letter_key(letter_id))
                event_ids = pipe.execute()
            found = [(lid, eid.decode()) for lid, eid in zip(page, event_ids, strict=True) if eid]
            with self.redis.pipeline(transaction=False) as pipe:
                for _, event_id in found:
                    pipe.hmget(event_key(event_id), "owner", "destination", "subject")
                owners = pipe.execute()
            records = []
            with self.redis.pipeline(transaction=False) as pipe:
                for (letter_id, event_id), (owner, dest, subject) in zip(
                    found, owners, strict=True
                ):
                    if owner is None:
                        continue
                    record = {
                        "id": event_id,
                        "owner": owner.decode(),
                        "destination": dest.decode(),
                        "subject": (subject or b"").decode(),
                    }
                    records.append(record)
                    self.outbox.reopen(record, dead_letter_id=letter_id, pipeline=pipe)
                answers = pipe.execute()
            with self.redis.pipeline(transaction=False) as pipe:
                for record, answer in zip(records, answers, strict=True):
                    if answer:
                        replayed += 1
                        self.outbox.note_reopened(pipe, record, replay=True)
                pipe.execute()
        return replayed

    def purge(self, where: Filter) -> int:
        """Delete every matching dead letter; returns how many."""
        return sum(1 for letter_id in self.matching(where) if self.delete(letter_id))

    def expire(self, retention_seconds: float) -> int:
        """Delete dead letters older than the retention, and log how many."""
        removed = self.purge(Filter(until=clock.now() - retention_seconds))
        if removed:
            log.warning(
                "removed %d dead letters older than the retention of %s s",
                removed,
                retention_seconds,
            )
        return removed
