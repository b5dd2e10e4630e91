"""What a job looks like from outside: `GET /v1/jobs/{id}` and the data of its webhook.

Pure functions of typed values: the caller reads the timeline and the
delivery, and signs the result link when `shows_result_link` says one is
shown; nothing here talks to Redis.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from callbacks.model import PENDING_DELIVERY, Delivery, Message
from postback import clock
from worker.model import EventType, Job, JobRead, JobStatus


def shows_result_link(job: Job, *, inline_result_bytes: int) -> bool:
    """Whether the job's view links to its result instead of showing it inline."""
    if job.status is not JobStatus.COMPLETED:
        return False
    size = job.result_bytes or len(json.dumps(job.result))
    return size > inline_result_bytes


def public(read: JobRead, *, result_url: str | None = None) -> dict[str, Any]:
    """The job as `GET /v1/jobs/{id}` returns it.

    `result_url`: the signed link to a completed job's result, given when
    `shows_result_link`; without it the result is shown inline.
    """
    return job_json(read.job, timeline=read.timeline, delivery=read.delivery, result_url=result_url)


def job_json(
    job: Job,
    *,
    timeline: Sequence[dict[str, Any]],
    delivery: Delivery | None,
    result_url: str | None,
) -> dict[str, Any]:
    """The public job object (also the webhook's `data`); see `public`."""
    shown: dict[str, Any] = {
        "id": job.id,
        "type": job.type,
        "status": str(job.status),
        "priority": str(job.priority),
        "progress": job.progress,
        "attempts": job.attempts,
        "created_at": clock.rfc3339(job.created_at),
        "started_at": clock.rfc3339(job.started_at),
        "finished_at": clock.rfc3339(job.finished_at),
    }
    if job.request_id:
        shown["request_id"] = job.request_id
    if job.status is JobStatus.COMPLETED:
        if result_url is not None:
            shown["result_url"] = result_url
        else:
            shown["result"] = job.result
    if job.error is not None:
        shown["error"] = job.error
    if job.callback_url:
        shown["callback_url"] = job.callback_url
        shown["delivery"] = delivery.public() if delivery is not None else dict(PENDING_DELIVERY)
    shown["timeline"] = list(timeline)
    return shown


def webhook(job: Job, *, timeline: Sequence[dict[str, Any]], result_url: str | None) -> Message:
    """The webhook of a job that has just ended (`job.event_id` is its id)."""
    if job.event_id is None or job.finished_at is None:
        raise ValueError(f"job {job.id} has not ended with a webhook")
    event = EventType.of(job.status)
    payload = {
        "type": str(event),
        "timestamp": clock.rfc3339(job.finished_at),
        "data": job_json(job, timeline=timeline, delivery=None, result_url=result_url),
    }
    return Message(
        id=job.event_id,
        owner=job.partner_id,
        type=str(event),
        body=json.dumps(payload, separators=(",", ":")).encode(),
        subject=job.id,
        created_at=job.finished_at,
        headers={"x-request-id": job.request_id, "traceparent": job.traceparent},
    )
