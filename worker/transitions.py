"""The job state machine: every change of a job's status, each one atomic in Redis.

`queued → processing → completed | failed | cancelled`, with `processing →
queued` for a retry or a recovery. Every change is guarded (`worker.guard`:
applied by Redis only if the job is still as the change saw it): a run that
lost its lease cannot overwrite what the run that replaced it recorded. The
changes Redis can decide alone (start, a cancel request) are Lua scripts.

A cancel request is recorded only on a job that is processing, in one step
with the check; the run's end, guarded, then sees it and ends the job
`cancelled` whatever the handler returned. So a request answered "requested"
always ends in `cancelled`, and a job that ended first answers "ended".
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import redis
from rq import Queue

from callbacks.outbox import Outbox
from postback import clock, ids, timeline
from postback import metrics as pm
from worker import feed, quotas
from worker.enqueue import Enqueuer
from worker.guard import Guard, Outcome
from worker.model import Cancel, Job, JobSnapshot, JobStatus, Priority
from worker.records import (
    LEASES_KEY,
    QUEUED_KEY,
    RETENTION_KEY,
    RETRY_KEY,
    RUN_JOB,
    Records,
    done_channel,
    job_key,
    partner_index,
    snapshot_of,
)
from worker.view import webhook

_ENQUEUER = Enqueuer(RUN_JOB)

CANCELLED_BEFORE_START = {"code": "cancelled", "message": "cancelled before it started"}
CANCELLED_WHILE_RUNNING = {"code": "cancelled", "message": "cancelled while running"}

# Queued → processing, decided in Redis (one round trip; `Transitions.start`).
# KEYS: job, timeline, queued schedule, leases, timeline count. ARGV: job id, now,
# run id, lease until, now as RFC 3339, timeline length kept, the two statuses, the
# two statuses' partner indexes (%s for the partner id), the job's channel. The
# timeline entry is the one `timeline.record(..., "started", attempt=n)` writes (a
# test compares them), counted and published as `timeline.append` does.
_START = """
if redis.call('HGET', KEYS[1], 'status') ~= ARGV[7] then return {} end
local partner = redis.call('HGET', KEYS[1], 'partner_id')
local attempt = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', ARGV[8], 'started_at', ARGV[2], 'run_id', ARGV[3],
           'lease_until', ARGV[4])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('ZREM', string.format(ARGV[9], partner), ARGV[1])
redis.call('ZADD', string.format(ARGV[10], partner), 0, ARGV[1])
redis.call('RPUSH', KEYS[2],
           '{"event":"started","at":' .. cjson.encode(ARGV[5]) .. ',"attempt":' .. attempt .. '}')
redis.call('INCR', KEYS[5])
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
redis.call('PUBLISH', ARGV[11], ARGV[12])
return snapshot(KEYS[1], KEYS[2])
"""

# A cancel request, decided in Redis (`Transitions.request_cancel`): recorded only
# on a job that is processing, whose run's end then sees it. KEYS: job, timeline,
# timeline count. ARGV: now as RFC 3339, timeline length kept, the processing
# status, the job's channel, what is published. Returns the snapshot after,
# whatever the status (the caller reads the status from it).
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HGET', KEYS[1], 'status') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('RPUSH', KEYS[2], '{"event":"cancel_requested","at":' .. cjson.encode(ARGV[1]) .. '}')
  redis.call('INCR', KEYS[3])
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
  redis.call('PUBLISH', ARGV[4], ARGV[5])
end
return snapshot(KEYS[1], KEYS[2])
"""

Change = Callable[[JobSnapshot, redis.client.Pipeline], bool]


class Transitions:
    """Start, renew, requeue, cancel and finish jobs."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        records: Records,
        outbox: Outbox,
        queues: dict[Priority, Queue],
        retention_seconds: float,
    ) -> None:
        self.redis = client
        self.records = records
        self.outbox = outbox
        self.queues = queues
        self.retention_seconds = retention_seconds
        self.guard = Guard(client)
        self._start = self.guard.transition(_START)
        self._cancel = self.guard.transition(_CANCEL)

    def enqueue(self, pipe: redis.client.Pipeline, job_id: str, priority: Priority) -> None:
        """Queue the writes that put `run_job(job_id)` on its priority's queue onto `pipe`."""
        _ENQUEUER.enqueue(pipe, self.queues[priority], job_id)

    def guarded(
        self, job_id: str, change: Change, *, known: JobSnapshot | None = None
    ) -> JobSnapshot | None:
        """Apply `change(snapshot, pipeline)` atomically; None if the job is gone or
        `change` declines, else the snapshot `change` saw.

        `change` queues its writes on the pipeline and returns True; if the job
        changed meanwhile it is called again with the job as it is now. `known`
        is a snapshot `start` returned, to save the read.
        """
        seen = known if known is not None else self.snapshot(job_id)
        while seen is not None:
            writes = self.guard.recorder()
            if not change(seen, writes):
                writes.reset()
                return None
            outcome, now = self.guard.apply(
                job_key(job_id), timeline.key(job_id), seen.version, writes
            )
            if outcome is Outcome.APPLIED:
                return seen
            seen = snapshot_of(now)
        return None

    def snapshot(self, job_id: str) -> JobSnapshot | None:
        """The job with its timeline and version, or None."""
        return snapshot_of(self.guard.read(job_key(job_id), timeline.key(job_id)))

    def start(self, job_id: str, *, run_id: str, lease_seconds: float) -> JobSnapshot | None:
        """Queued → processing under a lease held by `run_id`; None if not queued any more.

        The snapshot returned can be passed to `finish` as `known`.
        """
        now = clock.now()
        return snapshot_of(
            self._start(
                keys=[
                    job_key(job_id),
                    timeline.key(job_id),
                    QUEUED_KEY,
                    LEASES_KEY,
                    timeline.count_key(job_id),
                ],
                args=[
                    job_id,
                    repr(now),
                    run_id,
                    repr(now + lease_seconds),
                    clock.rfc3339(now),
                    timeline.MAX_ENTRIES,
                    JobStatus.QUEUED,
                    JobStatus.PROCESSING,
                    partner_index("%s", JobStatus.QUEUED),
                    partner_index("%s", JobStatus.PROCESSING),
                    timeline.channel(job_id),
                    timeline.NEWS_ENTRY,
                ],
            )
        )

    def renew(self, job_id: str, *, run_id: str, lease_seconds: float) -> JobSnapshot | None:
        """Extend the lease of a run that still holds it; None if it lost it."""
        until = clock.now() + lease_seconds

        def extend(seen: JobSnapshot, pipe: redis.client.Pipeline) -> bool:
            if seen.job.status is not JobStatus.PROCESSING or seen.job.run_id != run_id:
                return False
            pipe.hset(job_key(job_id), "lease_until", repr(until))
            pipe.zadd(LEASES_KEY, {job_id: until})
            return True

        return self.guarded(job_id, extend)

    def requeue(
        self,
        job_id: str,
        *,
        run_id: str | None,
        delay_seconds: float = 0.0,
        lapsed_before: float | None = None,
        known: JobSnapshot | None = None,
        ran_seconds: float | None = None,
        waited_seconds: float | None = None,
    ) -> bool:
        """Processing → queued again, now or after `delay_seconds` (a retry or a recovery).

        Only the run holding the lease (`run_id`) may do it, or the reaper
        (`lapsed_before`: only if the lease lapsed before that time). A job with
        a cancel request ends `cancelled` instead. `known`, `ran_seconds` and
        `waited_seconds` as for `finish`.
        """
        due = clock.now() + delay_seconds

        def back(seen: JobSnapshot, pipe: redis.client.Pipeline) -> bool:
            job = seen.job
            if job.status is not JobStatus.PROCESSING:
                return False
            if run_id is not None and job.run_id != run_id:
                return False
            if lapsed_before is not None and (job.lease_until or 0) >= lapsed_before:
                return False
            if job.cancel_requested:
                self._end(seen, pipe, JobStatus.CANCELLED, None, CANCELLED_WHILE_RUNNING)
                self._observe_run(pipe, job, ran_seconds, waited_seconds)
                return True
            fields = {"status": JobStatus.QUEUED, "run_id": "", "lease_until": ""}
            pipe.hset(job_key(job_id), mapping=fields)
            pipe.hdel(job_key(job_id), "started_at")
            pipe.zrem(LEASES_KEY, job_id)
            pipe.zadd(QUEUED_KEY, {job_id: due})
            _move(pipe, job, JobStatus.QUEUED)
            if lapsed_before is not None:
                timeline.record(pipe, job_id, timeline.Event.RECOVERED, attempt=job.attempts)
            elif delay_seconds > 0:
                timeline.record(
                    pipe,
                    job_id,
                    timeline.Event.RETRY_SCHEDULED,
                    attempt=job.attempts,
                    delay_seconds=round(delay_seconds, 3),
                )
            self._observe_run(pipe, job, ran_seconds, waited_seconds)
            if delay_seconds <= 0:
                self.enqueue(pipe, job_id, job.priority)
            else:
                # The reaper puts it on its queue when it falls due.
                pipe.zadd(RETRY_KEY, {job_id: due})
            return True

        return self.guarded(job_id, back, known=known) is not None

    def enqueue_again(self, job_id: str) -> bool:
        """Put a queued job that is on no queue back on its queue (the reaper's repair)."""

        def again(seen: JobSnapshot, pipe: redis.client.Pipeline) -> bool:
            pipe.zrem(RETRY_KEY, job_id)
            if seen.job.status is not JobStatus.QUEUED:
                pipe.zrem(QUEUED_KEY, job_id)
                return True
            pipe.zadd(QUEUED_KEY, {job_id: clock.now()})
            self.enqueue(pipe, job_id, seen.job.priority)
            return True

        return self.guarded(job_id, again) is not None

    def request_cancel(self, job_id: str) -> Cancel | None:
        """Cancel a job: a queued one at once, a running one at its end; None if no such job.

        Whether a running job takes the request is decided by Redis in one step,
        so a run that finishes at the same instant either ended first (ENDED) or
        sees the request (REQUESTED) and ends `cancelled`.
        """
        while True:
            seen = snapshot_of(
                self._cancel(
                    keys=[job_key(job_id), timeline.key(job_id), timeline.count_key(job_id)],
                    args=[
                        clock.rfc3339(clock.now()),
                        timeline.MAX_ENTRIES,
                        JobStatus.PROCESSING,
                        timeline.channel(job_id),
                        timeline.NEWS_ENTRY,
                    ],
                )
            )
            if seen is None:
                return None
            if seen.job.status is JobStatus.PROCESSING:
                return Cancel.REQUESTED
            if seen.job.status is not JobStatus.QUEUED:
                return Cancel.ENDED
            if self.finish(
                job_id,
                status=JobStatus.CANCELLED,
                expect=(JobStatus.QUEUED,),
                known=seen,
                error=CANCELLED_BEFORE_START,
            ):
                return Cancel.CANCELLED
            # It started (or ended) meanwhile: decide again.

    def finish(
        self,
        job_id: str,
        *,
        status: JobStatus,
        result: Any = None,
        error: dict[str, str] | None = None,
        run_id: str | None = None,
        expect: tuple[JobStatus, ...] = (JobStatus.PROCESSING,),
        known: JobSnapshot | None = None,
        ran_seconds: float | None = None,
        waited_seconds: float | None = None,
    ) -> bool:
        """Move a job to a terminal status and, if it has a callback URL, queue its webhook.

        Applies only while the job is in an `expect`ed status (and, with
        `run_id`, still held by that run); returns whether it applied. A job
        with a cancel request ends `cancelled`, whatever `status` says.
        `known`: the snapshot `start` returned, to save a read. `ran_seconds`
        and `waited_seconds`: how long the run took and, for a first run, how
        long the job had waited on its queue, recorded with the outcome (so
        that starting a job stays one round trip). Raises TypeError or
        ValueError, changing nothing, if a `completed` result is not JSON.
        """
        stored_result = (
            json.dumps(result, separators=(",", ":"), allow_nan=False)
            if status is JobStatus.COMPLETED
            else None
        )

        def end(seen: JobSnapshot, pipe: redis.client.Pipeline) -> bool:
            if seen.job.status not in expect:
                return False
            if run_id is not None and seen.job.run_id != run_id:
                return False
            if seen.job.cancel_requested and status is not JobStatus.CANCELLED:
                # The request was answered "requested" while the job ran: it ends cancelled.
                self._end(seen, pipe, JobStatus.CANCELLED, None, CANCELLED_WHILE_RUNNING)
            else:
                self._end(seen, pipe, status, stored_result, error)
            self._observe_run(pipe, seen.job, ran_seconds, waited_seconds)
            return True

        return self.guarded(job_id, end, known=known) is not None

    def _end(
        self,
        seen: JobSnapshot,
        pipe: redis.client.Pipeline,
        status: JobStatus,
        stored_result: str | None,
        error: dict[str, str] | None,
    ) -> None:
        """Queue the writes that end `seen.job` in `status` (its webhook included)."""
        job = seen.job
        finished_at = clock.now()
        fields: dict[str, Any] = {
            "status": status,
            "finished_at": repr(finished_at),
            "run_id": "",
            "lease_until": "",
        }
        if stored_result is not None:
            fields["progress"] = 100
            fields["result"] = stored_result
        if error is not None:
            fields["error"] = json.dumps(error, separators=(",", ":"))
        cancelled = status is JobStatus.CANCELLED
        step = timeline.Event.CANCELLED if cancelled else timeline.Event.FINISHED
        # Every end has its webhook event: sent to the callback URL if there is one, and in
        # the partner's feed (`worker.feed`) either way.
        fields["event_id"] = ids.new_id("msg")
        ended = replace(
            job,
            status=status,
            finished_at=finished_at,
            run_id=None,
            lease_until=None,
            progress=100 if stored_result is not None else job.progress,
            result=json.loads(stored_result) if stored_result is not None else None,
            result_bytes=len(stored_result or ""),
            error=error,
            event_id=fields["event_id"],
        )
        # The timeline the webhook carries ends with this very step.
        steps = (
            *seen.timeline,
            {"event": str(step), "at": clock.rfc3339(finished_at), "status": str(status)},
        )
        message = webhook(ended, timeline=steps, result_url=self.records.result_url(ended))
        if job.callback_url:
            self.outbox.add(message, job.callback_url, pipeline=pipe)
        feed.append(pipe, message, now=finished_at, retention_seconds=self.retention_seconds)
        key = job_key(job.id)
        pipe.hset(key, mapping=fields)
        # The feed's copy of the webhook counts against the partner's storage like a result.
        retained = len(stored_result or "") + len(message.body)
        quotas.count_result(pipe, key, job.partner_id, retained)
        pipe.hdel(key, "cancel_requested")
        pipe.zrem(LEASES_KEY, job.id)
        pipe.zrem(QUEUED_KEY, job.id)
        pipe.zrem(RETRY_KEY, job.id)
        pipe.zadd(RETENTION_KEY, {job.id: finished_at + self.retention_seconds})
        _move(pipe, job, status)
        pipe.publish(done_channel(job.id), status)
        labels = {"type": job.type, "status": str(status)}
        pm.counter(pipe, "postback_jobs_finished_total", labels)
        timeline.record(pipe, job.id, step, at=finished_at, status=status)

    @staticmethod
    def _observe_run(
        pipe: redis.client.Pipeline,
        job: Job,
        ran_seconds: float | None,
        waited_seconds: float | None,
    ) -> None:
        if ran_seconds is not None:
            pm.observe(pipe, "postback_job_run_seconds", ran_seconds, {"type": job.type})
        if waited_seconds is not None:
            labels = {"priority": str(job.priority)}
            pm.observe(pipe, "postback_job_queue_wait_seconds", waited_seconds, labels)


def _move(pipe: redis.client.Pipeline, job: Job, status: JobStatus) -> None:
    """Move the job from its status's partner index to `status`'s."""
    pipe.zrem(partner_index(job.partner_id, job.status), job.id)
    pipe.zadd(partner_index(job.partner_id, status), {job.id: 0})
