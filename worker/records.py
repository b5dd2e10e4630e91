"""Where a job's record lives in Redis, and the plain reads and writes of it.

Keys: `pb:job:{id}` (a hash), `pb:partner:{pid}:jobs` and
`pb:partner:{pid}:jobs:{status}` (sorted sets of job ids, all at score 0, so
they sort by id, which is time-ordered: paging is a range query by id), and
three schedules the reaper walks: `pb:queued` (job → when it should be on a
queue by), `pb:leases` (running job → when its lease lapses) and
`pb:retention` (finished job → when it is removed); `pb:retry` holds retries
waiting out their delay. Changes of state are `worker.transitions`.
"""

from __future__ import annotations

import json
from typing import Any, cast

import redis

from callbacks.outbox import Outbox
from postback import timeline
from worker import quotas, reads
from worker.guard import Snapshot
from worker.model import Job, JobHistory, JobRead, JobSnapshot, JobStatus, Priority
from worker.results import ResultLinks
from worker.view import shows_result_link

QUEUE_NAME = "postback"
PRIORITIES = tuple(Priority)
QUEUES = {Priority.HIGH: "postback:high", Priority.NORMAL: QUEUE_NAME, Priority.LOW: "postback:low"}
RUN_JOB = "worker.tasks.run_job"

QUEUED_KEY = "pb:queued"
RETRY_KEY = "pb:retry"
LEASES_KEY = "pb:leases"
RETENTION_KEY = "pb:retention"


def job_key(job_id: str) -> str:
    return f"pb:job:{job_id}"


def done_channel(job_id: str) -> str:
    """Published to when the job reaches a terminal state (for `?wait=`)."""
    return f"pb:job:{job_id}:done"


def partner_index(partner_id: str, status: str | None = None) -> str:
    base = f"pb:partner:{partner_id}:jobs"
    return f"{base}:{status}" if status else base


def timeline_of(entries: list[bytes]) -> tuple[dict[str, Any], ...]:
    return tuple(json.loads(entry) for entry in entries)


def snapshot_of(snapshot: Snapshot | None) -> JobSnapshot | None:
    """A guard's snapshot of a job's hash and timeline, typed."""
    if snapshot is None:
        return None
    return JobSnapshot(
        Job.from_hash(snapshot.fields), timeline_of(snapshot.timeline), snapshot.version
    )


class Records:
    """Read jobs (whole, as views need them, or with their timeline and delivery)."""

    def __init__(
        self, client: redis.Redis, *, outbox: Outbox, links: ResultLinks, inline_result_bytes: int
    ) -> None:
        self.redis = client
        self.outbox = outbox
        self.links = links
        self.inline_result_bytes = inline_result_bytes

    def get(self, job_id: str) -> Job | None:
        """The stored job, input and result included (see `view`), or None."""
        raw = cast(dict[bytes, bytes], self.redis.hgetall(job_key(job_id)))
        if not raw:
            return None
        return Job.from_hash({k.decode(): v.decode() for k, v in raw.items()})

    def input_of(self, job_id: str) -> Any:
        """The job's input as it was submitted (views read jobs without it: it can be
        large); None if there is no such job."""
        raw = cast("bytes | None", self.redis.hget(job_key(job_id), "input"))
        return json.loads(raw) if raw else None

    def view(self, job_id: str) -> Job | None:
        """The job as views need it, or None: no input, and the result only if the view
        shows it inline (`worker.reads`)."""
        reply = reads.read_view(
            self.redis, job_key(job_id), inline_result_bytes=self.inline_result_bytes
        )
        fields = reads.parse(reply)  # type: ignore[arg-type]
        return Job.from_hash(fields) if fields is not None else None

    def read(self, job_id: str) -> JobRead | None:
        """The job as `view` reads it, with its timeline and delivery (two round trips)."""
        with self.redis.pipeline(transaction=False) as pipe:
            reads.read_view(pipe, job_key(job_id), inline_result_bytes=self.inline_result_bytes)
            pipe.lrange(timeline.key(job_id), 0, -1)
            reply, entries = pipe.execute()
        fields = reads.parse(reply)
        if fields is None:
            return None
        job = Job.from_hash(fields)
        delivery = self.outbox.get(job.event_id) if job.callback_url and job.event_id else None
        return JobRead(job, timeline_of(entries), delivery)

    def history(self, job_id: str) -> JobHistory | None:
        """The job as `view` reads it with its numbered timeline, in one atomic read."""
        with self.redis.pipeline(transaction=True) as pipe:
            reads.read_view(pipe, job_key(job_id), inline_result_bytes=self.inline_result_bytes)
            pipe.get(timeline.count_key(job_id))
            pipe.lrange(timeline.key(job_id), 0, -1)
            reply, count, entries = pipe.execute()
        fields = reads.parse(reply)
        if fields is None:
            return None
        return JobHistory(Job.from_hash(fields), tuple(timeline.numbered(entries, count)))

    def result(self, job_id: str) -> tuple[JobStatus, Any] | None:
        """(status, result) of the job, reading nothing else; None if there is no job."""
        status, result = cast(
            list[bytes | None], self.redis.hmget(job_key(job_id), ["status", "result"])
        )
        if status is None:
            return None
        return JobStatus(status.decode()), json.loads(result) if result else None

    def result_url(self, job: Job) -> str | None:
        """The signed link to the job's result, if its view shows one (else None)."""
        if not shows_result_link(job, inline_result_bytes=self.inline_result_bytes):
            return None
        return self.links.url(job.base_url, job.id)

    def set_progress(self, job_id: str, percent: int) -> None:
        with self.redis.pipeline(transaction=False) as pipe:
            pipe.hset(job_key(job_id), "progress", str(percent))
            pipe.publish(timeline.channel(job_id), timeline.NEWS_PROGRESS)
            pipe.execute()

    def remove(self, job_id: str) -> None:
        """Delete a finished job and everything that belongs to it (retention).

        A webhook on the dead-letter list stays there: dead letters never expire silently.
        The partner's retained bytes go down by what the job held, in the same transaction.
        """
        job = self.view(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(RETENTION_KEY, job_id)
            if job is not None:
                quotas.forget(pipe, job_key(job_id))
                pipe.delete(timeline.key(job_id), timeline.count_key(job_id))
                pipe.zrem(partner_index(job.partner_id), job_id)
                pipe.zrem(partner_index(job.partner_id, job.status), job_id)
                delivery = (
                    self.outbox.get(job.event_id) if job.callback_url and job.event_id else None
                )
                if delivery is not None and not delivery.dead_letter_id:
                    self.outbox.forget(delivery.id, delivery.owner, pipeline=pipe)
            pipe.execute()
