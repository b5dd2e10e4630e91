"""The partner portal: entering it by a signed link, the partner's jobs, signing out.

A portal link (`app.portal_links`) leads to a page that only shows whose portal it
opens; the session opens when that page's button posts the token back. So a link
preview or a mail scanner that fetches the link opens nothing, and the session's
SameSite=Strict cookie is set by a same-site request, which the browser keeps.

The jobs are listed and shown by the functions `GET /v1/jobs` and `GET /v1/jobs/{id}`
use (`app.jobs`), for the session's partner only: another partner's job is a 404.
"""

from __future__ import annotations

from typing import Any, cast

from flask import Blueprint, Response, g, make_response, redirect, request, url_for

from app import jobs as api_jobs
from app.console import web
from app.console.sessions import Kind
from app.partners import portal_links
from app.partners_store import PartnerDisabled
from app.services import services
from postback.errors import NotFound
from worker.jobs import STATUSES

bp = Blueprint("portal", __name__, url_prefix="/portal")
web.protect(bp, template="portal/error.html")


@bp.get("")
def home() -> Response:
    """The portal's start: its jobs."""
    return cast(Response, redirect(url_for(".jobs"), 303))


@bp.get("/enter")
def enter() -> tuple[str, int]:
    """What a portal link shows: whose portal it opens, and the button that opens it."""
    token = request.args.get("token", "")
    partner = _partner_of(token)
    return web.page(
        "portal/enter.html", partner=partner, token=token, form_token=web.pre_session_token()
    )


@bp.post("/enter")
def open_session() -> Response:
    """Open the portal of the link's partner: a session cookie, then its jobs (303)."""
    web.check_pre_session()
    partner = _partner_of(request.form.get("token", ""))
    token = web.sessions().open(Kind.PORTAL, partner_id=partner["id"])
    response = cast(Response, redirect(url_for(".jobs"), 303))
    web.set_session_cookie(response, Kind.PORTAL, token)
    return response


def _partner_of(token: str) -> dict[str, Any]:
    """The enabled partner a live portal link opens: NotFound for a link not signed here
    (or a partner gone), LinkExpired past its expiry, PartnerDisabled (409) if disabled."""
    partner_id = portal_links().partner_id(token)
    partner = services().partners.get(partner_id)
    if partner is None:
        raise NotFound("no such portal link", kind="portal link")
    if partner["disabled"]:
        raise PartnerDisabled(partner_id)
    return partner


@bp.get("/jobs")
@web.signed_in(Kind.PORTAL)
def jobs() -> tuple[str, int]:
    """The partner's jobs, newest first, a page at a time, by status if asked
    (validated as `GET /v1/jobs`'s query)."""
    # A filter form sends its empty fields: an empty status is no filter.
    args = web.filled(request.args)
    items, next_cursor = api_jobs.partner_jobs(web.portal_partner(), args)
    next_url = web.next_page(".jobs", args, next_cursor)
    return web.page(
        "portal/jobs.html",
        jobs=items,
        next_url=next_url,
        status_filter=args.get("status", ""),
        statuses=[str(status) for status in STATUSES],
    )


@bp.get("/jobs/<job_id>")
@web.signed_in(Kind.PORTAL)
def job(job_id: str) -> tuple[str, int]:
    """One of the partner's jobs as `GET /v1/jobs/{id}` shows it, with its input and
    every attempt at its webhook; another partner's job is a 404."""
    found = api_jobs.own_read(job_id, web.portal_partner())
    return web.page(
        "portal/job.html",
        job=services().jobs.public(found),
        job_input=services().jobs.input_of(job_id),
        attempts=api_jobs.delivery_attempts(found.job),
    )


@bp.post("/sign-out")
@web.signed_in(Kind.PORTAL)
def sign_out() -> Response:
    """End the session: its cookie opens nothing any more."""
    web.sessions().end(web.current())
    g.pop("console_session", None)
    response = make_response(web.page("portal/signed_out.html"))
    web.clear_session_cookie(response, Kind.PORTAL)
    return response
