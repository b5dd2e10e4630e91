"""The typed job record: its hash round trip, its statuses and its pure public view."""

from __future__ import annotations

import json

from callbacks.model import PENDING_DELIVERY
from postback import clock
from worker.model import EventType, Job, JobRead, JobStatus, Priority
from worker.view import job_json, public, shows_result_link, webhook


def ended_job(**fields: object) -> Job:
    values: dict = {
        "id": "job_01",
        "partner_id": "ptn_a",
        "type": "echo",
        "status": JobStatus.COMPLETED,
        "created_at": 1_700_000_000.25,
        "started_at": 1_700_000_001.5,
        "finished_at": 1_700_000_002.75,
        "priority": Priority.HIGH,
        "attempts": 1,
        "progress": 100,
        "input": {"a": 1},
        "result": {"ok": True},
        "callback_url": "https://example.com/hook",
        "event_id": "msg_01",
        "request_id": "req_1",
    }
    values.update(fields)
    return Job(**values)


def test_a_job_read_back_from_its_hash_is_the_same_job():
    """`Job.from_hash(job.to_hash())` gives the job back (the result's size is derived)."""
    job = ended_job(error=None, cancel_requested=True, run_id="r1", lease_until=5.0)
    stored = {name: str(value) for name, value in job.to_hash().items()}
    again = Job.from_hash(stored)
    assert again == Job(**{**job.__dict__, "result_bytes": len(stored["result"])})
    assert again.status is JobStatus.COMPLETED and again.priority is Priority.HIGH


def test_statuses_and_event_types_are_the_api_strings():
    """Each status is its API string; each terminal status names its webhook's type."""
    assert [str(s) for s in JobStatus] == [
        "queued",
        "processing",
        "completed",
        "failed",
        "cancelled",
    ]
    assert EventType.of(JobStatus.CANCELLED) == "job.cancelled"
    assert JobStatus.FAILED.terminal and not JobStatus.PROCESSING.terminal


def test_the_public_view_is_built_from_its_arguments_alone():
    """Without a delivery the view says pending; with a result link the result is not inline."""
    job = ended_job()
    shown = public(JobRead(job, ({"event": "accepted"},)), result_url=None)
    assert shown["delivery"] == PENDING_DELIVERY and shown["result"] == {"ok": True}
    assert shown["created_at"] == clock.rfc3339(job.created_at) and "input" not in shown
    linked = job_json(job, timeline=(), delivery=None, result_url="https://x/v1/results/t")
    assert "result" not in linked and linked["result_url"] == "https://x/v1/results/t"
    assert shows_result_link(ended_job(result_bytes=11), inline_result_bytes=10)


def test_the_webhook_carries_the_public_view_of_the_ended_job():
    """The webhook's body is its type, its time and the job's view; its id is the event id."""
    job = ended_job()
    message = webhook(job, timeline=(), result_url=None)
    body = json.loads(message.body)
    assert message.id == "msg_01" and message.subject == "job_01" and message.owner == "ptn_a"
    assert body["type"] == "job.completed" and body["data"]["status"] == "completed"
    assert body["timestamp"] == clock.rfc3339(job.finished_at)
