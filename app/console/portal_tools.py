"""The partner portal's tools: a test webhook, the partner's dead letters, its signing secret.

Each page acts only on the session's partner, through the API's validation and
stores: dead letters through `callbacks.deadletters.DeadLetters` with the
admin API's schemas (`DeadLetterQuery`, `ReplayBody`, `check_callback_url`) and
the partner filter forced to the session's partner, so another partner's
letter is as missing as one that never existed (404); the secret's rotation
through `PartnerStore.rotate_secret` with the configured grace, as
`POST /v1/admin/partners/{id}/rotate-secret` does; the test webhook through
`app.probe`, which signs and sends it as a delivery would and stores nothing.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, request, url_for
from werkzeug.wrappers import Response

from app import admin, probe
from app.console import web
from app.console.sessions import Kind
from app.schemas import DeadLetterQuery, load
from app.services import services
from callbacks.model import Delivery
from callbacks.secrets import TooManySecrets
from postback import ids
from postback.errors import Conflict, InvalidInput, NotFound

bp = Blueprint("portal_tools", __name__, url_prefix="/portal")
web.protect(bp, template="portal/error.html")

# The dead-letter list's filters, as the form and the pager carry them.
_FILTERS = ("destination", "since", "until", "limit")


# --- Test webhook -------------------------------------------------------------------------


def _probe_page(*, status: int = 200, **context: Any) -> tuple[str, int]:
    timeout_seconds = services().settings.delivery_timeout_seconds
    return web.page(
        "portal/test_webhook.html", status=status, timeout_seconds=timeout_seconds, **context
    )


@bp.route("/test-webhook", methods=["GET", "POST"])
@web.signed_in(Kind.PORTAL)
def test_webhook() -> tuple[str, int]:
    """The form; posted, one signed test webhook sent now, and what the receiver answered."""
    form = {"callback_url": "", "event_type": probe.TEST_EVENT_TYPE}
    if request.method == "GET":
        return _probe_page(form=form, sent=None, errors=None)
    form.update(web.filled(request.form))
    try:
        loaded = load(probe.ProbeForm, form)
        sent = probe.send(
            services(), web.portal_partner(), loaded["callback_url"], loaded["event_type"]
        )
    except InvalidInput as exc:
        # The form again, with the URL as typed and why it was refused; nothing was sent.
        return _probe_page(status=422, form=form, sent=None, errors=exc.errors)
    return _probe_page(form=form, sent=sent, errors=None)


# --- Dead letters -------------------------------------------------------------------------


def _own_letter(dead_letter_id: str) -> Delivery:
    """The session partner's dead letter; NotFound for an unknown id or another's letter."""
    letter = admin.dead_letters().get(dead_letter_id) if ids.is_id("dlq", dead_letter_id) else None
    if letter is None or letter.owner != web.portal_partner():
        raise NotFound(f"no dead letter {dead_letter_id}")
    return letter


@bp.get("/dead-letters")
@web.signed_in(Kind.PORTAL)
def dead_letters() -> tuple[str, int]:
    """The partner's dead letters, newest first, filtered by destination and time of death."""
    given = web.filled(request.args)
    # Only the session's partner: a partner_id in the query is not the portal's to choose.
    given.pop("partner_id", None)
    listing = admin.dead_letter_page(
        load(DeadLetterQuery, {**given, "partner_id": web.portal_partner()})
    )
    filters: dict[str, Any] = {key: given[key] for key in _FILTERS if key in given}
    return web.page(
        "portal/dead_letters.html",
        items=listing["items"],
        filters=filters,
        next_url=web.next_page(".dead_letters", filters, listing["next_cursor"]),
    )


@bp.get("/dead-letters/<dead_letter_id>")
@web.signed_in(Kind.PORTAL)
def dead_letter(dead_letter_id: str) -> tuple[str, int]:
    """One of the partner's dead letters: payload, attempt log, last error, and Replay."""
    letter = _own_letter(dead_letter_id)
    detail = admin.dead_letter_detail(letter, admin.dead_letters().outbox.attempts(letter.id))
    return web.page("portal/dead_letter.html", letter=detail)


@bp.post("/dead-letters/<dead_letter_id>/replay")
@web.signed_in(Kind.PORTAL)
def replay(dead_letter_id: str) -> Response:
    """Deliver one of the partner's dead letters again, optionally to a corrected URL
    (validated as the API's replay validates it)."""
    _own_letter(dead_letter_id)
    letter = admin.replay_one(dead_letter_id, web.filled(request.form))
    return web.done(f"Replayed: webhook {letter.id} scheduled", url_for(".dead_letters"))


# --- Signing secret -----------------------------------------------------------------------


def human_seconds(seconds: float) -> str:
    """A length of time in the largest unit that states it whole: "1 day", "36 hours"."""
    whole = round(seconds)
    for unit, size in (("day", 86_400), ("hour", 3_600), ("minute", 60)):
        if whole >= size and whole % size == 0:
            count = whole // size
            return f"{count} {unit}{'' if count == 1 else 's'}"
    return f"{whole} second{'' if whole == 1 else 's'}"


def _secret_page(*, status: int = 200, **context: Any) -> tuple[str, int]:
    svc = services()
    state = svc.partners.secrets.state(web.portal_partner())
    grace_seconds = svc.settings.secret_grace_seconds
    return web.page(
        "portal/signing_secret.html",
        status=status,
        count=state.count,
        expires_at=state.expires_at,
        grace_seconds=grace_seconds,
        grace=human_seconds(grace_seconds),
        **context,
    )


@bp.get("/signing-secret")
@web.signed_in(Kind.PORTAL)
def signing_secret() -> tuple[str, int]:
    """How many secrets sign the partner's webhooks now, and until when the older ones do."""
    return _secret_page(new_secret=None)


@bp.post("/signing-secret/rotate")
@web.signed_in(Kind.PORTAL)
def rotate_secret() -> tuple[str, int]:
    """A new signing secret, shown in this answer only; the one it replaces keeps signing
    for the configured grace period."""
    svc = services()
    partner_id = web.portal_partner()
    try:
        rotated = svc.partners.rotate_secret(
            partner_id, grace_seconds=svc.settings.secret_grace_seconds
        )
    except TooManySecrets as exc:
        raise Conflict(
            f"{exc.count} secrets already sign your webhooks, the most there may be: rotate"
            " again once the oldest stops signing, or ask the operator to end the grace now"
        ) from None
    if rotated is None:
        raise NotFound(f"no partner {partner_id}")
    return _secret_page(new_secret=rotated["signing_secret"])
