"""Console: find any partner's jobs (`/console/jobs`) and look at one (`/console/jobs/<id>`).

The search is the partner API's listing (`GET /v1/jobs`, `Listing.page`) for
the partner chosen, its query the API's `JobListQuery` with the partner and a
time window added; a job id goes straight to its page. A job's page is the
admin API's view of it (`GET /v1/admin/jobs/{id}`, `admin_job_view`), with its
input and the attempt log of its webhook (`GET /v1/jobs/{id}/deliveries`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from flask import Blueprint, Response, redirect, request, url_for
from marshmallow import RAISE, fields, validate

from app.admin import admin_view
from app.console import web
from app.console.sessions import Kind
from app.errors import NotFound
from app.jobs import delivery_attempts
from app.schemas import JobListQuery, load
from app.services import services
from postback import ids, timeline
from worker import jobs as js

bp = Blueprint("console_jobs", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")

# The partner menu lists at most this many (oldest first); a chosen one is always in it.
PARTNERS_LISTED = 1000
_PARTNER_PAGE = 100


class JobSearch(JobListQuery):
    """`GET /console/jobs`: the API's `JobListQuery` (status, limit, cursor) for the
    partner `partner_id`, created at or after `since` and before `until` (UTC when
    no offset is given, as a `datetime-local` input sends them); or a job's `id`."""

    class Meta:
        unknown = RAISE

    partner_id = fields.String(load_default=None, validate=validate.Length(min=1, max=100))
    since = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    until = fields.AwareDateTime(load_default=None, default_timezone=UTC)
    id = fields.String(load_default=None, validate=validate.Length(min=1, max=100))


@bp.get("/jobs")
@web.signed_in(Kind.ADMIN)
def index() -> tuple[str, int] | Response:
    """The search form; with a partner chosen, a page of its jobs, newest first."""
    args = web.filled(request.args)
    query = load(JobSearch, args)
    if query["id"] is not None:
        return _to_job(query["id"].strip())
    svc = services()
    items: list[dict[str, Any]] = []
    next_url = None
    partner = None
    if query["partner_id"] is not None:
        partner = svc.partners.get(query["partner_id"])
        if partner is None:
            raise NotFound(f"no partner {query['partner_id']}")
        found, cursor = svc.jobs.page(
            partner["id"],
            status=query["status"],
            limit=query["limit"],
            cursor=query["cursor"],
            since=_epoch(query["since"]),
            until=_epoch(query["until"]),
        )
        items = [svc.jobs.public(read) for read in found]
        next_url = web.next_page(".index", args, cursor)
    return web.page(
        "console/jobs.html",
        form=args,
        partners=_partners(partner),
        partner=partner,
        statuses=js.STATUSES,
        items=items,
        next_url=next_url,
    )


def _to_job(job_id: str) -> Response:
    """To the job's page (303), or 404 here if there is no such job."""
    if not ids.is_id("job", job_id) or services().jobs.view(job_id) is None:
        raise NotFound(f"no job {job_id}")
    return redirect(url_for(".show", job_id=job_id), 303)  # type: ignore[return-value]


def _epoch(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _partners(chosen: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The partners for the menu, oldest first, up to `PARTNERS_LISTED`, and `chosen`."""
    store = services().partners
    listed: list[dict[str, Any]] = []
    cursor = None
    while len(listed) < PARTNERS_LISTED:
        page, cursor = store.page(limit=_PARTNER_PAGE, cursor=cursor)
        listed += page
        if cursor is None:
            break
    if chosen is not None and all(p["id"] != chosen["id"] for p in listed):
        listed.append(chosen)
    return listed


@bp.get("/jobs/<job_id>")
@web.signed_in(Kind.ADMIN)
def show(job_id: str) -> tuple[str, int]:
    """One job of any partner: its fields, timeline, input, result and webhook attempts."""
    svc = services()
    found = svc.jobs.read(job_id) if ids.is_id("job", job_id) else None
    if found is None:
        raise NotFound(f"no job {job_id}")
    view = admin_view(svc, found)
    delivery = view.get("delivery")
    dead = delivery is not None and delivery["status"] == "dead"
    return web.page(
        "console/job.html",
        job=view,
        partner=svc.partners.get(view["partner_id"]),
        # The view leaves out the input: it can be large, and only this page shows it.
        job_input=svc.jobs.input_of(job_id),
        webhook_id=found.job.event_id if found.job.callback_url else None,
        attempts=delivery_attempts(found.job),
        dead_letter_id=_dead_letter_id(view["timeline"]) if dead else None,
    )


def _dead_letter_id(entries: list[dict[str, Any]]) -> str | None:
    """The dead letter the job's webhook last became, as its timeline recorded it."""
    for entry in reversed(entries):
        found = str(entry.get("dead_letter_id") or "")
        if entry.get("event") == timeline.Event.DEAD_LETTERED and ids.is_id("dlq", found):
            return found
    return None
