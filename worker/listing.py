"""A partner's jobs a page at a time, newest first, each read as its view needs it."""

from __future__ import annotations

from typing import cast

import redis

from callbacks.outbox import Outbox
from postback import ids, timeline
from worker import reads
from worker.model import Job, JobRead
from worker.records import job_key, partner_index, timeline_of


class Listing:
    """Pages of a partner's jobs, from the indexes `worker.records` describes."""

    def __init__(self, client: redis.Redis, *, outbox: Outbox, inline_result_bytes: int) -> None:
        self.redis = client
        self.outbox = outbox
        self.inline_result_bytes = inline_result_bytes

    def page(
        self,
        partner_id: str,
        *,
        status: str | None,
        limit: int,
        cursor: str | None,
        since: float | None = None,
        until: float | None = None,
    ) -> tuple[list[JobRead], str | None]:
        """Up to `limit` of the partner's jobs, newest first, after `cursor` (a job id);
        and the cursor of the next page, or None if this is the last.

        `since` and `until` (epoch seconds) keep jobs created at or after `since` and
        before `until`: job ids are time-ordered, so they bound the index's range.
        """
        low, high = ids.lex_range("job", since=since, until=until, cursor=cursor)
        found = self.redis.zrange(
            partner_index(partner_id, status),
            high,
            low,
            desc=True,
            bylex=True,
            offset=0,
            num=limit + 1,
        )
        job_ids = [item.decode() for item in cast(list[bytes], found)]
        more = len(job_ids) > limit
        job_ids = job_ids[:limit]
        return self.many(job_ids), (job_ids[-1] if more and job_ids else None)

    def many(self, job_ids: list[str]) -> list[JobRead]:
        """The jobs `job_ids` as `Records.read` reads them (missing ones left out), in two
        round trips rather than two per job."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                reads.read_view(pipe, job_key(job_id), inline_result_bytes=self.inline_result_bytes)
                pipe.lrange(timeline.key(job_id), 0, -1)
            replies = pipe.execute()
        found: list[tuple[Job, list[bytes]]] = []
        for reply, entries in zip(replies[::2], replies[1::2], strict=True):
            fields = reads.parse(reply)
            if fields is not None:
                found.append((Job.from_hash(fields), entries))
        event_ids = [job.event_id for job, _ in found if job.callback_url and job.event_id]
        deliveries = dict(zip(event_ids, self.outbox.get_many(event_ids), strict=True))
        return [
            JobRead(job, timeline_of(entries), deliveries.get(job.event_id or ""))
            for job, entries in found
        ]
