"""Console: dead letters. The list (filtered and paged), one letter, replay and purge.

Each query and form is loaded by the API's schemas, and each action calls the
function the API's view calls (`app.admin`): the list is `GET /v1/admin/dead-letters`,
a replay `POST /v1/admin/dead-letters/{id}/replay` (a corrected URL judged the
same way), a bulk replay `POST /v1/admin/dead-letters/replay`. Acting on every
match of a filter first shows a confirmation page with the exact count.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, request, url_for

from app import admin
from app.console import web
from app.console.filters import when
from app.console.sessions import Kind
from app.schemas import DeadLetterFilter, DeadLetterQuery, load
from app.services import services
from postback import ids

bp = Blueprint("console_dead_letters", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")

FILTER_FIELDS = ("partner_id", "destination", "since", "until")
# The partner filter is a select of up to this many partners, else a text field.
MAX_PARTNER_CHOICES = 200
# What a bulk action does, by the verb in its URL: (store function, past tense).
_BULK = {
    "replay": (admin.replay_matching, "Replayed"),
    "purge": (admin.purge_matching, "Purged"),
}


def _filter_of(given: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in given.items() if k in FILTER_FIELDS}


def _letters(count: int) -> str:
    return f"{count} dead letter{'' if count == 1 else 's'}"


def job_url(job_id: str | None) -> str | None:
    """The console page of the letter's job, when it names one."""
    if not job_id or not ids.is_id("job", job_id):
        return None
    return url_for("console_jobs.show", job_id=job_id)


def _partner_choices() -> list[dict[str, Any]] | None:
    """Partners to choose from in the filter, or None when there are too many for a select."""
    items, more = services().partners.page(limit=MAX_PARTNER_CHOICES, cursor=None)
    return None if more else items


def _local(moment: Any) -> str:
    """A loaded time as a `datetime-local` field shows it (UTC, to the second)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S") if moment else ""


def _matching(count: int, loaded: dict[str, Any]) -> str:
    """How many dead letters a loaded `DeadLetterFilter` matches, and the filter, in words."""
    parts = [
        f"{what} {value}"
        for what, value in (
            ("partner", loaded["partner_id"]),
            ("destination", loaded["destination"]),
            ("died since", loaded["since"] and when(loaded["since"].timestamp())),
            ("died until", loaded["until"] and when(loaded["until"].timestamp())),
        )
        if value
    ]
    matched = f"{_letters(count)} {'match' if count != 1 else 'matches'}"
    if not parts:
        return f"{matched}: no filter is set, so this is every dead letter."
    return f"{matched} {', '.join(parts)}."


@bp.get("/dead-letters")
@web.signed_in(Kind.ADMIN)
def index() -> tuple[str, int]:
    """Dead letters, newest first, filtered as the API's list is."""
    given = web.filled(request.args)
    query = load(DeadLetterQuery, given)
    listing = admin.dead_letter_page(query)
    where = _filter_of(given)
    next_url = web.next_page(".index", given, listing["next_cursor"])
    names = services().partners.names(item["partner_id"] for item in listing["items"])
    items = [
        {**item, "job_url": job_url(item["job_id"]), "partner_name": names.get(item["partner_id"])}
        for item in listing["items"]
    ]
    return web.page(
        "console/dead_letters.html",
        items=items,
        next_url=next_url,
        partners=_partner_choices(),
        query=query,
        since=_local(query["since"]),
        until=_local(query["until"]),
        where=where,
        filtered=bool(where),
    )


@bp.get("/dead-letters/<any(replay, purge):verb>")
@web.signed_in(Kind.ADMIN)
def confirm_bulk(verb: str) -> tuple[str, int]:
    """How many dead letters the filter matches, and a form to replay or purge them all."""
    given = web.filled(request.args)
    loaded = load(DeadLetterFilter, given)
    count = admin.dead_letters().count(DeadLetterFilter.to_filter(loaded))
    question = f"{verb.capitalize()} {count}?"
    if verb == "purge":
        question += " They are deleted for good."
    return web.page(
        "console/confirm.html",
        heading=f"{verb.capitalize()} dead letters",
        summary=_matching(count, loaded),
        question=question if count else "",
        action=url_for(".bulk", verb=verb),
        fields=given,
        verb=verb.capitalize(),
        danger=verb == "purge",
        back=url_for(".index", **given),
    )


@bp.post("/dead-letters/<any(replay, purge):verb>")
@web.signed_in(Kind.ADMIN)
def bulk(verb: str) -> Response:
    """Replay or purge every dead letter the posted filter matches."""
    given = web.filled(request.form)
    act, past = _BULK[verb]
    count = act(given)
    return web.done(f"{past} {_letters(count)}", url_for(".index", **_filter_of(given)))


@bp.get("/dead-letters/<dead_letter_id>")
@web.signed_in(Kind.ADMIN)
def show(dead_letter_id: str) -> tuple[str, int]:
    """One dead letter: its fields, payload and attempt log, with replay and purge."""
    letter = admin.dead_letter_view(dead_letter_id)
    return web.page("console/dead_letter.html", letter=letter, job_url=job_url(letter["job_id"]))


@bp.post("/dead-letters/<dead_letter_id>/replay")
@web.signed_in(Kind.ADMIN)
def replay(dead_letter_id: str) -> Response:
    """Deliver the letter again, to the corrected callback URL when one is given."""
    letter = admin.replay_one(dead_letter_id, web.filled(request.form))
    to = job_url(letter.message.subject) or url_for(".index")
    return web.done(f"Replayed: webhook {letter.id} scheduled for delivery", to)


@bp.get("/dead-letters/<dead_letter_id>/purge")
@web.signed_in(Kind.ADMIN)
def confirm_purge(dead_letter_id: str) -> tuple[str, int]:
    """Whether to purge this dead letter for good."""
    letter = admin.dead_letter_view(dead_letter_id)
    return web.page(
        "console/confirm.html",
        heading=f"Purge dead letter {dead_letter_id}",
        summary=(
            f"Dead letter {dead_letter_id}: webhook {letter['webhook_id']} to"
            f" {letter['callback_url']}, dead since {when(letter['dead_at'])}."
        ),
        question="Purge it? It is deleted for good and cannot be replayed.",
        action=url_for(".purge", dead_letter_id=dead_letter_id),
        fields={},
        verb="Purge",
        danger=True,
        back=url_for(".show", dead_letter_id=dead_letter_id),
    )


@bp.post("/dead-letters/<dead_letter_id>/purge")
@web.signed_in(Kind.ADMIN)
def purge(dead_letter_id: str) -> Response:
    """Discard the dead letter for good."""
    admin.delete_dead_letter_by_id(dead_letter_id)
    return web.done(f"Purged dead letter {dead_letter_id}", url_for(".index"))
