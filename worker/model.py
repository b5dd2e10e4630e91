"""The nouns of the job core: a job, its status and priority, and a job as one read saw it.

A `Job` is frozen and crosses the Redis boundary through `from_hash` (the
hash as text, every field optional but the id) and `to_hash` (what is
stored). Statuses, priorities and webhook event types are `StrEnum`s whose
values are the strings the API and the webhooks carry.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from callbacks.model import Delivery


class JobStatus(StrEnum):
    """`queued → processing → completed | failed | cancelled`."""

    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED})


class Priority(StrEnum):
    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


class EventType(StrEnum):
    """The `type` of the webhook a job sends when it ends."""

    COMPLETED = "job.completed"
    FAILED = "job.failed"
    CANCELLED = "job.cancelled"

    @classmethod
    def of(cls, status: JobStatus) -> EventType:
        return cls(f"job.{status}")


class Cancel(StrEnum):
    """What a cancel request came to."""

    # The job was queued; it is cancelled and will never run.
    CANCELLED = "cancelled"
    # The job is running; the request is recorded and its end will be `cancelled`.
    REQUESTED = "requested"
    # The job had already ended: too late.
    ENDED = "ended"


# How long a job may run when its hash does not say (records older than the field).
DEFAULT_TIMEOUT_SECONDS = 600


def _json(text: str | None) -> Any:
    return json.loads(text) if text else None


def _time(text: str | None) -> float | None:
    return float(text) if text else None


@dataclass(frozen=True, kw_only=True)
class Job:
    """One job as its hash stores it; `input` and `result` are None when not read."""

    id: str
    partner_id: str
    type: str
    status: JobStatus
    created_at: float
    progress: int = 0
    priority: Priority = Priority.NORMAL
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS
    attempts: int = 0
    callback_url: str | None = None
    # Where result links point: the API's public base URL.
    base_url: str = ""
    # Correlation, carried to the worker's logs and to the webhook.
    request_id: str = ""
    traceparent: str = ""
    input: Any = None
    result: Any = None
    # The stored result's size in bytes (known without reading the result).
    result_bytes: int = 0
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    run_id: str | None = None
    lease_until: float | None = None
    # The id of the job's webhook message, once it has one.
    event_id: str | None = None
    cancel_requested: bool = False

    @classmethod
    def from_hash(cls, stored: Mapping[str, str]) -> Job:
        """A job from its hash as text (a view read adds `result_bytes`)."""
        result = stored.get("result")
        return cls(
            id=stored["id"],
            partner_id=stored.get("partner_id") or "",
            type=stored.get("type") or "",
            status=JobStatus(stored.get("status") or JobStatus.QUEUED),
            created_at=float(stored.get("created_at") or 0),
            progress=int(stored.get("progress") or 0),
            priority=Priority(stored.get("priority") or Priority.NORMAL),
            timeout_seconds=int(stored.get("timeout_seconds") or DEFAULT_TIMEOUT_SECONDS),
            attempts=int(stored.get("attempts") or 0),
            callback_url=stored.get("callback_url") or None,
            base_url=stored.get("base_url") or "",
            request_id=stored.get("request_id") or "",
            traceparent=stored.get("traceparent") or "",
            input=_json(stored.get("input")),
            result=_json(result),
            result_bytes=int(stored.get("result_bytes") or len(result or "")),
            error=_json(stored.get("error")),
            started_at=_time(stored.get("started_at")),
            finished_at=_time(stored.get("finished_at")),
            run_id=stored.get("run_id") or None,
            lease_until=_time(stored.get("lease_until")),
            event_id=stored.get("event_id") or None,
            cancel_requested=stored.get("cancel_requested") == "1",
        )

    def to_hash(self) -> dict[str, str | int]:
        """The job's hash: fields that are unset (None, False) are left out."""
        stored: dict[str, str | int] = {
            "id": self.id,
            "partner_id": self.partner_id,
            "type": self.type,
            "status": str(self.status),
            "progress": self.progress,
            "callback_url": self.callback_url or "",
            "created_at": repr(self.created_at),
            "priority": str(self.priority),
            "timeout_seconds": self.timeout_seconds,
            "attempts": self.attempts,
            "base_url": self.base_url,
            "request_id": self.request_id,
            "traceparent": self.traceparent,
        }
        if self.input is not None:
            stored["input"] = json.dumps(self.input, separators=(",", ":"))
        if self.result is not None:
            stored["result"] = json.dumps(self.result, separators=(",", ":"), allow_nan=False)
        if self.error is not None:
            stored["error"] = json.dumps(self.error, separators=(",", ":"))
        for name in ("started_at", "finished_at", "lease_until"):
            value = getattr(self, name)
            if value is not None:
                stored[name] = repr(value)
        if self.run_id:
            stored["run_id"] = self.run_id
        if self.event_id:
            stored["event_id"] = self.event_id
        if self.cancel_requested:
            stored["cancel_requested"] = "1"
        return stored


@dataclass(frozen=True)
class JobRead:
    """A job with what its view shows beside it: its timeline and its webhook's delivery."""

    job: Job
    timeline: tuple[dict[str, Any], ...]
    # None when the job has no webhook yet (or it was removed).
    delivery: Delivery | None = None


@dataclass(frozen=True)
class JobHistory:
    """A job with its timeline entries, each with its number (`timeline.numbered`), as one
    read saw them: what a job's event stream sends from."""

    job: Job
    entries: tuple[tuple[int, dict[str, Any]], ...]


@dataclass(frozen=True)
class JobSnapshot:
    """A job, its timeline and their version (see `worker.guard`), as one read saw them.

    What a guarded change is computed from; `start` returns one, which the run
    passes back to `finish` to save a read.
    """

    job: Job
    timeline: tuple[dict[str, Any], ...]
    version: str
