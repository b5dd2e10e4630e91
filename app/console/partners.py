"""Console: partners, and the actions the admin API offers on them.

Every action calls the function the API's view calls (`app.partners`). A key or
secret is shown once, in the page that answers the POST that made it, and
nowhere else: never in a notice (which Redis would keep until shown) or a log.
"""

from __future__ import annotations

from flask import Blueprint, Response, request, url_for

from app import partners
from app.console import web
from app.console.sessions import Kind
from app.services import services
from postback.errors import NotFound

bp = Blueprint("console_partners", __name__, url_prefix="/console")
web.protect(bp, template="console/error.html")

# What a disabling's confirmation step posts, to say the admin has seen what it does.
CONFIRMED = "yes"


@bp.get("/partners")
@web.signed_in(Kind.ADMIN)
def index() -> tuple[str, int]:
    """Partners, oldest first, a page at a time, and the form that creates one."""
    given = web.filled(request.args)
    items, next_cursor = partners.listing(given)
    next_url = web.next_page(".index", given, next_cursor)
    return web.page("console/partners.html", partners=items, next_url=next_url)


@bp.post("/partners")
@web.signed_in(Kind.ADMIN)
def create() -> tuple[str, int]:
    """Create a partner (its name validated as the API's `PartnerCreate`); its key and
    signing secret are shown on the page this answers with, once."""
    made = partners.create(_form_fields("name"))
    return web.page("console/partners_created.html", status=201, made=made)


@bp.post("/partners/<partner_id>/rotate-key")
@web.signed_in(Kind.ADMIN)
def rotate_key(partner_id: str) -> tuple[str, int]:
    """A new API key, shown once; the old one stops working at once."""
    rotated = partners.rotate_key(partner_id)
    return web.page("console/partners_key.html", partner=_partner(partner_id), rotated=rotated)


@bp.post("/partners/<partner_id>/rotate-secret")
@web.signed_in(Kind.ADMIN)
def rotate_secret(partner_id: str) -> tuple[str, int]:
    """A new signing secret, shown once, and when the previous one stops signing."""
    rotated = partners.rotate_secret(partner_id)
    return web.page(
        "console/partners_secret.html",
        partner=_partner(partner_id),
        rotated=rotated,
        grace_seconds=services().settings.secret_grace_seconds,
    )


@bp.post("/partners/<partner_id>/disable")
@web.signed_in(Kind.ADMIN)
def disable(partner_id: str) -> Response | tuple[str, int]:
    """Disable a partner, once the admin has confirmed it on the page this first answers
    with (the form's `confirm` field)."""
    partner = _partner(partner_id)
    if request.form.get("confirm") != CONFIRMED:
        return web.page("console/partners_disable.html", partner=partner, confirmed=CONFIRMED)
    partners.disable(partner_id)
    return web.done(
        f"Partner {partner['name']} ({partner_id}) is disabled: its API key no longer works.",
        url_for(".index"),
    )


@bp.post("/partners/<partner_id>/portal-link")
@web.signed_in(Kind.ADMIN)
def portal_link(partner_id: str) -> tuple[str, int]:
    """A signed link that opens the partner's portal, with its expiry."""
    link = partners.portal_link(partner_id)
    return web.page("console/partners_link.html", partner=_partner(partner_id), link=link)


def _partner(partner_id: str) -> dict[str, object]:
    """The partner as the list shows it, or NotFound (as the API's 404)."""
    found = services().partners.get(partner_id)
    if found is None:
        raise NotFound(f"no partner {partner_id}")
    return found


def _form_fields(*names: str) -> dict[str, str]:
    """The form's fields of `names` that were sent (a missing one is the schema's to name)."""
    return {name: request.form[name] for name in names if name in request.form}
