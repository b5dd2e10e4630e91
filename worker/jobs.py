"""Postback's record of each job: the source of truth for where every job is.

Keys: `pb:job:{id}` (a hash), `pb:partner:{pid}:jobs` and
`pb:partner:{pid}:jobs:{status}` (sorted sets of job ids, all at score 0, so
they sort by id, which is time-ordered: paging is a range query by id), and
three schedules the reaper walks: `pb:queued` (job → when it should be on a
queue by), `pb:leases` (running job → when its lease lapses) and
`pb:retention` (finished job → when it is removed).

Every change of state is guarded (`worker.guard`: applied by Redis only if
the job is still as the change saw it): a run that lost its lease cannot
overwrite what the run that replaced it recorded.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from callbacks.model import PENDING_DELIVERY, Message
from callbacks.outbox import Outbox
from postback import clock, ids, lua, timeline
from postback import metrics as pm
from postback.groupcommit import GroupCommit
from postback.ratewindow import RateCheck
from worker import quotas, reads
from worker.deliveries import JobTimeline
from worker.enqueue import Enqueuer
from worker.guard import Guard, Outcome, Snapshot
from worker.quotas import DEFAULT_QUOTA, Quota
from worker.results import ResultLinks

QUEUE_NAME = "postback"
PRIORITIES = ("high", "normal", "low")
QUEUES = {"high": "postback:high", "normal": QUEUE_NAME, "low": "postback:low"}
RUN_JOB = "worker.tasks.run_job"
_ENQUEUER = Enqueuer(RUN_JOB)

# How long WAITAOF waits for the local AOF fsync (no replicas) at most, unless told less.
FSYNC_WAIT_SECONDS = 5.0

# Written before a WAITAOF that must cover writes made on other connections.
DURABILITY_KEY = "pb:durability:mark"
_DURABILITY_MARK = lua.Script("return redis.call('INCR', KEYS[1])")

QUEUED_KEY = "pb:queued"
RETRY_KEY = "pb:retry"
LEASES_KEY = "pb:leases"
RETENTION_KEY = "pb:retention"

QUEUED = "queued"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

CANCELLED_WHILE_RUNNING = {"code": "cancelled", "message": "cancelled while running"}

EVENT_TYPES = {COMPLETED: "job.completed", FAILED: "job.failed", CANCELLED: "job.cancelled"}


def job_key(job_id: str) -> str:
    return f"pb:job:{job_id}"


def done_channel(job_id: str) -> str:
    """Published to when the job reaches a terminal state (for `?wait=`)."""
    return f"pb:job:{job_id}:done"


# Queued → processing, decided in Redis (one round trip; `JobStore.start`).
# KEYS: job, timeline, queued schedule, leases. ARGV: job id, now, run id, lease
# until, now as RFC 3339, timeline length kept, the two statuses, the two
# statuses' partner indexes (%s for the partner id). The timeline entry is the
# one `timeline.record(..., "started", attempt=n)` writes (a test compares them).
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
redis.call('LTRIM', KEYS[2], -tonumber(ARGV[6]), -1)
return snapshot(KEYS[1], KEYS[2])
"""


# A cancel request, decided in Redis (`JobStore.request_cancel`): recorded only on a
# job that is processing, whose run's end then sees it. KEYS: job, timeline. ARGV:
# now as RFC 3339, timeline length kept, the processing status. Returns the
# snapshot after, whatever the status (the caller reads the status from it).
_CANCEL = """
if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
if redis.call('HGET', KEYS[1], 'status') == ARGV[3] then
  redis.call('HSET', KEYS[1], 'cancel_requested', '1')
  redis.call('RPUSH', KEYS[2], '{"event":"cancel_requested","at":' .. cjson.encode(ARGV[1]) .. '}')
  redis.call('LTRIM', KEYS[2], -tonumber(ARGV[2]), -1)
end
return snapshot(KEYS[1], KEYS[2])
"""


class NotDurable(RuntimeError):
    """Redis did not confirm that the new job reached its append-only file in time."""


def partner_index(partner_id: str, status: str | None = None) -> str:
    base = f"pb:partner:{partner_id}:jobs"
    return f"{base}:{status}" if status else base


class JobStore:
    """Create, read, list and move jobs through their states."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        durability: str = "everysec",
        retention_seconds: float = 7 * 86400,
        inline_result_bytes: int = 64 * 1024,
        result_url_ttl_seconds: int = 86400,
        quota: Quota = DEFAULT_QUOTA,
        fsync_wait_seconds: float = FSYNC_WAIT_SECONDS,
    ) -> None:
        self.redis = client
        self.quota = quota
        self.outbox = Outbox(client, observer=JobTimeline())
        self.durability = durability
        self.fsync_wait_seconds = fsync_wait_seconds
        self.retention_seconds = retention_seconds
        self.inline_result_bytes = inline_result_bytes
        self.links = ResultLinks(client, ttl_seconds=result_url_ttl_seconds)
        self.guard = Guard(client)
        # The API's submissions made at once share round trips (and WAITAOF) to Redis.
        self.writer = GroupCommit(client)
        self._queues = {p: Queue(QUEUES[p], connection=client) for p in PRIORITIES}
        self._start = self.guard.transition(_START)
        self._cancel = self.guard.transition(_CANCEL)

    def queue(self, priority: str) -> Queue:
        return self._queues[priority]

    def create(
        self,
        *,
        partner_id: str,
        type: str,
        input: dict[str, Any],
        callback_url: str | None,
        timeout_seconds: int,
        priority: str = "normal",
        base_url: str = "",
        request_id: str = "",
        traceparent: str | None = None,
        also: Callable[[redis.client.Pipeline, dict[str, Any]], None] | None = None,
        rate: RateCheck | None = None,
    ) -> dict[str, Any]:
        """Record a new job and put it on the queue, in one transaction.

        `also(pipeline, job)` adds the caller's own writes to that transaction
        (the API stores an idempotent response there). Raises `quotas.OverQuota`,
        having stored nothing, if the partner is at one of its bounds (`quota`).
        With `rate`, the request is counted against the partner's rate limit in the
        same script (see `quotas.admit_and_write`). In `fsync` durability, returns
        once Redis confirms the job is in its append-only file, or raises NotDurable
        with the job stored.
        """
        job_id = ids.new_id("job")
        created_at = clock.now()
        stored_input = json.dumps(input, separators=(",", ":"))
        record = {
            "id": job_id,
            "partner_id": partner_id,
            "type": type,
            "status": QUEUED,
            "progress": 0,
            "input": stored_input,
            quotas.RETAINED_FIELD: len(stored_input),
            "callback_url": callback_url or "",
            "created_at": repr(created_at),
            "priority": priority,
            "timeout_seconds": timeout_seconds,
            "attempts": 0,
            # Where result links point: the API's public base URL.
            "base_url": base_url,
            # Correlation, carried to the worker's logs and to the webhook.
            "request_id": request_id,
            "traceparent": traceparent or "",
        }
        pipe = self.guard.recorder()
        pipe.hset(job_key(job_id), mapping=record)
        pipe.zadd(partner_index(partner_id), {job_id: 0})
        pipe.zadd(partner_index(partner_id, QUEUED), {job_id: 0})
        pipe.zadd(QUEUED_KEY, {job_id: created_at})
        timeline.append(
            pipe,
            job_id,
            timeline.entry("accepted", at=created_at, request_id=request_id or None),
            timeline.entry("enqueued", at=created_at, queue=QUEUES[priority]),
            new=True,
        )
        self._enqueue(pipe, job_id, priority)
        if also is not None:
            also(pipe, {"id": job_id, "status": QUEUED, "created_at": created_at})
        fsync = quotas.admit_and_write(
            self.writer,
            pipe,
            partner_id=partner_id,
            queued_index=partner_index(partner_id, QUEUED),
            new_bytes=len(stored_input),
            quota=self.quota,
            rate=rate,
            fsync_wait_ms=self._fsync_wait_ms(),
        )
        if fsync is not None:
            self._check_durable(fsync)
        # What was just written, without reading it back (nor parsing the input again).
        written = self._decode(
            {name: str(value) for name, value in record.items() if name != "input"}
        )
        written["input"] = input
        return written

    def _enqueue(self, pipe: redis.client.Pipeline, job_id: str, priority: str) -> None:
        _ENQUEUER.enqueue(pipe, self.queue(priority), job_id)

    def _fsync_wait_ms(self) -> int | None:
        if self.durability != "fsync":
            return None
        return max(1, round(self.fsync_wait_seconds * 1000))

    def confirm_durable(self) -> None:
        """In `fsync` durability, return only once every write made so far is in the AOF
        (for a job stored earlier, e.g. before an idempotent replay of its answer).

        WAITAOF waits for the writes of the connection it is sent on, so one write is
        made before it on the same connection: the file is written in order, and once
        that write is fsynced every earlier one is. Raises NotDurable if Redis cannot
        confirm it within `fsync_wait_seconds`.
        """
        wait_ms = self._fsync_wait_ms()
        if wait_ms is None:
            return
        try:
            _, fsync = self.writer.run(
                _DURABILITY_MARK, [DURABILITY_KEY], [], fsync_wait_ms=wait_ms
            )
        except (redis.ResponseError, redis.TimeoutError, redis.ConnectionError) as exc:
            fsync = exc
        self._check_durable(fsync)

    @staticmethod
    def _check_durable(reply: Any) -> None:
        """Raise NotDurable unless WAITAOF's `reply` says the local AOF was fsynced."""
        if isinstance(reply, Exception):
            raise NotDurable(f"WAITAOF failed: {type(reply).__name__}") from reply
        local, _ = reply
        if local < 1:
            raise NotDurable("the append-only file was not fsynced in time")

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The stored record, decoded, or None (input and result included: see `view`)."""
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            return None
        return self._decode({k.decode(): v.decode() for k, v in raw.items()})

    def view(self, job_id: str) -> dict[str, Any] | None:
        """The record as views need it, or None: no input, and the result only if
        `public` shows it inline (`worker.reads`)."""
        reply = reads.read_view(
            self.redis, job_key(job_id), inline_result_bytes=self.inline_result_bytes
        )
        fields = reads.parse(reply)  # type: ignore[arg-type]
        return self._decode(fields) if fields is not None else None

    def result(self, job_id: str) -> tuple[str, Any] | None:
        """(status, result) of the job, reading nothing else; None if there is no job."""
        status, result = self.redis.hmget(job_key(job_id), ["status", "result"])
        if status is None:
            return None
        return status.decode(), json.loads(result) if result else None

    @staticmethod
    def _decode(stored: dict[str, str]) -> dict[str, Any]:
        """A record as the hash stores it (all text) → typed values."""
        record: dict[str, Any] = dict(stored)
        record["progress"] = int(record.get("progress") or 0)
        record["result_bytes"] = int(record.get("result_bytes") or len(record.get("result") or ""))
        for name in ("input", "result", "error"):
            record[name] = json.loads(record[name]) if record.get(name) else None
        for name in ("created_at", "started_at", "finished_at", "lease_until"):
            record[name] = float(record[name]) if record.get(name) else None
        record["callback_url"] = record.get("callback_url") or None
        record["event_id"] = record.get("event_id") or None
        record["run_id"] = record.get("run_id") or None
        record["attempts"] = int(record.get("attempts") or 0)
        record["timeout_seconds"] = int(record.get("timeout_seconds") or 600)
        record["priority"] = record.get("priority") or "normal"
        record["cancel_requested"] = record.get("cancel_requested") == "1"
        return record

    def page(
        self, partner_id: str, *, status: str | None, limit: int, cursor: str | None
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Up to `limit` of the partner's jobs, newest first, after `cursor` (a job id)."""
        start = f"({cursor}" if cursor else "+"
        found = self.redis.zrange(
            partner_index(partner_id, status),
            start,
            "-",
            desc=True,
            bylex=True,
            offset=0,
            num=limit + 1,
        )
        job_ids = [item.decode() for item in found]
        more = len(job_ids) > limit
        job_ids = job_ids[:limit]
        return self.many(job_ids), (job_ids[-1] if more and job_ids else None)

    def many(self, job_ids: list[str]) -> list[dict[str, Any]]:
        """The records of `job_ids` as `view` reads them (missing ones left out), each
        with its timeline and delivery, read in two round trips rather than three per job."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in job_ids:
                reads.read_view(pipe, job_key(job_id), inline_result_bytes=self.inline_result_bytes)
                pipe.lrange(timeline.key(job_id), 0, -1)
            replies = pipe.execute()
        records = []
        for reply, entries in zip(replies[::2], replies[1::2], strict=True):
            fields = reads.parse(reply)
            if fields is not None:
                record = self._decode(fields)
                record["timeline"] = [json.loads(entry) for entry in entries]
                records.append(record)
        with_events = [r for r in records if r["event_id"]]
        deliveries = self.outbox.get_many([r["event_id"] for r in with_events])
        for record, delivery in zip(with_events, deliveries, strict=True):
            record["delivery"] = delivery.public() if delivery is not None else None
        return records

    def _guarded(
        self,
        job_id: str,
        change: Callable[[dict[str, Any], redis.client.Pipeline], bool],
        *,
        known: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Apply `change(record, pipeline)` atomically; None if the job is gone or `change`
        declines, else the record `change` saw.

        `change` queues its writes on the pipeline and returns True; if the job
        changed meanwhile it is called again with the job as it is now. `known`
        is a record `start` returned (it carries its version), to save the read.
        """
        record = known if known is not None else self._snapshot(job_id)
        while record is not None:
            writes = self.guard.recorder()
            if not change(record, writes):
                writes.reset()
                return None
            outcome, now = self.guard.apply(
                job_key(job_id), timeline.key(job_id), record["version"], writes
            )
            if outcome is Outcome.APPLIED:
                return record
            record = self._from_snapshot(now)
        return None

    def _snapshot(self, job_id: str) -> dict[str, Any] | None:
        """The record with its timeline and version (see `worker.guard`), or None."""
        return self._from_snapshot(self.guard.read(job_key(job_id), timeline.key(job_id)))

    def _from_snapshot(self, snapshot: Snapshot | None) -> dict[str, Any] | None:
        if snapshot is None:
            return None
        record = self._decode(snapshot.fields)
        record["timeline"] = [json.loads(entry) for entry in snapshot.timeline]
        record["version"] = snapshot.version
        return record

    def start(self, job_id: str, *, run_id: str, lease_seconds: float) -> dict[str, Any] | None:
        """Queued → processing under a lease held by `run_id`; None if not queued any more.

        The record returned can be passed to `finish` as `known`.
        """
        now = clock.now()
        snapshot = self._start(
            keys=[job_key(job_id), timeline.key(job_id), QUEUED_KEY, LEASES_KEY],
            args=[
                job_id,
                repr(now),
                run_id,
                repr(now + lease_seconds),
                clock.rfc3339(now),
                timeline.MAX_ENTRIES,
                QUEUED,
                PROCESSING,
                partner_index("%s", QUEUED),
                partner_index("%s", PROCESSING),
            ],
        )
        return self._from_snapshot(snapshot)

    def renew(self, job_id: str, *, run_id: str, lease_seconds: float) -> dict[str, Any] | None:
        """Extend the lease of a run that still holds it; None if it lost it."""
        until = clock.now() + lease_seconds

        def extend(record: dict[str, Any], pipe: redis.client.Pipeline) -> bool:
            if record["status"] != PROCESSING or record["run_id"] != run_id:
                return False
            pipe.hset(job_key(job_id), "lease_until", repr(until))
            pipe.zadd(LEASES_KEY, {job_id: until})
            return True

        return self._guarded(job_id, extend)

    def requeue(
        self,
        job_id: str,
        *,
        run_id: str | None,
        delay_seconds: float = 0.0,
        lapsed_before: float | None = None,
        known: dict[str, Any] | None = None,
        ran_seconds: float | None = None,
        waited_seconds: float | None = None,
    ) -> bool:
        """Processing → queued again, now or after `delay_seconds` (a retry or a recovery).

        Only the run holding the lease (`run_id`) may do it, or the reaper
        (`lapsed_before`: only if the lease lapsed before that time).
        `known`, `ran_seconds` and `waited_seconds` as for `finish`.
        """
        due = clock.now() + delay_seconds

        def back(record: dict[str, Any], pipe: redis.client.Pipeline) -> bool:
            if record["status"] != PROCESSING:
                return False
            if run_id is not None and record["run_id"] != run_id:
                return False
            if lapsed_before is not None and (record["lease_until"] or 0) >= lapsed_before:
                return False
            pipe.hset(job_key(job_id), mapping={"status": QUEUED, "run_id": "", "lease_until": ""})
            pipe.hdel(job_key(job_id), "started_at")
            pipe.zrem(LEASES_KEY, job_id)
            pipe.zadd(QUEUED_KEY, {job_id: due})
            self._move(pipe, record, QUEUED)
            if lapsed_before is not None:
                timeline.record(pipe, job_id, "recovered", attempt=record["attempts"])
            elif delay_seconds > 0:
                timeline.record(
                    pipe,
                    job_id,
                    "retry_scheduled",
                    attempt=record["attempts"],
                    delay_seconds=round(delay_seconds, 3),
                )
            self._observe_run(pipe, record, ran_seconds, waited_seconds)
            if delay_seconds <= 0:
                self._enqueue(pipe, job_id, record["priority"])
            else:
                # The reaper puts it on its queue when it falls due.
                pipe.zadd(RETRY_KEY, {job_id: due})
            return True

        return self._guarded(job_id, back, known=known) is not None

    def enqueue_again(self, job_id: str) -> bool:
        """Put a queued job that is on no queue back on its queue (the reaper's repair)."""

        def again(record: dict[str, Any], pipe: redis.client.Pipeline) -> bool:
            pipe.zrem(RETRY_KEY, job_id)
            if record["status"] != QUEUED:
                pipe.zrem(QUEUED_KEY, job_id)
                return True
            pipe.zadd(QUEUED_KEY, {job_id: clock.now()})
            self._enqueue(pipe, job_id, record["priority"])
            return True

        return self._guarded(job_id, again) is not None

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a job: a queued one at once, a running one at its next chance.

        Returns "cancelled" (it was queued and will never run), "processing"
        (the request is recorded on the running job, whose end will be
        `cancelled`), "ended" (it had already ended: too late), or None if there
        is no such job. Whether a running job takes the request is decided by
        Redis in one step, so a run that finishes at the same instant either
        ended first ("ended") or sees the request.
        """
        while True:
            snapshot = self._cancel(
                keys=[job_key(job_id), timeline.key(job_id)],
                args=[clock.rfc3339(clock.now()), timeline.MAX_ENTRIES, PROCESSING],
            )
            record = self._from_snapshot(snapshot)
            if record is None:
                return None
            if record["status"] == PROCESSING:
                return PROCESSING
            if record["status"] != QUEUED:
                return "ended"
            if self.finish(
                job_id,
                status=CANCELLED,
                expect=(QUEUED,),
                known=record,
                error={"code": "cancelled", "message": "cancelled before it started"},
            ):
                return CANCELLED
            # It started (or ended) meanwhile: decide again.

    def set_progress(self, job_id: str, percent: int) -> None:
        self.redis.hset(job_key(job_id), "progress", percent)

    def finish(
        self,
        job_id: str,
        *,
        status: str,
        result: Any = None,
        error: dict[str, str] | None = None,
        run_id: str | None = None,
        expect: tuple[str, ...] = (PROCESSING,),
        known: dict[str, Any] | None = None,
        ran_seconds: float | None = None,
        waited_seconds: float | None = None,
    ) -> bool:
        """Move a job to a terminal status and, if it has a callback URL, queue its webhook.

        Applies only while the job is in an `expect`ed status (and, with
        `run_id`, still held by that run); returns whether it applied.
        `known`: the record `start` returned, to save a read. `ran_seconds`
        and `waited_seconds`: how long the run took and, for a first run, how
        long the job had waited on its queue, recorded with the outcome (so
        that starting a job stays one round trip).
        """
        finished_at = clock.now()
        # Serialised before the change: a result that is not JSON raises here, changing nothing.
        stored_result = (
            json.dumps(result, separators=(",", ":"), allow_nan=False)
            if status == COMPLETED
            else None
        )

        def end(record: dict[str, Any], pipe: redis.client.Pipeline) -> bool:
            nonlocal status, result, error
            if record["status"] not in expect:
                return False
            if run_id is not None and record["run_id"] != run_id:
                return False
            if record["cancel_requested"] and status != CANCELLED:
                # A cancel request was answered 202 while the job ran: its end is `cancelled`.
                status, result, error = CANCELLED, None, CANCELLED_WHILE_RUNNING
            fields: dict[str, Any] = {
                "status": status,
                "finished_at": repr(finished_at),
                "run_id": "",
                "lease_until": "",
            }
            if status == COMPLETED:
                fields["progress"] = 100
                fields["result"] = stored_result
            if error is not None:
                fields["error"] = json.dumps(error, separators=(",", ":"))
            if record["callback_url"]:
                fields["event_id"] = ids.new_id("msg")
                updated = {
                    **record,
                    **fields,
                    "result": result,
                    "error": error,
                    "progress": fields.get("progress", record["progress"]),
                    "finished_at": finished_at,
                    "event_id": fields["event_id"],
                }
                # The timeline the webhook carries ends with this very step.
                updated["timeline"] = [
                    *record["timeline"],
                    {
                        "event": "cancelled" if status == CANCELLED else "finished",
                        "at": clock.rfc3339(finished_at),
                        "status": status,
                    },
                ]
                self.outbox.add(
                    self._message(updated, status, finished_at),
                    record["callback_url"],
                    pipeline=pipe,
                )
            pipe.hset(job_key(job_id), mapping=fields)
            if "result" in fields:
                quotas.count_result(
                    pipe, job_key(job_id), record["partner_id"], len(fields["result"])
                )
            pipe.hdel(job_key(job_id), "cancel_requested")
            pipe.zrem(LEASES_KEY, job_id)
            pipe.zrem(QUEUED_KEY, job_id)
            pipe.zrem(RETRY_KEY, job_id)
            pipe.zadd(RETENTION_KEY, {job_id: finished_at + self.retention_seconds})
            self._move(pipe, record, status)
            pipe.publish(done_channel(job_id), status)
            labels = {"type": record["type"], "status": status}
            pm.counter(pipe, "postback_jobs_finished_total", labels)
            self._observe_run(pipe, record, ran_seconds, waited_seconds)
            timeline.record(
                pipe,
                job_id,
                "cancelled" if status == CANCELLED else "finished",
                at=finished_at,
                status=status,
            )
            return True

        return self._guarded(job_id, end, known=known) is not None

    def remove(self, job_id: str) -> None:
        """Delete a finished job and everything that belongs to it (retention).

        A webhook on the dead-letter list stays there: dead letters never expire silently.
        The partner's retained bytes go down by what the job held, in the same transaction.
        """
        record = self.view(job_id)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.zrem(RETENTION_KEY, job_id)
            if record is not None:
                quotas.forget(pipe, job_key(job_id))
                pipe.delete(timeline.key(job_id))
                pipe.zrem(partner_index(record["partner_id"]), job_id)
                pipe.zrem(partner_index(record["partner_id"], record["status"]), job_id)
                delivery = self.outbox.get(record["event_id"]) if record["event_id"] else None
                if delivery is not None and not delivery.dead_letter_id:
                    self.outbox.forget(delivery.id, delivery.owner, pipeline=pipe)
            pipe.execute()

    def _message(self, record: dict[str, Any], status: str, at: float) -> Message:
        """The webhook for a job that just reached `status`."""
        payload = {
            "type": EVENT_TYPES[status],
            "timestamp": clock.rfc3339(at),
            "data": self.public(record, delivery=PENDING_DELIVERY),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Message(
            id=record["event_id"],
            owner=record["partner_id"],
            type=EVENT_TYPES[status],
            body=body,
            subject=record["id"],
            created_at=at,
            headers={
                "x-request-id": record.get("request_id") or "",
                "traceparent": record.get("traceparent") or "",
            },
        )

    @staticmethod
    def _observe_run(
        pipe: redis.client.Pipeline,
        record: dict[str, Any],
        ran_seconds: float | None,
        waited_seconds: float | None,
    ) -> None:
        if ran_seconds is not None:
            pm.observe(pipe, "postback_job_run_seconds", ran_seconds, {"type": record["type"]})
        if waited_seconds is not None:
            labels = {"priority": record["priority"]}
            pm.observe(pipe, "postback_job_queue_wait_seconds", waited_seconds, labels)

    @staticmethod
    def _move(pipe: redis.client.Pipeline, record: dict[str, Any], status: str) -> None:
        pipe.zrem(partner_index(record["partner_id"], record["status"]), record["id"])
        pipe.zadd(partner_index(record["partner_id"], status), {record["id"]: 0})

    def public(
        self, record: dict[str, Any], *, delivery: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The job as `GET /v1/jobs/{id}` returns it (and the webhook's `data`)."""
        job: dict[str, Any] = {
            "id": record["id"],
            "type": record["type"],
            "status": record["status"],
            "priority": record.get("priority") or "normal",
            "progress": record["progress"],
            "attempts": record.get("attempts") or 0,
            "created_at": clock.rfc3339(record["created_at"]),
            "started_at": clock.rfc3339(record["started_at"]),
            "finished_at": clock.rfc3339(record["finished_at"]),
        }
        if record.get("request_id"):
            job["request_id"] = record["request_id"]
        if record["status"] == COMPLETED:
            size = record.get("result_bytes") or len(json.dumps(record["result"]))
            if size > self.inline_result_bytes:
                job["result_url"] = self.links.url(record.get("base_url") or "", record["id"])
            else:
                job["result"] = record["result"]
        if record["error"] is not None:
            job["error"] = record["error"]
        if record["callback_url"]:
            job["callback_url"] = record["callback_url"]
            if delivery is None:
                delivery = record.get("delivery")
            if delivery is None and record["event_id"]:
                found = self.outbox.get(record["event_id"])
                delivery = found.public() if found is not None else None
            job["delivery"] = delivery or PENDING_DELIVERY
        job["timeline"] = (
            record["timeline"] if "timeline" in record else timeline.read(self.redis, record["id"])
        )
        return job
