"""Postback's record of each job, the source of truth for where every job is: the
`JobStore` that composes the pieces of the job core, and the names they export.

The pieces, one idea each: `worker.model` (the typed `Job`, its status and
priority), `worker.records` (the key layout and plain reads), `worker.transitions`
(the guarded state machine), `worker.listing` (a partner's jobs a page at a time)
and `worker.view` (the public job and its webhook, pure functions). Creating a job,
with its durability, is here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from callbacks.outbox import Outbox
from postback import clock, ids, lua, timeline
from postback.errors import Unavailable
from postback.groupcommit import GroupCommit
from postback.ratewindow import RateCheck
from worker import quotas
from worker.deliveries import JobTimeline
from worker.listing import Listing
from worker.model import (
    TERMINAL,
    Cancel,
    EventType,
    Job,
    JobRead,
    JobSnapshot,
    JobStatus,
    Priority,
)
from worker.quotas import Quota
from worker.records import (
    LEASES_KEY,
    PRIORITIES,
    QUEUE_NAME,
    QUEUED_KEY,
    QUEUES,
    RETENTION_KEY,
    RETRY_KEY,
    RUN_JOB,
    Records,
    done_channel,
    job_key,
    partner_index,
)
from worker.results import ResultLinks
from worker.transitions import Transitions
from worker.view import public

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "DURABILITY_KEY",
    "EVENT_TYPES",
    "FAILED",
    "FSYNC_WAIT_SECONDS",
    "LEASES_KEY",
    "PRIORITIES",
    "PROCESSING",
    "QUEUED",
    "QUEUED_KEY",
    "QUEUES",
    "QUEUE_NAME",
    "REPLICATED_WAIT_SECONDS",
    "RETENTION_KEY",
    "RETRY_KEY",
    "RUN_JOB",
    "STATUSES",
    "TERMINAL",
    "Cancel",
    "EventType",
    "Job",
    "JobRead",
    "JobSnapshot",
    "JobStatus",
    "JobStore",
    "NotDurable",
    "Priority",
    "done_channel",
    "job_key",
    "partner_index",
    "public",
]

# How long WAITAOF waits for the local AOF fsync (no replicas) at most, unless told less.
FSYNC_WAIT_SECONDS = 5.0
# How long it waits for the replicas' fsyncs too (`replicated` durability) at most: less,
# so that the 503 of replicas that do not confirm leaves within 5 s of the request, its
# other round trips (and its wait for a pooled connection) included.
REPLICATED_WAIT_SECONDS = 3.0

# Written before a WAITAOF that must cover writes made on other connections.
DURABILITY_KEY = "pb:durability:mark"
_DURABILITY_MARK = lua.Script("return redis.call('INCR', KEYS[1])")

QUEUED = JobStatus.QUEUED
PROCESSING = JobStatus.PROCESSING
COMPLETED = JobStatus.COMPLETED
FAILED = JobStatus.FAILED
CANCELLED = JobStatus.CANCELLED
STATUSES = tuple(JobStatus)
EVENT_TYPES = {status: EventType.of(status) for status in TERMINAL}


class NotDurable(Unavailable):
    """Redis did not confirm that the new job reached its append-only file in time (in
    `replicated` durability: its own and those of enough replicas)."""


class JobStore:
    """Create, read, list and move jobs through their states.

    Reads are `Records`' (`get`, `input_of`, `view`, `read`, `result`, `result_url`,
    `set_progress`, `remove`), pages `Listing`'s (`page`, `many`) and changes of
    state `Transitions`' (`start`, `renew`, `requeue`, `enqueue_again`,
    `request_cancel`, `finish`). Every argument is required: the defaults are
    the settings' (`worker.runtime.job_store` builds a store from them).
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        durability: str,
        durability_replicas: int,
        retention_seconds: float,
        inline_result_bytes: int,
        result_url_ttl_seconds: int,
        quota: Quota,
        fsync_wait_seconds: float,
    ) -> None:
        self.redis = client
        self.quota = quota
        self.durability = durability
        # The replicas whose AOF must hold a write before it is confirmed (0: the primary's only).
        self.replicas = durability_replicas if durability == "replicated" else 0
        self.fsync_wait_seconds = fsync_wait_seconds
        self.inline_result_bytes = inline_result_bytes
        self.outbox = Outbox(client, observer=JobTimeline())
        self.links = ResultLinks(client, ttl_seconds=result_url_ttl_seconds)
        # The API's submissions made at once share round trips (and WAITAOF) to Redis.
        self.writer = GroupCommit(client)
        self._queues = {p: Queue(QUEUES[p], connection=client) for p in PRIORITIES}
        self.records = Records(
            client, outbox=self.outbox, links=self.links, inline_result_bytes=inline_result_bytes
        )
        self.listing = Listing(client, outbox=self.outbox, inline_result_bytes=inline_result_bytes)
        self.transitions = Transitions(
            client,
            records=self.records,
            outbox=self.outbox,
            queues=self._queues,
            retention_seconds=retention_seconds,
        )
        self.guard = self.transitions.guard
        records, listing, transitions = self.records, self.listing, self.transitions
        self.get = records.get
        self.input_of = records.input_of
        self.view = records.view
        self.read = records.read
        self.history = records.history
        self.result = records.result
        self.result_url = records.result_url
        self.set_progress = records.set_progress
        self.remove = records.remove
        self.page = listing.page
        self.many = listing.many
        self.start = transitions.start
        self.renew = transitions.renew
        self.requeue = transitions.requeue
        self.enqueue_again = transitions.enqueue_again
        self.request_cancel = transitions.request_cancel
        self.finish = transitions.finish
        self.guarded = transitions.guarded

    def queue(self, priority: Priority | str) -> Queue:
        return self._queues[Priority(priority)]

    def public(self, read: JobRead) -> dict[str, Any]:
        """The job as `GET /v1/jobs/{id}` returns it (`worker.view.public`, with its
        result link signed when it has one)."""
        return public(read, result_url=self.result_url(read.job))

    def create(
        self,
        *,
        partner_id: str,
        type: str,
        input: dict[str, Any],
        callback_url: str | None,
        timeout_seconds: int,
        priority: Priority | str = Priority.NORMAL,
        base_url: str = "",
        request_id: str = "",
        traceparent: str | None = None,
        also: Callable[[redis.client.Pipeline, Job], None] | None = None,
        rate: RateCheck | None = None,
        once: str | None = None,
    ) -> Job:
        """Record a new job and put it on the queue, in one transaction.

        `also(pipeline, job)` adds the caller's own writes to that transaction
        (the API stores an idempotent response there). With `once`, a key those
        writes set, raises `quotas.AlreadyMade`, having stored nothing, if it exists
        (the job was made already). Raises `quotas.OverQuota`, having stored
        nothing, if the partner is at one of its bounds (`quota`).
        With `rate`, the request is counted against the partner's rate limit in the
        same script (see `quotas.admit_and_write`). In `fsync` durability, returns
        once Redis confirms the job is in its append-only file, in `replicated` once it
        is in the primary's and in those of `durability_replicas` replicas, or raises
        NotDurable with the job stored.
        """
        job = Job(
            id=ids.new_id("job"),
            partner_id=partner_id,
            type=type,
            status=JobStatus.QUEUED,
            created_at=clock.now(),
            priority=Priority(priority),
            timeout_seconds=timeout_seconds,
            callback_url=callback_url or None,
            base_url=base_url,
            request_id=request_id,
            traceparent=traceparent or "",
            input=input,
        )
        stored = job.to_hash()
        input_bytes = len(stored["input"])  # type: ignore[arg-type]
        stored[quotas.RETAINED_FIELD] = input_bytes
        pipe = self.guard.recorder()
        pipe.hset(job_key(job.id), mapping=stored)  # type: ignore[arg-type]
        pipe.zadd(partner_index(partner_id), {job.id: 0})
        pipe.zadd(partner_index(partner_id, QUEUED), {job.id: 0})
        pipe.zadd(QUEUED_KEY, {job.id: job.created_at})
        timeline.append(
            pipe,
            job.id,
            timeline.entry(
                timeline.Event.ACCEPTED, at=job.created_at, request_id=request_id or None
            ),
            timeline.entry(timeline.Event.ENQUEUED, at=job.created_at, queue=QUEUES[job.priority]),
            new=True,
        )
        self.transitions.enqueue(pipe, job.id, job.priority)
        if also is not None:
            also(pipe, job)
        fsync = quotas.admit_and_write(
            self.writer,
            pipe,
            partner_id=partner_id,
            queued_index=partner_index(partner_id, QUEUED),
            new_bytes=input_bytes,
            quota=self.quota,
            rate=rate,
            fsync_wait_ms=self._fsync_wait_ms(),
            replicas=self.replicas,
            once=once,
        )
        if fsync is not None:
            self._check_durable(fsync)
        return job

    def _fsync_wait_ms(self) -> int | None:
        if self.durability not in ("fsync", "replicated"):
            return None
        return max(1, round(self.fsync_wait_seconds * 1000))

    def confirm_durable(self) -> None:
        """In `fsync` durability, return only once every write made so far is in the AOF
        (for a job stored earlier, e.g. before an idempotent replay of its answer); in
        `replicated`, once it is in the AOF of the primary and of `durability_replicas`
        replicas.

        WAITAOF waits for the writes of the connection it is sent on, so one write is
        made before it on the same connection: the file (and the replication stream) is
        written in order, and once that write is fsynced every earlier one is. Raises
        NotDurable if Redis cannot confirm it within `fsync_wait_seconds`.
        """
        wait_ms = self._fsync_wait_ms()
        if wait_ms is None:
            return
        try:
            _, fsync = self.writer.run(
                _DURABILITY_MARK,
                [DURABILITY_KEY],
                [],
                fsync_wait_ms=wait_ms,
                replicas=self.replicas,
            )
        except (redis.ResponseError, redis.TimeoutError, redis.ConnectionError) as exc:
            fsync = exc
        self._check_durable(fsync)

    def _check_durable(self, reply: Any) -> None:
        """Raise NotDurable unless WAITAOF's `reply` says the local AOF was fsynced, and
        those of `self.replicas` replicas."""
        if isinstance(reply, Exception):
            raise NotDurable(f"WAITAOF failed: {type(reply).__name__}") from reply
        local, replicas = reply
        if local < 1:
            raise NotDurable("the append-only file was not fsynced in time")
        if replicas < self.replicas:
            raise NotDurable(
                f"{replicas} of the {self.replicas} replicas required fsynced it in time"
            )
