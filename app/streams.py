"""`GET /v1/jobs/{id}/events`: a job's timeline and progress, live, as server-sent events.

Each timeline entry is a message named after it (`started`, `delivered`, …)
whose data is the entry plus the job's `status` and `progress`; progress
reports are `progress` messages, at most one every `PROGRESS_EVERY_SECONDS`.
When the job has ended and its webhook (if any) is settled, `end` carries the
job as `GET /v1/jobs/{id}` shows it and the stream closes.

Message ids are `{n}.{p}`: `n` the number of the last timeline entry sent
(`postback.timeline.numbered`), `p` the last progress sent; `end`'s is
`{n}.{p}.end`. A client that reconnects with `Last-Event-ID` gets exactly the
messages after that one; after `end` it gets `204 No Content`, which tells an
EventSource to stop reconnecting.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Any

from flask import Blueprint, Response, g

from app import sse
from app.auth import partner_required
from app.errors import Malformed, NotFound
from app.services import Services, services
from callbacks.model import DeliveryStatus
from postback import ids, timeline
from worker.model import Job

bp = Blueprint("streams", __name__, url_prefix="/v1/jobs")

PROGRESS_EVERY_SECONDS = 0.1

_CURSOR = re.compile(r"(\d{1,12})\.(\d{1,3})(\.end)?")


@dataclass
class Cursor:
    """Where a client is in a job's stream: the last entry and progress it was sent."""

    entry: int = 0
    progress: int = 0
    ended: bool = False

    @classmethod
    def parse(cls, text: str | None) -> Cursor:
        if text is None:
            return cls()
        found = _CURSOR.fullmatch(text)
        if found is None:
            raise Malformed(
                "Last-Event-ID is not an id of this stream",
                errors={"Last-Event-ID": ["must be an id this stream sent, like 4.50"]},
            )
        return cls(int(found[1]), int(found[2]), found[3] is not None)

    def id(self) -> str:
        return f"{self.entry}.{self.progress}"


@bp.get("/<job_id>/events")
@partner_required
def job_events(job_id: str) -> Response | tuple[str, int]:
    """The job's events as they happen (`text/event-stream`); see the module docstring."""
    cursor = Cursor.parse(sse.last_event_id())
    svc = services()
    job = svc.jobs.view(job_id) if ids.is_id("job", job_id) else None
    if job is None or job.partner_id != g.partner_id:
        raise NotFound(f"no job {job_id}")
    if cursor.ended and _settled(svc, job):
        return "", 204
    source = _JobSource(svc, job_id, cursor)
    return sse.stream(
        waits=svc.waits,
        hub=svc.hub,
        partner_id=g.partner_id,
        channels=(timeline.channel(job_id),),
        step=source.step,
        pace=source.pace,
    )


def _settled(svc: Services, job: Job) -> bool:
    """Whether the job has ended and its webhook, if it has one, is delivered or dead."""
    if not job.status.terminal:
        return False
    if not job.callback_url or not job.event_id:
        return True
    delivery = svc.jobs.outbox.get(job.event_id)
    return delivery is None or delivery.status in (DeliveryStatus.DELIVERED, DeliveryStatus.DEAD)


class _JobSource:
    """What one job's stream sends on each wake."""

    def __init__(self, svc: Services, job_id: str, cursor: Cursor) -> None:
        self.svc = svc
        self.job_id = job_id
        self.cursor = Cursor(cursor.entry, cursor.progress)
        self.pace = sse.Pace()
        self.progress_sent_at = 0.0

    def step(self) -> tuple[list[bytes], bool]:
        history = self.svc.jobs.history(self.job_id)
        if history is None:
            return [], True  # removed (retention): nothing more will happen
        messages = self._entries(history.job, history.entries)
        job = history.job
        if not _settled(self.svc, job):
            messages.extend(self._progress(job))
            return messages, False
        # Settled after the read above: what settled it is in the timeline by now.
        again = self.svc.jobs.history(self.job_id)
        if again is not None:
            job = again.job
            messages.extend(self._entries(job, again.entries))
        self.cursor.progress = job.progress
        read = self.svc.jobs.read(self.job_id)
        shown: Any = self.svc.jobs.public(read) if read is not None else None
        messages.append(sse.message("end", f"{self.cursor.id()}.end", shown))
        return messages, True

    def _entries(self, job: Job, entries: tuple[tuple[int, dict[str, Any]], ...]) -> list[bytes]:
        sent = []
        for number, entry in entries:
            if number <= self.cursor.entry:
                continue
            self.cursor.entry = number
            data = {**entry, "status": str(job.status), "progress": job.progress}
            sent.append(sse.message(str(entry.get("event", "entry")), self.cursor.id(), data))
        return sent

    def _progress(self, job: Job) -> list[bytes]:
        if job.progress == self.cursor.progress:
            return []
        now = time.monotonic()
        due = self.progress_sent_at + PROGRESS_EVERY_SECONDS
        if now < due:
            self.pace.at(due)  # coalesced: the latest value goes out when it is due
            return []
        self.progress_sent_at = now
        self.cursor.progress = job.progress
        data = {"progress": job.progress, "status": str(job.status)}
        return [sse.message("progress", self.cursor.id(), data)]
