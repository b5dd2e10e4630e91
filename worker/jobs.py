"""Postback's record of each job, its per-partner indexes, and its public shape.

Keys: `pb:job:{id}` (a hash), `pb:partner:{pid}:jobs` and
`pb:partner:{pid}:jobs:{status}` (sorted sets of job ids, all at score 0, so
they sort by id, which is time-ordered: paging is a range query by id).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import redis
from rq import Queue

from callbacks.outbox import Event, Outbox
from postback import clock, ids

QUEUE_NAME = "postback"
RUN_JOB = "worker.tasks.run_job"

QUEUED = "queued"
PROCESSING = "processing"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
STATUSES = (QUEUED, PROCESSING, COMPLETED, FAILED, CANCELLED)
TERMINAL = (COMPLETED, FAILED, CANCELLED)

EVENT_TYPES = {COMPLETED: "job.completed", FAILED: "job.failed", CANCELLED: "job.cancelled"}


def job_key(job_id: str) -> str:
    return f"pb:job:{job_id}"


def partner_index(partner_id: str, status: str | None = None) -> str:
    base = f"pb:partner:{partner_id}:jobs"
    return f"{base}:{status}" if status else base


class JobStore:
    """Create, read, list and move jobs through their states."""

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.outbox = Outbox(client)
        self.queue = Queue(QUEUE_NAME, connection=client)

    def create(
        self,
        *,
        partner_id: str,
        type: str,
        input: dict[str, Any],
        callback_url: str | None,
        timeout_seconds: int,
        also: Callable[[redis.client.Pipeline, dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Record a new job and put it on the queue, in one transaction.

        `also(pipeline, job)` adds the caller's own writes to that transaction
        (the API stores an idempotent response there).
        """
        job_id = ids.new_id("job")
        created_at = clock.now()
        record = {
            "id": job_id,
            "partner_id": partner_id,
            "type": type,
            "status": QUEUED,
            "progress": 0,
            "input": json.dumps(input, separators=(",", ":")),
            "callback_url": callback_url or "",
            "created_at": repr(created_at),
        }
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.multi()
            pipe.hset(job_key(job_id), mapping=record)
            pipe.zadd(partner_index(partner_id), {job_id: 0})
            pipe.zadd(partner_index(partner_id, QUEUED), {job_id: 0})
            self.queue.enqueue_call(
                RUN_JOB,
                args=(job_id,),
                job_id=job_id,
                timeout=timeout_seconds,
                result_ttl=0,
                failure_ttl=7 * 86400,
                pipeline=pipe,
            )
            if also is not None:
                also(pipe, {"id": job_id, "status": QUEUED, "created_at": created_at})
            pipe.execute()
        return self.get(job_id)  # type: ignore[return-value]

    def get(self, job_id: str) -> dict[str, Any] | None:
        """The stored record, decoded, or None."""
        raw = self.redis.hgetall(job_key(job_id))
        if not raw:
            return None
        record: dict[str, Any] = {k.decode(): v.decode() for k, v in raw.items()}
        record["progress"] = int(record.get("progress") or 0)
        for name in ("input", "result", "error"):
            record[name] = json.loads(record[name]) if record.get(name) else None
        for name in ("created_at", "started_at", "finished_at"):
            record[name] = float(record[name]) if record.get(name) else None
        record["callback_url"] = record.get("callback_url") or None
        record["event_id"] = record.get("event_id") or None
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
        records = [r for r in (self.get(job_id) for job_id in job_ids) if r is not None]
        return records, (job_ids[-1] if more and job_ids else None)

    def start(self, job_id: str) -> dict[str, Any] | None:
        """Move a queued job to processing; None if it is not queued any more."""
        record = self.get(job_id)
        if record is None or record["status"] != QUEUED:
            return None
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(
                job_key(job_id), mapping={"status": PROCESSING, "started_at": repr(clock.now())}
            )
            self._move(pipe, record, PROCESSING)
            pipe.execute()
        return self.get(job_id)

    def set_progress(self, job_id: str, percent: int) -> None:
        self.redis.hset(job_key(job_id), "progress", percent)

    def finish(
        self,
        job_id: str,
        *,
        status: str,
        result: Any = None,
        error: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """Move a job to a terminal status and, if it has a callback URL, queue its webhook."""
        record = self.get(job_id)
        if record is None:
            raise LookupError(job_id)
        finished_at = clock.now()
        fields: dict[str, Any] = {"status": status, "finished_at": repr(finished_at)}
        if status == COMPLETED:
            fields["progress"] = 100
            fields["result"] = json.dumps(result, separators=(",", ":"), allow_nan=False)
        if error is not None:
            fields["error"] = json.dumps(error, separators=(",", ":"))
        event = None
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
            event = self._event(updated, status, finished_at)
        with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(job_key(job_id), mapping=fields)
            self._move(pipe, record, status)
            if event is not None:
                self.outbox.add(event, pipeline=pipe)
            pipe.execute()
        return self.get(job_id)  # type: ignore[return-value]

    def _event(self, record: dict[str, Any], status: str, at: float) -> Event:
        """The webhook for a job that just reached `status`."""
        payload = {
            "type": EVENT_TYPES[status],
            "timestamp": clock.rfc3339(at),
            "data": self.public(
                record,
                delivery={
                    "status": "pending",
                    "attempts": 0,
                    "last_attempt_at": None,
                    "next_attempt_at": None,
                },
            ),
        }
        body = json.dumps(payload, separators=(",", ":")).encode()
        return Event(
            id=record["event_id"],
            owner=record["partner_id"],
            url=record["callback_url"],
            body=body,
            subject=record["id"],
            created_at=at,
        )

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
            "progress": record["progress"],
            "created_at": clock.rfc3339(record["created_at"]),
            "started_at": clock.rfc3339(record["started_at"]),
            "finished_at": clock.rfc3339(record["finished_at"]),
        }
        if record["status"] == COMPLETED:
            job["result"] = record["result"]
        if record["error"] is not None:
            job["error"] = record["error"]
        if record["callback_url"]:
            job["callback_url"] = record["callback_url"]
            if delivery is None and record["event_id"]:
                delivery = self.outbox.delivery_status(record["event_id"])
            job["delivery"] = delivery or {
                "status": "pending",
                "attempts": 0,
                "last_attempt_at": None,
                "next_attempt_at": None,
            }
        return job
