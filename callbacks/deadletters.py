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
from typing import cast

import redis

from callbacks.keys import DEFAULT_KEYS, Keys
from callbacks.model import Delivery, DeliveryStatus
from callbacks.outbox import Outbox
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

    def index(self, keys: Keys = DEFAULT_KEYS) -> str:
        """The narrowest dead list that holds every match."""
        everything, by_owner, by_dest, by_both = keys.dead_indexes(
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
    def __init__(
        self, client: redis.Redis, *, outbox: Outbox | None = None, keys: Keys | None = None
    ) -> None:
        self.redis = client
        self.outbox = outbox or Outbox(client, keys=keys or DEFAULT_KEYS)
        self.keys = self.outbox.keys

    def page(
        self, where: Filter, *, limit: int, cursor: str | None = None
    ) -> tuple[list[Delivery], str | None]:
        """Up to `limit` dead letters, newest first, after `cursor` (a dead-letter id)."""
        letter_ids = self._ids(where, cursor, limit + 1)
        more = len(letter_ids) > limit
        letter_ids = letter_ids[:limit]
        items = [item for item in self.get_many(letter_ids) if item is not None]
        return items, (letter_ids[-1] if more else None)

    def get(self, dead_letter_id: str) -> Delivery | None:
        """The dead letter (a dead delivery), or None if it is not on the dead list."""
        return self.get_many([dead_letter_id])[0]

    def get_many(
        self, dead_letter_ids: list[str], *, heads_only: bool = False
    ) -> list[Delivery | None]:
        """The dead letters of `dead_letter_ids` (None where gone), in three round trips;
        with `heads_only`, as `Outbox.get_heads` reads them."""
        with self.redis.pipeline(transaction=False) as pipe:
            for letter_id in dead_letter_ids:
                pipe.get(self.keys.dead_link(letter_id))
            links = pipe.execute()
        read = self.outbox.get_heads if heads_only else self.outbox.get_many
        found = read([link.decode() for link in links if link])
        by_link = iter(found)
        out: list[Delivery | None] = []
        for letter_id, link in zip(dead_letter_ids, links, strict=True):
            delivery = next(by_link) if link else None
            if (
                delivery is None
                or delivery.status != DeliveryStatus.DEAD
                or delivery.dead_letter_id != letter_id
            ):
                out.append(None)
            else:
                out.append(delivery)
        return out

    def delete(self, dead_letter_id: str) -> bool:
        """Take a dead letter off the dead list for good (the delivery stays `dead`)."""
        letter = self.get(dead_letter_id)
        if letter is None:
            return False
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(self.keys.dead_link(dead_letter_id))
            for index in self.keys.dead_indexes(letter.owner, letter.destination):
                pipe.zrem(index, dead_letter_id)
            deleted = pipe.execute()[0]
        return bool(deleted)

    def replay(self, dead_letter_id: str, *, url: str | None = None) -> Delivery | None:
        """Deliver the letter again: same webhook-id, fresh budget, signed afresh.

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

    def count(self, where: Filter) -> int:
        """How many dead letters match, exactly: one ZLEXCOUNT over the index and bounds
        `matching` reads, O(log n) however many there are."""
        low, high = self._bounds(where, None)
        return int(cast("int", self.redis.zlexcount(where.index(self.keys), low, high)))

    def _ids(self, where: Filter, cursor: str | None, limit: int = PAGE_SIZE) -> list[str]:
        """Up to `limit` matching ids, newest first, strictly older than `cursor`."""
        low, high = self._bounds(where, cursor)
        found = cast(
            "list[bytes]",
            self.redis.zrange(
                where.index(self.keys), high, low, desc=True, bylex=True, offset=0, num=limit
            ),
        )
        return [item.decode() for item in found]

    @staticmethod
    def _bounds(where: Filter, cursor: str | None) -> tuple[str, str]:
        """The lexical range of the ids `where` matches strictly older than `cursor`: ids
        sort by the time their letter died."""
        return ids.lex_range("dlq", since=where.since, until=where.until, cursor=cursor)

    def replay_matching(self, where: Filter) -> int:
        """Replay every matching dead letter; returns how many were replayed.

        Works a page at a time, four round trips per page, in bounded memory.
        """
        replayed = 0
        for page in _chunks(self.matching(where), PAGE_SIZE):
            letters = [
                (letter_id, letter)
                for letter_id, letter in zip(
                    page, self.get_many(page, heads_only=True), strict=True
                )
                if letter is not None
            ]
            with self.redis.pipeline(transaction=False) as pipe:
                for letter_id, letter in letters:
                    self.outbox.reopen(letter, dead_letter_id=letter_id, pipeline=pipe)
                replayed += sum(1 for answer in pipe.execute() if answer)
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
